"""Claim 7: three stacked 3x3 convolutions see a 7x7 field with fewer parameters than one 7x7
and more non-linearity; 1x1 bottlenecks cut Inception's parameters and FLOPs.

1. Counted: a stack of three 3x3 conv+ReLU layers vs one 7x7 conv+ReLU, C channels in and
   out — parameters with `nets.count_params` (jax.eval_shape), FLOPs with
   `nets.tools.summary.flops_per_example` (XLA's count), and the receptive field *measured*: the
   extent of the input pixels with a non-zero gradient of one centre output.
2. Counted: GoogLeNet's inception (3a) module (nets/models/inception.py, the paper's 5x5 branch) on
   its 28x28x192 input vs the paper's naive module without the 1x1 reductions (1x1, 3x3 and
   5x5 convs and a 3x3 max pool straight on the input, Szegedy et al. 2014, Figure 2a).
3. Trained: the project's 'cnn' with two stages of equal width, each three 3x3 convs or one
   7x7 conv, on an image set through the project's trainer: test accuracy against parameters.

    python -m experiments.lessons.report --workdir=workdirs/lessons --lessons=7 --scale=full

Hardware: the 2-core x86-64 CPU, one XLA device. Time: 102 s (shared machine).
Expected (measured): C=64, both fields 7x7 measured, 110,784 vs 200,768 parameters
(27C² vs 49C² plus biases), 3 vs 1 ReLUs; inception (3a) with the 1x1 reductions has 42% of
the naive module's parameters (164,064 vs 387,520) and 43% of its FLOPs; trained 300 steps
on mnist5k both nets reach 96.2% test accuracy, the 3x3 net with 19,706 parameters against
21,242. Verdict: supported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.lessons import (
    Finding,
    Verdict,
    fresh_runs_dir,
    markdown_table,
    save_figure,
    train_run,
    verdict_of_parts,
)
from nets.layers.inception_blocks import InceptionBlock, max_pool
from nets.models.inception import InceptionV1Block

NUMBER = 7
TITLE = 'Receptive fields: 3x3 stacks and 1x1 bottlenecks'
CLAIM = (
    'Three stacked 3x3 convs see a 7x7 field with fewer parameters than one 7x7, and more '
    "non-linearity; 1x1 bottlenecks cut Inception's parameters and FLOPs."
)

# A "cut" worth the name: the 1x1 reductions remove at least a quarter of the parameters and
# of the FLOPs.
MAX_INCEPTION_RATIO = 0.75
# "At least as good" in training: the 3x3 stack's test accuracy no more than 1 point below.
ACCURACY_TOLERANCE = 0.01
# GoogLeNet's inception (3a): (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection).
INCEPTION_3A = (64, 96, 128, 16, 32, 32)

SETTINGS = {
    'full': dict(
        channels=64,
        size=32,
        inception_input=(28, 28, 192),
        width_multiplier=1.0,
        dataset='mnist5k',
        cnn_width=16,
        steps=300,
        batch=64,
        lr=3e-3,
    ),
    'tiny': dict(
        channels=8,
        size=16,
        inception_input=(8, 8, 24),
        width_multiplier=0.125,
        dataset='digits',
        cnn_width=4,
        steps=12,
        batch=32,
        lr=3e-3,
    ),
}


class ConvStack(nn.Module):
    """`layers` x (kxk conv, C -> C, then ReLU)."""

    features: int
    kernel_size: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(self.layers):
            k = self.kernel_size
            x = nn.relu(nn.Conv(self.features, (k, k), padding='SAME', name=f'conv{i}')(x))
        return x


class NaiveInceptionBlock(InceptionBlock):
    """The paper's naive module: 1x1 | 3x3 | 5x5 convs and a 3x3 max pool on the input."""

    features: tuple[int, ...] = ()  # (1x1, 3x3, 5x5)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c1, c3, c5 = self.features
        branches = [
            self.conv(c1, 1, 'branch1')(x, train=train),
            self.conv(c3, 3, 'branch2')(x, train=train),
            self.conv(c5, 5, 'branch3')(x, train=train),
            max_pool(x, 3, 1, padding=1),
        ]
        return jnp.concatenate(branches, axis=-1)


def measured_field(module: nn.Module, size: int, channels: int) -> list[int]:
    """(height, width) of the input region with a non-zero gradient of the centre output."""
    inputs = jax.random.normal(jax.random.key(0), (4, size, size, channels))
    variables = module.init(jax.random.key(1), inputs[:1])
    centre = size // 2
    grads = jax.jit(jax.grad(lambda x: jnp.sum(module.apply(variables, x)[:, centre, centre])))(
        inputs
    )
    rows, cols = np.nonzero(np.asarray(jnp.abs(grads).sum((0, 3))))
    return [int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)]


def count_nonlinearities(module: nn.Module, size: int, channels: int) -> int:
    """ReLUs (`max` with 0) in the traced forward pass, inside nested calls too."""
    inputs = jnp.zeros((1, size, size, channels))
    variables = module.init(jax.random.key(0), inputs)

    def count(jaxpr) -> int:
        found = 0
        for eqn in jaxpr.eqns:
            found += eqn.primitive.name == 'max'
            for value in eqn.params.values():
                for item in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(item, 'jaxpr', item)  # ClosedJaxpr -> Jaxpr
                    if hasattr(inner, 'eqns'):
                        found += count(inner)
        return found

    return count(jax.make_jaxpr(lambda x: module.apply(variables, x))(inputs).jaxpr)


def cost(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    from nets import count_params
    from nets.tools.summary import flops_per_example

    shape = (1, *input_shape)
    return {'params': count_params(module, shape), 'flops': flops_per_example(module, shape)}


def make_config(setting: dict, layout: dict[str, int], data_dir: str | None):
    from train.config import default_config, model_config

    config = default_config()
    config.dataset.name = setting['dataset']
    config.dataset.data_dir = data_dir or ''
    width = setting['cnn_width']
    # A flatten head: a 2-stage GAP head learns slowly, and both nets get the same one.
    config.model = model_config('cnn', channels=(width, width), head='flatten', **layout)
    config.batch_size = setting['batch']
    config.eval_batch_size = 200
    config.num_steps = setting['steps']
    config.log_every_steps = max(1, setting['steps'] // 20)
    config.eval_every_steps = config.checkpoint_every_steps = setting['steps']
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = setting['lr']
    return config


LAYOUTS = {
    '3 x 3x3': dict(convs_per_stage=3, kernel_size=3),
    '1 x 7x7': dict(convs_per_stage=1, kernel_size=7),
}


def judge(numbers: dict) -> Verdict:
    stack, single = numbers['stack'], numbers['single']
    naive, reduced = numbers['inception']['naive'], numbers['inception']['with_1x1']
    trained = numbers['trained']
    params_ratio = reduced['params'] / naive['params']
    flops_ratio = reduced['flops'] / naive['flops']
    parts = {
        'three 3x3 see the 7x7 field of one 7x7': stack['field'] == single['field'] == [7, 7],
        'with fewer parameters': stack['params'] < single['params'],
        'and more non-linearities': stack['nonlinearities'] > single['nonlinearities'],
        f'1x1 reductions keep <= {MAX_INCEPTION_RATIO:.0%} of params and FLOPs': params_ratio
        <= MAX_INCEPTION_RATIO
        and flops_ratio <= MAX_INCEPTION_RATIO,
        f'trained 3x3 net within {ACCURACY_TOLERANCE:.0%} of the 7x7 net with fewer params': (
            trained['3 x 3x3']['accuracy'] >= trained['1 x 7x7']['accuracy'] - ACCURACY_TOLERANCE
            and trained['3 x 3x3']['params'] < trained['1 x 7x7']['params']
        ),
    }
    return verdict_of_parts(
        parts,
        (
            f'C={numbers["channels"]}: measured field {stack["field"]} vs {single["field"]}, '
            f'{stack["params"]:,} vs {single["params"]:,} params, {stack["nonlinearities"]} vs '
            f'{single["nonlinearities"]} ReLUs; inception (3a) with 1x1 reductions keeps '
            f'{params_ratio:.0%} of the naive params and {flops_ratio:.0%} of its FLOPs; '
            'trained on '
            f'{numbers["dataset"]}: {trained["3 x 3x3"]["accuracy"]:.3f} '
            f'({trained["3 x 3x3"]["params"]:,} params) vs {trained["1 x 7x7"]["accuracy"]:.3f} '
            f'({trained["1 x 7x7"]["params"]:,})'
        ),
    )


def plot(numbers: dict, out: Path) -> Path:
    from train.pictures import plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = ['3 x 3x3', '1 x 7x7']
    records = [numbers['stack'], numbers['single']]
    axes[0].bar(names, [r['params'] for r in records], color=['tab:blue', 'tab:orange'])
    axes[0].set(
        ylabel='parameters',
        title=f'C={numbers["channels"]} -> C, measured field '
        f'{numbers["stack"]["field"]} vs {numbers["single"]["field"]}',
    )
    inception = numbers['inception']
    kinds = ['naive', 'with_1x1']
    x = np.arange(2)
    axes[1].bar(x - 0.2, [inception[k]['params'] / 1e6 for k in kinds], 0.4, label='M params')
    axes[1].bar(x + 0.2, [inception[k]['flops'] / 1e9 for k in kinds], 0.4, label='GFLOPs')
    axes[1].set_xticks(x, ['naive', 'with 1x1 reductions'])
    axes[1].set(title=f'inception (3a) on {"x".join(map(str, numbers["inception_input"]))}')
    axes[1].legend(fontsize=8)
    for name, color in zip(names, ['tab:blue', 'tab:orange']):
        record = numbers['trained'][name]
        axes[2].plot(
            record['params'], record['accuracy'], 'o', color=color, markersize=9, label=name
        )
    axes[2].set(
        xlabel='parameters',
        ylabel='test accuracy',
        title=f'trained on {numbers["dataset"]}, {numbers["steps"]} steps',
    )
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def run(workdir: Path, scale: str, data_dir: str | None) -> Finding:
    setting = SETTINGS[scale]
    channels, size = setting['channels'], setting['size']
    numbers: dict[str, Any] = {
        'channels': channels,
        'dataset': setting['dataset'],
        'steps': setting['steps'],
        'inception_input': list(setting['inception_input']),
    }
    for name, (kernel, layers) in (('stack', (3, 3)), ('single', (7, 1))):
        module = ConvStack(channels, kernel, layers)
        numbers[name] = {
            **cost(module, (size, size, channels)),
            'field': measured_field(module, size, channels),
            'nonlinearities': count_nonlinearities(module, size, channels),
        }
    c1, c3r, c3, c5r, c5, _ = INCEPTION_3A
    blocks = {
        'naive': NaiveInceptionBlock(
            features=(c1, c3, c5), width_multiplier=setting['width_multiplier']
        ),
        'with_1x1': InceptionV1Block(
            features=INCEPTION_3A, wide_kernel_size=5, width_multiplier=setting['width_multiplier']
        ),
    }
    numbers['inception'] = {
        name: cost(block, setting['inception_input']) for name, block in blocks.items()
    }
    runs = fresh_runs_dir(workdir)
    numbers['trained'] = {}
    for name, layout in LAYOUTS.items():
        result = train_run(
            make_config(setting, layout, data_dir), runs / name.replace(' ', '').replace('x', '_')
        )
        numbers['trained'][name] = {
            'params': result.summary['num_params'],
            'accuracy': result.summary['eval']['accuracy'],
        }
    plot(numbers, Path(workdir) / 'receptive_fields.png')
    rows = [
        [
            '3 x 3x3 conv',
            numbers['stack']['params'],
            numbers['stack']['flops'],
            'x'.join(map(str, numbers['stack']['field'])),
            3,
        ],
        [
            '1 x 7x7 conv',
            numbers['single']['params'],
            numbers['single']['flops'],
            'x'.join(map(str, numbers['single']['field'])),
            1,
        ],
        [
            'inception (3a), naive',
            numbers['inception']['naive']['params'],
            numbers['inception']['naive']['flops'],
            '',
            '',
        ],
        [
            'inception (3a), 1x1 reductions',
            numbers['inception']['with_1x1']['params'],
            numbers['inception']['with_1x1']['flops'],
            '',
            '',
        ],
    ]
    rows += [
        [f'cnn {name}, trained: accuracy {record["accuracy"]:.3f}', record['params'], '', '', '']
        for name, record in numbers['trained'].items()
    ]
    table = markdown_table(
        ['layer / net', 'params', 'FLOPs per example (XLA)', 'measured field', 'ReLUs'], rows
    )
    return Finding(NUMBER, TITLE, CLAIM, numbers, table, ['receptive_fields.png'], judge(numbers))
