"""Claim 8: residual connections ease gradient flow.

A deep MLP and its residual twin, identical but for the skip: each of `depth` blocks is
Dense -> BatchNorm -> ReLU; the plain net feeds the block's output on, the twin adds it to its
input (x + block(x), He et al. 2015 with the ResNet paper's BatchNorm in the branch). Same
widths, same parameters, same initialisation, data, optimiser and steps. Measured: the
gradient norm of every block's kernel at initialisation and after training, the training
loss curves and the test accuracy.

Neither twin is a registered model (registering lesson-only nets would put them in the model
zoo), so both train through the trainer's own pieces on in-memory arrays of the prepared data
set: `train_on_arrays` below (train.steps, train.optim, train.sharding and a task's
`train_loss`/`eval_sums`), which lessons 10 and 11 reuse for their synthetic tasks.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=8 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 35 s (shared machine).
Expected (measured, 24 blocks of width 64 on mnist1d, 1,000 Adam steps): the plain net's
block gradients grow ~84x from the last block to the first at initialisation (BatchNorm
makes deep plain nets' gradients explode towards the input) and still ~39x after training;
the residual twin's spread is 2.5x and 4.3x. Final train loss 1.69 (plain) vs 0.31
(residual), test accuracy 31% vs 58%. Verdict: supported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.lessons import Finding, Verdict, markdown_table, save_figure, verdict_of_parts

NUMBER = 8
TITLE = 'Residual connections'
CLAIM = (
    'Residual connections ease gradient flow: a deep plain net trains worse than its '
    'residual twin, and its per-layer gradient norms are less even.'
)

# "Even" gradient flow: the ratio of the largest to the smallest block gradient norm. The
# residual twin must be at least this many times more even than the plain net, at init or
# after training (an order of magnitude is what "vanishing/exploding" means, 2x is visible).
MIN_EVENNESS_GAIN = 2.0
# "Trains better": the twin's final training loss at most this fraction of the plain net's.
MAX_LOSS_RATIO = 0.8

SETTINGS = {
    'full': dict(
        dataset='mnist1d', depth=24, width=64, steps=1000, batch=128, lr=1e-3, log_every=20
    ),
    'tiny': dict(dataset='digits', depth=4, width=16, steps=12, batch=32, lr=3e-3, log_every=4),
}


# --------------------------------------------------------------------------- training on arrays


@dataclasses.dataclass
class ArrayRun:
    """A run of `train_on_arrays`: the initial state (on the host), the final state, the
    logged train metrics and the eval."""

    initial: Any
    state: Any
    curve: list[dict[str, float]]  # {'step', 'loss', 'grad_norm', ...} every log_every steps
    eval: dict[str, float]


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int):
    """In-order batches of `arrays` with a boolean 'mask'; the last one padded with zeros."""
    count = len(next(iter(arrays.values())))
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        batch = {k: v[start:stop] for k, v in arrays.items()}
        batch['mask'] = np.ones(stop - start, bool)
        pad = batch_size - (stop - start)
        if pad:
            batch = {
                k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch


def evaluate_arrays(
    task: Any, state: Any, arrays: dict[str, np.ndarray], mesh, batch_size: int
) -> dict[str, float]:
    """The task's eval metrics over `arrays` with the trainer's jitted eval step."""
    from train.sharding import fetch, host_to_global
    from train.steps import make_eval_step

    eval_step = make_eval_step(task, mesh)
    totals = None
    for batch in padded_batches(arrays, batch_size):
        sums = eval_step(state, host_to_global(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return task.summarize(fetch(totals))


def train_on_arrays(
    task: Any,
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    *,
    steps: int,
    batch_size: int,
    optimizer: dict[str, Any],
    schedule: str = 'warmup_cosine',
    seed: int = 0,
    log_every: int = 10,
    eval_batch_size: int = 200,
) -> ArrayRun:
    """Trains `task` with the trainer's pieces (build_optimizer from the default config updated
    with `optimizer`, init_train_state, make_train_step on the mesh) on shuffled batches of
    in-memory arrays, then evaluates on `test`. Batch sizes must divide over the devices."""
    from train.config import default_config
    from train.optim import build_optimizer
    from train.sharding import check_batch_divides, fetch, host_to_global, make_mesh
    from train.steps import init_train_state, make_train_step

    config = default_config()
    config.optimizer.update(optimizer)
    config.schedule.name = schedule
    mesh = make_mesh()
    check_batch_divides(batch_size, mesh)
    check_batch_divides(eval_batch_size, mesh, 'eval_batch_size')
    count = len(next(iter(train.values())))
    steps_per_epoch = max(1, count // batch_size)
    tx, _ = build_optimizer(
        config.optimizer, config.schedule, steps_per_epoch=steps_per_epoch, total_steps=steps
    )
    state = init_train_state(task, tx, seed, mesh)
    initial = fetch(state)  # a host copy: the train step donates the state's buffers
    train_step = make_train_step(task, tx, mesh, skip_nonfinite=False)
    order = np.random.default_rng(seed)
    logged, window = [], []
    for step in range(steps):
        if step % steps_per_epoch == 0:  # a fresh permutation every epoch, the last part dropped
            permutation = order.permutation(count)
        rows = permutation[(step % steps_per_epoch) * batch_size :][:batch_size]
        state, metrics = train_step(
            state, host_to_global({k: v[rows] for k, v in train.items()}, mesh)
        )
        window.append(metrics)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            logged.append((step + 1, window))
            window = []
    curve = []
    for step, metrics in logged:
        metrics = fetch(metrics)
        keys = [k for k in metrics[0] if np.ndim(metrics[0][k]) == 0 and 'finite' not in k]
        curve.append({'step': step, **{k: float(np.mean([m[k] for m in metrics])) for k in keys}})
    evaluation = evaluate_arrays(task, state, test, mesh, eval_batch_size)
    return ArrayRun(initial, state, curve, evaluation)


def load_arrays(name: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
    """A prepared data set's split as {'image', 'label'} arrays in memory."""
    import data

    source = data.load_source(name, split, data_dir)
    records = [source[i] for i in range(len(source))]
    return {
        'image': np.stack([r['image'] for r in records]),
        'label': np.asarray([r['label'] for r in records], np.int32),
    }


# --------------------------------------------------------------------------- the twins


class DeepMLP(nn.Module):
    """A Dense stem, `depth` blocks of Dense -> BatchNorm -> ReLU, global head. With `residual`
    each block's output is added to its input; nothing else changes."""

    num_classes: int
    depth: int
    width: int
    residual: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        he = nn.initializers.he_normal()
        x = nn.Dense(self.width, kernel_init=he, name='stem')(x.reshape(x.shape[0], -1))
        for i in range(self.depth):
            y = nn.Dense(self.width, use_bias=False, kernel_init=he, name=f'block{i}')(x)
            y = nn.relu(nn.BatchNorm(use_running_average=not train, name=f'norm{i}')(y))
            x = x + y if self.residual else y
        return nn.Dense(self.num_classes, name='head')(x).astype(jnp.float32)


def block_gradient_norms(task: Any, batch: dict[str, np.ndarray], depth: int):
    """A jitted function of a (host) state: ||dL/dW|| of each block's kernel on `batch`, in
    training mode, input block first. One compilation serves every state of the model."""

    def norms(params, model_state):
        loss = lambda p: task.train_loss(p, model_state, batch, jax.random.key(0))[0]  # noqa: E731
        grads = jax.grad(loss)(params)
        return jnp.stack([jnp.linalg.norm(grads[f'block{i}']['kernel']) for i in range(depth)])

    compiled = jax.jit(norms)

    def of_state(state: Any) -> list[float]:
        params, model_state = jax.device_get((state.params, state.model_state))
        return [float(v) for v in compiled(params, model_state)]

    return of_state


# --------------------------------------------------------------------------- the lesson


def spread(norms: list[float]) -> float:
    """Largest over smallest block gradient norm: 1 = perfectly even flow."""
    return max(norms) / max(min(norms), 1e-30)


def judge(numbers: dict) -> Verdict:
    plain, residual = numbers['plain'], numbers['residual']
    gain_init = plain['spread_init'] / residual['spread_init']
    gain_trained = plain['spread_trained'] / residual['spread_trained']
    loss_ratio = residual['final_loss'] / plain['final_loss']
    parts = {
        f'gradients >= {MIN_EVENNESS_GAIN:g}x more even at init': gain_init >= MIN_EVENNESS_GAIN,
        f'gradients >= {MIN_EVENNESS_GAIN:g}x more even after training': gain_trained
        >= MIN_EVENNESS_GAIN,
        f'residual final train loss <= {MAX_LOSS_RATIO:g}x plain': loss_ratio <= MAX_LOSS_RATIO,
    }
    return verdict_of_parts(
        parts,
        (
            f'depth {numbers["depth"]}: max/min block gradient norm plain '
            f'{plain["spread_init"]:.3g} '
            f'vs residual {residual["spread_init"]:.3g} at init, {plain["spread_trained"]:.3g} vs '
            f'{residual["spread_trained"]:.3g} after {numbers["steps"]} steps; final train loss '
            f'{plain["final_loss"]:.3f} vs {residual["final_loss"]:.3f}, test accuracy '
            f'{plain["test_accuracy"]:.3f} vs {residual["test_accuracy"]:.3f}'
        ),
    )


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (('plain', 'tab:red'), ('residual', 'tab:blue')):
        record = numbers[name]
        steps, losses = zip(*record['curve'])
        axes[0].plot(steps, losses, color=color, label=name)
        blocks = range(1, len(record['grad_norms_init']) + 1)
        axes[1].plot(blocks, record['grad_norms_init'], '--', color=color, label=f'{name}, init')
        axes[1].plot(
            blocks,
            record['grad_norms_trained'],
            '-',
            color=color,
            label=f'{name}, after {numbers["steps"]} steps',
        )
    axes[0].set(
        yscale='log',
        xlabel='step',
        ylabel='train loss',
        title=f'{numbers["depth"]}-block MLP on {numbers["dataset"]}',
    )
    axes[1].set(
        yscale='log',
        xlabel='block (1 = nearest the input)',
        ylabel='||dL/dW|| of the block',
        title='per-block gradient norms',
    )
    return save_figure(fig, out, axes)


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    import data
    from train.tasks.classify import ClassificationTask

    setting = SETTINGS[scale]
    info = data.dataset_info(setting['dataset'], data_dir)
    train = load_arrays(setting['dataset'], 'train', data_dir)
    test = load_arrays(setting['dataset'], 'test', data_dir)
    probe = {k: v[:256] for k, v in train.items()}  # the batch the gradient norms are taken on
    numbers: dict[str, Any] = {
        'dataset': setting['dataset'],
        'depth': setting['depth'],
        'width': setting['width'],
        'steps': setting['steps'],
    }
    for name in ('plain', 'residual'):
        model = DeepMLP(info.num_classes, setting['depth'], setting['width'], name == 'residual')
        task = ClassificationTask(model, info)
        # The same seed gives both twins the same initial weights (their parameters match).
        result = train_on_arrays(
            task,
            train,
            test,
            steps=setting['steps'],
            batch_size=setting['batch'],
            log_every=setting['log_every'],
            optimizer=dict(name='adam', learning_rate=setting['lr']),
        )
        curve = [[c['step'], c['loss']] for c in result.curve]
        gradient_norms = block_gradient_norms(task, probe, setting['depth'])
        init_norms, trained_norms = gradient_norms(result.initial), gradient_norms(result.state)
        numbers[name] = {
            'curve': curve,
            'final_loss': float(np.mean([loss for _, loss in curve[-3:]])),
            'test_accuracy': result.eval['accuracy'],
            'grad_norms_init': init_norms,
            'grad_norms_trained': trained_norms,
            'spread_init': spread(init_norms),
            'spread_trained': spread(trained_norms),
        }
    plot(numbers, Path(workdir) / 'residual.png')
    rows = [
        [
            name,
            numbers[name]['spread_init'],
            numbers[name]['spread_trained'],
            numbers[name]['grad_norms_init'][0],
            numbers[name]['grad_norms_init'][-1],
            numbers[name]['final_loss'],
            numbers[name]['test_accuracy'],
        ]
        for name in ('plain', 'residual')
    ]
    table = markdown_table(
        [
            'net',
            'max/min grad norm (init)',
            'max/min grad norm (trained)',
            'first block grad (init)',
            'last block grad (init)',
            'final train loss',
            'test accuracy',
        ],
        rows,
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['residual.png'], judge(numbers))
