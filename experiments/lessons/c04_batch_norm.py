"""Claim 4: batch normalisation allows a larger learning rate, trains faster, needs less
regularisation, lets saturating activations (sigmoid, tanh) train in a deep MLP, and erases the
scale of the weights before it.

A deep MLP (6 hidden layers) with and without batch norm (the MLP's `batch_norm` field: BN
before each activation), trained by plain SGD at constant rates through the project's trainer:
- ReLU over a learning-rate sweep: the largest rate that still trains, and how soon each
  one's best run reaches the loss the plain net's best run ends at;
- dropout on a small training subset, with and without BN: how much test accuracy it adds;
- sigmoid and tanh over a sweep: whether the deep saturating net trains with and without BN;
- a dense and a conv layer followed by BatchNorm in training mode, their weights scaled by c:
  the relative change of the output and of the gradient with respect to the input, and of
  c times the gradient with respect to the weights (BN(cWx) = BN(Wx), so dL/dx stays and
  dL/dW shrinks by 1/c: the weights' scale only sets their effective learning rate).

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=4 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 130 s at --scale=full (measured by
the runner while other jobs shared the machine). Expected: partly supported — with BN the ReLU
net trains at rates up to 3 (without: up to 0.3; 1 and 3 diverge) and reaches the plain net's
best loss 1.46x sooner; the sigmoid net trains only with BN (stuck at loss 2.31 without); the
tanh net trains without BN too; dropout 0.2 moves test accuracy by < 0.2 points with or
without BN, so "needs less regularisation" is not shown here. Scaling the weights before BN
by 0.1 or 10 changes the output and the input gradient by < 1e-3 relative (BN's epsilon),
and c·dL/dW by as little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.lessons import (
    Finding,
    Verdict,
    fresh_runs_dir,
    markdown_table,
    save_figure,
    steps_to_reach,
    trailing_means,
    train_run,
    verdict_of_parts,
)

NUMBER = 4
TITLE = 'Batch normalisation'
CLAIM = (
    'Batch norm allows a larger learning rate, trains faster, needs less regularisation, '
    'lets saturating activations (sigmoid/tanh) train in a deep MLP, and makes a layer blind '
    'to the scale of the weights before it.'
)

# A run "trains" when its final (smoothed) train loss is below 1.0: chance on 10 classes is
# ln 10 = 2.30, and a net that learned anything at all is far below it within these steps.
TRAINED_LOSS = 1.0
# "Faster": the plain net's best final loss reached in at most 1/1.25 of its steps.
MIN_SPEEDUP = 1.25
# "Needs less regularisation": dropout adds at least 2 points less test accuracy with BN
# than without. That difference of two gains (four accuracies, each with a standard error of
# ~0.4 points on the 10,000 test images) has a standard error of ~0.8 points.
MIN_DROPOUT_GAIN_GAP = 0.02
SMOOTH = 3
# "Erases the weight scale": BN(cWx) = BN(Wx) exactly but for BN's epsilon (1e-5 against the
# variance c²σ²: a relative effect of ~ε/(2c²σ²), 7e-4 at c = 0.1 here) and float32 rounding;
# 2e-3 admits both, while a layer without BN changes its output by |c - 1|: 90% or 900%.
SCALE_TOLERANCE = 2e-3
WEIGHT_SCALES = (0.1, 10.0)

SETTINGS = {
    'full': dict(
        dataset='fashion_mnist',
        train_split='train[:10000]',
        eval_split='test[:2000]',
        steps=300,
        batch=64,
        depth=6,
        width=128,
        log_every=5,
        relu_rates=(0.1, 0.3, 1.0, 3.0),
        saturating_rates=(0.1, 1.0),
        saturating=('sigmoid', 'tanh'),
        subset='train[:1000]',
        subset_steps=600,
        subset_eval_split='test',
        dropout=0.2,
        dropout_lr=0.1,
    ),
    # Tiny (tests, seconds): two runs. The dropout runs' data, rate and steps equal the ReLU
    # sweep's and the rate is 0, so all four are those runs, reused; no saturating sweep.
    'tiny': dict(
        dataset='digits',
        train_split='train[:256]',
        eval_split='test[:64]',
        steps=12,
        batch=32,
        depth=2,
        width=16,
        log_every=4,
        relu_rates=(1.0,),
        saturating_rates=(1.0,),
        saturating=(),
        subset='train[:256]',
        subset_steps=12,
        subset_eval_split='test[:64]',
        dropout=0.0,
        dropout_lr=1.0,
    ),
}


def make_config(
    setting: dict,
    data_dir: str | None,
    *,
    activation: str,
    batch_norm: bool,
    learning_rate: float,
    dropout: float = 0.0,
    subset: bool = False,
):
    from train.config import default_config, model_config

    config = default_config()
    config.dataset.name = setting['dataset']
    config.dataset.data_dir = data_dir or ''
    config.dataset.train_split = setting['subset'] if subset else setting['train_split']
    # The dropout runs compare small differences of test accuracy: all the test images.
    config.dataset.eval_split = setting['subset_eval_split' if subset else 'eval_split']
    config.model = model_config(
        'mlp',
        depth=setting['depth'],
        width=setting['width'],
        activation=activation,
        batch_norm=batch_norm,
        dropout_rate=dropout,
    )
    config.batch_size = setting['batch']
    config.eval_batch_size = 1000
    # The dropout runs go on longer on their small subset: long enough to overfit.
    config.num_steps = setting['subset_steps'] if subset else setting['steps']
    config.log_every_steps = setting['log_every']
    config.eval_every_steps = config.checkpoint_every_steps = config.num_steps
    config.optimizer.name = 'sgd'
    config.optimizer.learning_rate = learning_rate
    config.schedule.name = 'constant'
    return config


def run_name(config) -> str:
    """A name that differs exactly when the run's data, model or rate does."""
    model = config.model
    return (
        f'{model.activation}_{"bn" if model.batch_norm else "plain"}_lr'
        f'{config.optimizer.learning_rate:g}_drop{model.dropout_rate:g}_'
        f'{config.dataset.train_split}_{config.num_steps}_{config.dataset.eval_split}'
    )


def train_once(config, runs: Path, done: dict[str, dict]) -> dict[str, Any]:
    """Final smoothed train loss, test accuracy and loss curve (`done` keeps the runs made so
    far, by name); a diverged run (NaN/Inf) keeps the curve it had and counts as not trained."""
    from train.loop import NonFiniteError
    from train.pictures import read_metrics

    name = run_name(config)
    if name in done:
        return done[name]
    try:
        result = train_run(config, runs / name)
        records, accuracy = result.train, result.summary['eval']['accuracy']
    except NonFiniteError:
        metrics = runs / name / 'metrics.jsonl'
        records = read_metrics(metrics).get('train', []) if metrics.exists() else []
        accuracy = None
    curve = [[r['step'], r['loss']] for r in records]
    final = trailing_means([loss for _, loss in curve], SMOOTH)[-1] if curve else None
    diverged = accuracy is None
    done[name] = {
        'curve': curve,
        'final_loss': None if diverged else final,
        'test_accuracy': accuracy,
        'diverged': diverged,
        'trained': not diverged and final is not None and final < TRAINED_LOSS,
    }
    return done[name]


def sweep(
    setting: dict,
    data_dir: str | None,
    runs: Path,
    done: dict,
    activation: str,
    rates: tuple[float, ...],
) -> dict[str, list[dict]]:
    return {
        norm: [
            {
                'lr': lr,
                **train_once(
                    make_config(
                        setting,
                        data_dir,
                        activation=activation,
                        batch_norm=norm == 'bn',
                        learning_rate=lr,
                    ),
                    runs,
                    done,
                ),
            }
            for lr in rates
        ]
        for norm in ('plain', 'bn')
    }


def best(runs: list[dict]) -> dict | None:
    finished = [r for r in runs if r['final_loss'] is not None]
    return min(finished, key=lambda r: r['final_loss']) if finished else None


def summarise(relu: dict, saturating: dict, dropout: dict) -> dict[str, Any]:
    """The derived numbers judge() reads, from the raw sweeps."""
    largest = {
        norm: max([r['lr'] for r in runs if r['trained']], default=None)
        for norm, runs in relu.items()
    }
    best_plain, best_bn = best(relu['plain']), best(relu['bn'])
    target = best_plain['final_loss'] if best_plain else None
    reach = {
        norm: steps_to_reach(b['curve'], target, SMOOTH) if b and target else None
        for norm, b in (('plain', best_plain), ('bn', best_bn))
    }
    speedup = reach['plain'] / reach['bn'] if reach['plain'] and reach['bn'] else None
    gains = {norm: d['with'] - d['without'] for norm, d in dropout.items()}
    sat = {}
    for activation, runs in saturating.items():
        b_plain, b_bn = best(runs['plain']), best(runs['bn'])
        reached = {
            norm: steps_to_reach(b['curve'], TRAINED_LOSS, SMOOTH) if b else None
            for norm, b in (('plain', b_plain), ('bn', b_bn))
        }
        sat[activation] = {
            'plain_best_loss': b_plain and b_plain['final_loss'],
            'bn_best_loss': b_bn and b_bn['final_loss'],
            'plain_steps_to_trained': reached['plain'],
            'bn_steps_to_trained': reached['bn'],
        }
    return {
        'largest_trained_lr': largest,
        'target_loss': target,
        'steps_to_target': reach,
        'speedup': speedup,
        'dropout_gain': gains,
        'saturating': sat,
    }


# --------------------------------------------------------------------------- weight scale


class _LayerThenNorm(nn.Module):
    """A dense or 3x3 conv layer without bias, BatchNorm in training mode, ReLU."""

    kind: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == 'dense':
            y = nn.Dense(16, use_bias=False, name='layer')(x)
        else:
            y = nn.Conv(8, (3, 3), use_bias=False, name='layer')(x)
        y = nn.BatchNorm(use_running_average=False, name='norm')(y)
        return nn.relu(y)


def weight_scale_invariance(scales=WEIGHT_SCALES, seed: int = 0) -> dict[str, dict]:
    """Per layer kind ('dense', 'conv') and scale c: the relative change of the output, of
    dL/dx and of c·dL/dW when the layer's weights are multiplied by c, for a fixed random
    readout L = <R, out> of the training-mode output."""
    keys = jax.random.split(jax.random.key(seed), 3)
    shapes = {'dense': (64, 32), 'conv': (8, 8, 8, 4)}
    measured = {}
    for kind, shape in shapes.items():
        module = _LayerThenNorm(kind)
        x = jax.random.normal(keys[0], shape)
        variables = module.init(keys[1], x)
        readout = jax.random.normal(keys[2], module.apply(variables, x, mutable=True)[0].shape)

        def loss(kernel, x, module=module, variables=variables, readout=readout):
            params = {**variables['params'], 'layer': {'kernel': kernel}}
            out, _ = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
            return jnp.sum(readout * out), out

        grads = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
        kernel = variables['params']['layer']['kernel']
        (weight_grad, input_grad), out = grads(kernel, x)

        def relative(a, b):
            return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))

        measured[kind] = {}
        for c in scales:
            (scaled_weight_grad, scaled_input_grad), scaled_out = grads(c * kernel, x)
            measured[kind][str(c)] = {
                'output': relative(scaled_out, out),
                'input_grad': relative(scaled_input_grad, input_grad),
                'weight_grad_times_c': relative(c * scaled_weight_grad, weight_grad),
            }
    return measured


def scale_erased(measured: dict[str, dict]) -> bool:
    return all(
        change <= SCALE_TOLERANCE
        for per_scale in measured.values()
        for changes in per_scale.values()
        for change in changes.values()
    )


def judge(numbers: dict) -> Verdict:
    summary = numbers['summary']
    largest, gains = summary['largest_trained_lr'], summary['dropout_gain']
    parts = {
        'larger learning rate': largest['bn'] is not None
        and (largest['plain'] is None or largest['bn'] > largest['plain']),
        f'>= {MIN_SPEEDUP:g}x faster': (summary['speedup'] or 0.0) >= MIN_SPEEDUP,
        'less regularisation needed': gains['plain'] - gains['bn'] >= MIN_DROPOUT_GAIN_GAP,
    }
    notes = []
    if 'weight_scale' in numbers:
        measured = numbers['weight_scale']
        parts['weights scaled before BN change nothing but dL/dW (by 1/c)'] = scale_erased(measured)
        largest_change = max(
            change
            for per_scale in measured.values()
            for changes in per_scale.values()
            for change in changes.values()
        )
        notes.append(
            f'weights x{", x".join(next(iter(measured.values())))} before BN: output, dL/dx '
            f'and c·dL/dW change by <= {largest_change:.1e} relative'
        )
    for activation, s in summary['saturating'].items():
        bn, plain = s['bn_steps_to_trained'], s['plain_steps_to_trained']
        # "Lets it train": it trains with BN and, at every rate of the sweep, not without.
        parts[f'{activation} trains only with BN'] = bn is not None and plain is None
        notes.append(
            f'{activation} reaches loss {TRAINED_LOSS:g} at step {bn} with BN, {plain} without'
        )
    details = (
        f'largest ReLU rate that trains: {largest["bn"]} with BN, {largest["plain"]} '
        f'without; BN speed-up {summary["speedup"] or 0:.2f}x; dropout adds '
        f'{gains["bn"]:+.1%} test accuracy with BN, {gains["plain"]:+.1%} without; '
        + '; '.join(notes)
    )
    return verdict_of_parts(parts, details)


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    panels = 2 + len(numbers['saturating'])
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for norm, style in (('plain', '--'), ('bn', '-')):
        runs = numbers['relu'][norm]
        axes[0].plot(
            [r['lr'] for r in runs],
            [r['final_loss'] or float('nan') for r in runs],
            'o' + style,
            label=f'{norm} (x: diverged)',
        )
        axes[0].plot(
            [r['lr'] for r in runs if r['diverged']],
            [TRAINED_LOSS] * sum(r['diverged'] for r in runs),
            'rx',
        )
        b = best(runs)
        if b:
            axes[1].plot(*zip(*b['curve']), style, label=f'{norm}, best lr {b["lr"]:g}')
    axes[0].axhline(TRAINED_LOSS, color='grey', ls=':', label='"trains" threshold')
    axes[0].set(
        xscale='log',
        yscale='log',
        xlabel='learning rate',
        ylabel='final train loss',
        title='ReLU MLP: learning-rate sweep',
    )
    axes[1].set(yscale='log', xlabel='step', ylabel='train loss', title='ReLU MLP: best runs')
    for ax, (activation, sweeps) in zip(axes[2:], numbers['saturating'].items()):
        for norm, style in (('plain', '--'), ('bn', '-')):
            for r in sweeps[norm]:
                if r['curve']:
                    ax.plot(*zip(*r['curve']), style, label=f'{norm}, lr {r["lr"]:g}')
        ax.set(yscale='log', xlabel='step', ylabel='train loss', title=f'{activation} MLP')
    return save_figure(fig, out, axes, legend_fontsize=7)


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    setting = SETTINGS[scale]
    runs = fresh_runs_dir(workdir)
    done: dict[str, dict] = {}
    relu = sweep(setting, data_dir, runs, done, 'relu', setting['relu_rates'])
    saturating = {
        a: sweep(setting, data_dir, runs, done, a, setting['saturating_rates'])
        for a in setting['saturating']
    }
    dropout: dict[str, dict[str, float]] = {}
    for norm in ('plain', 'bn'):
        dropout[norm] = {}
        for key, rate in (('without', 0.0), ('with', setting['dropout'])):
            config = make_config(
                setting,
                data_dir,
                activation='relu',
                batch_norm=norm == 'bn',
                dropout=rate,
                subset=True,
                learning_rate=setting['dropout_lr'],
            )
            dropout[norm][key] = train_once(config, runs, done)['test_accuracy'] or 0.0
    numbers = {
        'dataset': setting['dataset'],
        'depth': setting['depth'],
        'steps': setting['steps'],
        'relu': relu,
        'saturating': saturating,
        'dropout': dropout,
        'summary': summarise(relu, saturating, dropout),
        'weight_scale': weight_scale_invariance(),
    }
    plot(numbers, Path(workdir) / 'batch_norm.png')
    rows = [
        [
            activation,
            norm,
            r['lr'],
            'diverged' if r['diverged'] else r['final_loss'],
            r['trained'],
            r['test_accuracy'] if r['test_accuracy'] is not None else '-',
        ]
        for activation, sweeps in (('relu', relu), *saturating.items())
        for norm in ('plain', 'bn')
        for r in sweeps[norm]
    ]
    rows += [
        [
            f'relu + dropout {setting["dropout"]:g} ({setting["subset"]})',
            norm,
            '',
            '',
            '',
            f'{d["without"]:.4f} -> {d["with"]:.4f}',
        ]
        for norm, d in dropout.items()
    ]
    table = markdown_table(
        ['activation', 'norm', 'lr', 'final train loss', 'trains', 'test accuracy'], rows
    )
    scale_rows = [
        [kind, f'x{c}', changes['output'], changes['input_grad'], changes['weight_grad_times_c']]
        for kind, per_scale in numbers['weight_scale'].items()
        for c, changes in per_scale.items()
    ]
    table += '\n\nWeights scaled by c before a training-mode BatchNorm (relative changes):\n\n'
    table += markdown_table(['layer', 'weights', 'output', 'dL/dx', 'c·dL/dW'], scale_rows)
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['batch_norm.png'], judge(numbers))
