"""Claim 13: backpropagation can be trapped in local minima.

The smallest non-convex problem of the course: XOR, the four corners of the square (each
repeated `copies` times, so a batch divides over the devices), classified by the zoo's MLP with
one hidden layer of two tanh units (nets/models/mlp.py) under cross-entropy. Every seed starts
from its own initialisation and trains by full-batch plain gradient descent (SGD at a constant
rate, no momentum) through the trainer's pieces (c08_residual.train_on_arrays). Measured per
seed: the final loss, how much it still fell over the second half of training, the gradient
norm and the Hessian's eigenvalues at the end (the net has 12 parameters: the Hessian is
exact). A seed is *trapped* when it ends well above the best seed's loss and has stopped
improving; a trapped point is a *minimum* (not a saddle) when no Hessian eigenvalue is
clearly negative. The 1-D loss landscape along the straight line from a trapped solution to
the best one, θ(α) = (1 - α)·θ_trapped + α·θ_best, shows whether leaving it means climbing;
the line between the two best solutions is drawn beside it.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=13 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 36 s (shared machine).
Expected (measured, 20 seeds of 2,000 steps at rate 0.5): 3 seeds end at loss 0.347 =
ln(2)/2 (two of the four corners left at probability 1/2, accuracy 50%), 0.3% below their
halfway loss, while the other 17 reach 0.0015-0.0016 and are still halving it; at the trapped
point |gradient| 9e-4 and the Hessian's eigenvalues run from -3e-8 (rounding) to 0.75; the line
to the best solution climbs 2.5 nats before it falls. Verdict: supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import nets
from experiments.lessons import Finding, Verdict, markdown_table, save_figure, verdict_of_parts
from experiments.lessons.c08_residual import train_on_arrays
from train.tasks.base import Task

NUMBER = 13
TITLE = 'Local minima'
CLAIM = (
    'Backpropagation can be trapped in local minima: on a small non-convex problem some '
    'initialisations end where the gradient vanishes and no direction descends, at a loss '
    'well above what other initialisations reach.'
)

# "Well above": at least 0.1 nats more than the best seed's final loss (XOR's trapped points
# sit at ln(2)/2 = 0.35 against ~0.002; 0.1 is far from both and from float noise).
STUCK_GAP = 0.1
# "Stopped improving": its loss fell by less than 5% over the second half of training (a
# solving seed still halves its loss every few hundred steps at this rate).
STALLED_IMPROVEMENT = 0.05
# "A minimum, not a saddle": the smallest Hessian eigenvalue is above -1e-3 times the largest
# (a saddle has a clearly negative one; rounding gives ~1e-8).
NEGATIVE_CURVATURE_TOLERANCE = 1e-3
# "Leaving it means climbing": along the line to the best solution the loss rises at least
# this much above the trapped point's before it falls.
MIN_BARRIER = 0.01

XOR_POINTS = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], np.float32)
XOR_LABELS = np.array([0, 1, 1, 0], np.int32)

SETTINGS = {
    'full': dict(seeds=20, steps=2000, lr=0.5, hidden=2, copies=16, log_every=50, points=61),
    'tiny': dict(seeds=3, steps=40, lr=0.5, hidden=2, copies=2, log_every=10, points=9),
}


def xor_data(copies: int) -> dict[str, np.ndarray]:
    """The four XOR corners, each `copies` times: {'x': (4·copies, 2), 'label': (4·copies,)}."""
    return {'x': np.repeat(XOR_POINTS, copies, 0), 'label': np.repeat(XOR_LABELS, copies, 0)}


class PointsTask(Task):
    """The trainer's task protocol (train/tasks/base.py) for labelled 2-D points: mean
    cross-entropy, and the loss and accuracy over an evaluation set."""

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        return self.model.init({'params': rng}, jnp.zeros((1, 2), jnp.float32), train=True)

    def losses(self, params, batch) -> tuple[jax.Array, jax.Array]:
        logits = self.model.apply({'params': params}, batch['x'])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
        return losses, jnp.argmax(logits, -1) == batch['label']

    def train_loss(self, params, model_state, batch, rng):
        losses, correct = self.losses(params, batch)
        loss = jnp.mean(losses)
        return loss, (model_state, {'loss': loss, 'accuracy': jnp.mean(correct)})

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        losses, correct = self.losses(params, batch)
        mask = batch['mask'].astype(jnp.float32)
        return {
            'loss': jnp.sum(losses * mask),
            'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask),
        }

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        count = max(float(sums['count']), 1.0)
        return {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count}


def make_model(setting: dict):
    return nets.create('mlp', depth=1, width=setting['hidden'], activation='tanh', num_classes=2)


def landscape(task: PointsTask, data: dict[str, np.ndarray], like: Any):
    """(loss of a flat parameter vector, gradient, Hessian) on the whole data set, jitted, and
    the function turning a parameter tree into that vector."""
    _, unravel = ravel_pytree(like)

    def loss(flat: jax.Array) -> jax.Array:
        return jnp.mean(task.losses(unravel(flat), data)[0])

    return jax.jit(loss), jax.jit(jax.grad(loss)), jax.jit(jax.hessian(loss))


def line_losses(loss_of, start: np.ndarray, end: np.ndarray, alphas: np.ndarray) -> list[float]:
    return [float(loss_of((1 - a) * start + a * end)) for a in alphas]


def summarise_seeds(runs: list[dict]) -> dict[str, Any]:
    """Which seeds are trapped, from their final and halfway losses."""
    best = min(r['final_loss'] for r in runs)
    trapped = [
        r['seed']
        for r in runs
        if r['final_loss'] >= best + STUCK_GAP
        and r['half_loss'] - r['final_loss'] < STALLED_IMPROVEMENT * r['half_loss']
    ]
    return {'best_loss': best, 'trapped': trapped}


def judge(numbers: dict) -> Verdict:
    runs = {r['seed']: r for r in numbers['runs']}
    trapped = numbers['summary']['trapped']
    worst = max(trapped, key=lambda s: runs[s]['final_loss']) if trapped else None
    minimum = worst is not None and runs[worst]['hessian_min'] >= (
        -NEGATIVE_CURVATURE_TOLERANCE * runs[worst]['hessian_max']
    )
    barrier = numbers['barrier']
    parts = {
        f'some seeds trapped (>= {STUCK_GAP:g} above the best, < {STALLED_IMPROVEMENT:.0%} '
        'better over the second half)': bool(trapped),
        'the trapped point is a minimum (no clearly negative Hessian eigenvalue)': minimum,
        f'the line to the best solution climbs >= {MIN_BARRIER:g} first': barrier is not None
        and barrier >= MIN_BARRIER,
    }
    if worst is None:
        details = (
            f'{len(runs)} seeds, none trapped; best final loss '
            f'{numbers["summary"]["best_loss"]:.4f}'
        )
    else:
        w = runs[worst]
        details = (
            f'{len(trapped)} of {len(runs)} seeds trapped at loss {w["final_loss"]:.3f} '
            f'(best seed {numbers["summary"]["best_loss"]:.4f}), '
            f'{(w["half_loss"] - w["final_loss"]) / w["half_loss"]:.1%} lower than halfway; '
            f'there |gradient| {w["grad_norm"]:.1e}, Hessian eigenvalues '
            f'{w["hessian_min"]:.1e} to {w["hessian_max"]:.2f}; the line to the best solution '
            f'climbs {barrier:.3f} first'
        )
    return verdict_of_parts(parts, details)


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    trapped = set(numbers['summary']['trapped'])
    runs = sorted(numbers['runs'], key=lambda r: r['final_loss'])
    axes[0].scatter(
        range(len(runs)),
        [r['final_loss'] for r in runs],
        c=['tab:red' if r['seed'] in trapped else 'tab:blue' for r in runs],
    )
    axes[0].set(
        yscale='log',
        xlabel='seed (sorted by final loss)',
        ylabel='final loss',
        title='final loss per seed (red: trapped)',
    )
    for r in numbers['runs']:
        steps, losses = zip(*r['curve'])
        color = 'tab:red' if r['seed'] in trapped else 'tab:blue'
        axes[1].plot(steps, losses, color=color, alpha=0.5)
    axes[1].set(yscale='log', xlabel='step', ylabel='train loss', title='every seed')
    alphas = numbers['alphas']
    for name, losses in numbers['slices'].items():
        axes[2].plot(alphas, losses, label=name.replace('_', ' '))
    for x in (0.0, 1.0):
        axes[2].axvline(x, color='grey', ls=':')
    axes[2].set(
        xlabel='α: θ = (1 - α)·θ_start + α·θ_end',
        ylabel='loss',
        title='the loss along a line between two solutions',
    )
    return save_figure(fig, out, axes[2:])


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    del data_dir  # synthetic data
    setting = SETTINGS[scale]
    data = xor_data(setting['copies'])
    task = PointsTask(make_model(setting), info=None)
    runs, params = [], {}
    loss_of = grad_of = hessian_of = None
    for seed in range(setting['seeds']):
        result = train_on_arrays(
            task,
            data,
            data,
            steps=setting['steps'],
            batch_size=len(data['x']),
            optimizer=dict(name='sgd', learning_rate=setting['lr']),
            schedule='constant',
            seed=seed,
            log_every=setting['log_every'],
        )
        final = jax.device_get(result.state.params)
        if loss_of is None:
            loss_of, grad_of, hessian_of = landscape(task, data, final)
        flat, _ = ravel_pytree(final)
        params[seed] = np.asarray(flat)
        eigenvalues = np.linalg.eigvalsh(np.asarray(hessian_of(flat), np.float64))
        curve = [[c['step'], c['loss']] for c in result.curve]
        half = min(curve, key=lambda point: abs(point[0] - setting['steps'] / 2))
        runs.append(
            {
                'seed': seed,
                'final_loss': float(loss_of(flat)),
                'half_loss': half[1],
                'accuracy': result.eval['accuracy'],
                'grad_norm': float(jnp.linalg.norm(grad_of(flat))),
                'hessian_min': float(eigenvalues[0]),
                'hessian_max': float(eigenvalues[-1]),
                'curve': curve,
            }
        )
    summary = summarise_seeds(runs)
    by_seed = {r['seed']: r for r in runs}
    ranked = sorted(runs, key=lambda r: r['final_loss'])
    best, runner_up = ranked[0]['seed'], ranked[1]['seed']
    alphas = np.linspace(-0.25, 1.25, setting['points'])
    slices = {'best_to_runner_up': line_losses(loss_of, params[best], params[runner_up], alphas)}
    barrier = None
    if summary['trapped']:
        worst = max(summary['trapped'], key=lambda s: by_seed[s]['final_loss'])
        line = line_losses(loss_of, params[worst], params[best], alphas)
        slices = {'trapped_to_best': line, **slices}
        inside = [loss for a, loss in zip(alphas, line) if 0.0 <= a <= 1.0]
        barrier = max(inside) - by_seed[worst]['final_loss']
    numbers = {
        'steps': setting['steps'],
        'lr': setting['lr'],
        'runs': runs,
        'summary': summary,
        'alphas': [float(a) for a in alphas],
        'slices': slices,
        'barrier': barrier,
    }
    plot(numbers, Path(workdir) / 'local_minima.png')
    rows = [
        [
            r['seed'],
            r['final_loss'],
            r['half_loss'],
            r['accuracy'],
            f'{r["grad_norm"]:.1e}',
            f'{r["hessian_min"]:.1e}',
            r['hessian_max'],
            'trapped' if r['seed'] in summary['trapped'] else '',
        ]
        for r in ranked
    ]
    table = markdown_table(
        [
            'seed',
            'final loss',
            'loss halfway',
            'accuracy',
            '|gradient|',
            'smallest Hessian eigenvalue',
            'largest',
            '',
        ],
        rows,
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['local_minima.png'], judge(numbers))
