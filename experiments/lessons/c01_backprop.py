"""Claim 1: backpropagation re-uses the derivatives of higher layers, so a gradient costs a small
constant times a forward pass.

A hand-written backward pass through the project's MLP (`nets.create('mlp')`) carries one
"delta" (the loss's derivative with respect to a layer's output) down from the head, each layer
turning the delta of the layer above into its own with one matrix product: it must equal
`jax.grad` of the same loss. Then, over growing widths, the jitted forward pass and the jitted
`value_and_grad` are timed (best of several repeats, so other processes on the machine inflate
neither) and their XLA FLOP counts compared: reverse mode costs about 3x the forward (one
product for the delta, one for the weight gradient, per forward product), whatever the size.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=1 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 40 s at --scale=full (measured by the
runner while other jobs shared the machine). Expected: supported — the hand-written gradients
equal jax.grad bit for bit (relative error 0); (forward+backward) / forward = 3.0-3.7x in time
and 2.3-2.9x in XLA FLOPs at widths 128-2048 (batch 256, 4 hidden layers).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.lessons import Finding, Verdict, markdown_table, save_figure, verdict_of_parts

NUMBER = 1
TITLE = 'Backpropagation'
CLAIM = (
    'Backpropagation re-uses the derivatives of higher layers: a hand-written backward '
    'pass for an MLP equals jax.grad, and the cost of forward+backward is a small constant '
    'times the forward.'
)

# float32 sums in another order differ by ~1e-7 relative; 1e-4 leaves room for long sums
# while any wrong term (a missing transpose, a skipped activation derivative) is O(1).
GRAD_RTOL = 1e-4
# "A small constant": reverse mode needs ~3x the forward's FLOPs; 5 allows for the memory
# traffic of keeping activations and for dispatch overheads, and is far below the
# (number of parameters)x of differentiating weight by weight.
MAX_COST_RATIO = 5.0

SIZES = {  # (data set, batch, depth, widths, timing repeats, seconds per repeat)
    'full': ('fashion_mnist', 256, 4, (128, 512, 1024, 2048), 10, 0.1),
    'tiny': ('digits', 16, 2, (16,), 2, 0.01),
}


def real_batch(dataset: str, batch: int, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch` training images scaled to [0, 1], and their labels."""
    import data

    source = data.load_source(dataset, f'train[:{batch}]', data_dir)
    records = [source[i] for i in range(batch)]
    images = np.stack([np.asarray(r['image'], np.float32) / 255.0 for r in records])
    return images, np.asarray([int(r['label']) for r in records])


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def hand_forward(params: dict, x: jax.Array, depth: int) -> tuple[jax.Array, list, list]:
    """The MLP's forward pass written out: logits, each layer's input and pre-activation."""
    h = x.reshape(x.shape[0], -1)
    inputs, pre_activations = [], []
    for i in range(depth):
        inputs.append(h)
        z = h @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias']
        pre_activations.append(z)
        h = jnp.maximum(z, 0.0)
    inputs.append(h)
    return h @ params['head']['kernel'] + params['head']['bias'], inputs, pre_activations


def hand_gradients(params: dict, x: jax.Array, labels: jax.Array, depth: int) -> dict:
    """The backward pass written out: one delta travels down, re-used by every layer below."""
    logits, inputs, pre_activations = hand_forward(params, x, depth)
    probs = jax.nn.softmax(logits)
    # d(mean cross-entropy)/d(logits) = (softmax - one-hot) / batch.
    delta = (probs - jax.nn.one_hot(labels, logits.shape[1])) / logits.shape[0]
    grads = {'head': {'kernel': inputs[depth].T @ delta, 'bias': delta.sum(0)}}
    delta = delta @ params['head']['kernel'].T  # d loss / d (output of the last hidden layer)
    for i in reversed(range(depth)):
        delta = delta * (pre_activations[i] > 0)  # through the ReLU
        grads[f'dense{i}'] = {'kernel': inputs[i].T @ delta, 'bias': delta.sum(0)}
        delta = delta @ params[f'dense{i}']['kernel'].T  # handed down to layer i-1
    return grads


def best_seconds_per_call(
    fns: dict[str, Any], args: tuple, repeats: int, seconds: float
) -> dict[str, float]:
    """Best-of-`repeats` time of one call of each function. Each repeat runs enough calls for
    ~`seconds`, and the functions take turns, so that other processes' load on the machine
    falls on all of them alike and the best repeat of each is a quiet one."""
    calls = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args))  # compile and warm up
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        calls[name] = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    best = {name: float('inf') for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                out = fn(*args)
            jax.block_until_ready(out)
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def compiled_with_flops(fn, *args):
    """`fn` compiled for `args` (callable with them) and its XLA FLOP count."""
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jaxlibs: one dict per device
        analysis = analysis[0]
    return compiled, float(analysis['flops'])


def measure_width(
    images: np.ndarray, labels: np.ndarray, depth: int, width: int, repeats: int, seconds: float
) -> dict[str, Any]:
    import nets

    model = nets.create('mlp', num_classes=10, depth=depth, width=width, activation='relu')
    x, y = jnp.asarray(images), jnp.asarray(labels)
    params = jax.jit(model.init)(jax.random.key(width), x)['params']  # one compile, not one per op

    def loss(p, xs, ys):
        return cross_entropy(model.apply({'params': p}, xs), ys)

    forward, flops_forward = compiled_with_flops(loss, params, x, y)
    both, flops_both = compiled_with_flops(jax.value_and_grad(loss), params, x, y)
    hand = jax.jit(lambda p, xs, ys: hand_gradients(p, xs, ys, depth))
    # Compared on the host: every eager jnp op would compile a program of its own.
    auto_grads = jax.tree.leaves(jax.device_get(both(params, x, y)[1]))
    mine = jax.tree.leaves(jax.device_get(hand(params, x, y)))
    scale = max(float(np.abs(g).max()) for g in auto_grads)
    grad_error = max(float(np.abs(a - b).max()) for a, b in zip(auto_grads, mine)) / scale
    logits_error = float(
        jax.jit(
            lambda p, xs: jnp.max(
                jnp.abs(hand_forward(p, xs, depth)[0] - model.apply({'params': p}, xs))
            )
        )(params, x)
    )
    timed = best_seconds_per_call(
        {'forward': forward, 'both': both, 'hand': hand}, (params, x, y), repeats, seconds
    )
    forward_s, both_s, hand_s = timed['forward'], timed['both'], timed['hand']
    return {
        'width': width,
        'params': sum(int(p.size) for p in jax.tree.leaves(params)),
        'grad_rel_error': grad_error,
        'logits_abs_error': logits_error,
        'forward_ms': forward_s * 1e3,
        'forward_backward_ms': both_s * 1e3,
        'hand_backward_ms': hand_s * 1e3,
        'time_ratio': both_s / forward_s,
        'flops_forward': flops_forward,
        'flop_ratio': flops_both / flops_forward,
    }


def judge(numbers: dict) -> Verdict:
    rows = numbers['widths']
    worst_error = max(r['grad_rel_error'] for r in rows)
    worst_time = max(r['time_ratio'] for r in rows)
    worst_flops = max(r['flop_ratio'] for r in rows)
    parts = {
        f'hand-written backward == jax.grad (rel. error <= {GRAD_RTOL:g})': worst_error
        <= GRAD_RTOL,
        f'forward+backward time < {MAX_COST_RATIO:g}x forward at every width': worst_time
        < MAX_COST_RATIO,
        f'forward+backward FLOPs < {MAX_COST_RATIO:g}x forward at every width': worst_flops
        < MAX_COST_RATIO,
    }
    widths = [r['width'] for r in rows]
    details = (
        f'widths {widths}: max gradient rel. error {worst_error:.1e}; '
        f'(fwd+bwd)/fwd time {min(r["time_ratio"] for r in rows):.2f}-{worst_time:.2f}x, '
        f'FLOPs {min(r["flop_ratio"] for r in rows):.2f}-{worst_flops:.2f}x'
    )
    return verdict_of_parts(parts, details)


def plot(rows: list[dict], out: Path) -> Path:
    from train.pictures import plt

    widths = [r['width'] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (
        ('forward_ms', 'forward'),
        ('forward_backward_ms', 'jax value_and_grad'),
        ('hand_backward_ms', 'hand-written fwd+bwd'),
    ):
        left.plot(widths, [r[key] for r in rows], 'o-', label=label)
    left.set(
        xscale='log',
        yscale='log',
        xlabel='hidden width',
        ylabel='ms per batch',
        title='time per batch (best of repeats)',
    )
    right.plot(widths, [r['time_ratio'] for r in rows], 'o-', label='time ratio')
    right.plot(widths, [r['flop_ratio'] for r in rows], 's--', label='XLA FLOP ratio')
    right.axhline(MAX_COST_RATIO, color='red', lw=1, label=f'threshold {MAX_COST_RATIO:g}x')
    right.set(
        xscale='log',
        ylim=(0, MAX_COST_RATIO * 1.3),
        xlabel='hidden width',
        ylabel='(forward+backward) / forward',
        title='cost of the gradient',
    )
    for ax in (left, right):
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_xticks([], minor=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    dataset, batch, depth, widths, repeats, seconds = SIZES[scale]
    images, labels = real_batch(dataset, batch, data_dir)
    rows = [measure_width(images, labels, depth, w, repeats, seconds) for w in widths]
    numbers = {'dataset': dataset, 'batch': batch, 'depth': depth, 'widths': rows}
    plot(rows, Path(workdir) / 'backprop_cost.png')
    table = markdown_table(
        [
            'width',
            'parameters',
            'grad rel. error',
            'forward ms',
            'fwd+bwd ms',
            'hand fwd+bwd ms',
            'time ratio',
            'FLOP ratio',
        ],
        [
            [
                r['width'],
                r['params'],
                f'{r["grad_rel_error"]:.1e}',
                r['forward_ms'],
                r['forward_backward_ms'],
                r['hand_backward_ms'],
                r['time_ratio'],
                r['flop_ratio'],
            ]
            for r in rows
        ],
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['backprop_cost.png'], judge(numbers))
