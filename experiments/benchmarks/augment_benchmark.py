"""Throughput of on-device augmentation next to the quickstart's train step.

Command:
  python -m experiments.benchmarks.augment_benchmark [--out=augment_benchmark.json]
      [--batch_size=256] [--repeats=10] [--large=true] [--large_repeats=3]
Measures, on a batch of 256 random images in [0, 1] (float32):
  * the augmentation pipeline alone, jitted: the geometric part (rotate, translate, scale,
    flip_lr, flip_ud, shear, stretch: one warp), the photometric part (brightness, contrast,
    saturation, hue, gaussian_noise, gaussian_blur) and both together (the full chain), on
    28x28x1 (Fashion-MNIST) and, with --large, 224x224x3 (ImageNet-sized) images;
  * the quickstart train step (forward + backward + SGD-with-momentum update of
    `nets.create('cnn', num_classes=10, channels=(16, 32), convs_per_stage=1, head='flatten',
    head_hidden=128, dropout_rate=0.2)`) on the 28x28x1 batch, and the same step with the full
    chain inside it, as the trainer runs it.
Each is compiled and run once first (the compile time is reported too), then timed over
`--repeats` calls with `block_until_ready`, the calls of the different measurements of one
image size alternating (so that a shared machine's changing load hits them alike); the median
is reported. The ratio augmentation time / train-step time is the number to watch (target:
under 10%).

Hardware and time: ~3 minutes on a 2-core CPU (mostly the 224x224x3 rows; --large=false: under
a minute), ~1 minute on one H100 (compiles included).
Expected: on the CPU the full chain costs well under the 10% budget of a train step; the
measurements, on a 2-core CPU and on an H100, are in docs/augmentation.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import nets
from data import augment
from train import cli

_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per batch.', lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    'repeats', 10, 'Timed calls per measurement (median reported).', lower_bound=1
)
_LARGE = flags.DEFINE_boolean('large', True, 'Also measure 224x224x3 images (augmentation only).')
_LARGE_REPEATS = flags.DEFINE_integer(
    'large_repeats', 3, 'Timed calls per 224x224x3 measurement.', lower_bound=1
)
_OUT = flags.DEFINE_string('out', None, 'Write the results as JSON here (default: stdout only).')

GEOMETRIC = [
    {'op': 'rotate'},
    {'op': 'translate'},
    {'op': 'scale'},
    {'op': 'flip_lr'},
    {'op': 'flip_ud'},
    {'op': 'shear'},
    {'op': 'stretch'},
]
PHOTOMETRIC = [
    {'op': 'brightness'},
    {'op': 'contrast'},
    {'op': 'saturation'},
    {'op': 'hue'},
    {'op': 'gaussian_noise'},
    {'op': 'gaussian_blur'},
]
FULL_CHAIN = GEOMETRIC + PHOTOMETRIC
QUICKSTART_MODEL = dict(
    num_classes=10,
    channels=(16, 32),
    convs_per_stage=1,
    head='flatten',
    head_hidden=128,
    dropout_rate=0.2,
)
NUM_CLASSES = 10


def time_interleaved(
    fns: dict[str, Callable[[int], Any]], repeats: int
) -> dict[str, tuple[float, float]]:
    """name -> (compile-and-first-call seconds, median seconds of `repeats` calls); fn(i) runs
    call i. The calls of the different functions alternate, so that a change in the machine's
    load (a shared machine) hits them all alike and their ratios stay meaningful."""
    first = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(0))
        first[name] = time.perf_counter() - start
        jax.block_until_ready(fn(1))  # one more untimed call: caches and allocator warm
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(i + 2))
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name])) for name in fns}


def augment_fn(
    ops: Sequence[dict[str, Any]], images: jax.Array, labels: jax.Array
) -> Callable[[int], Any]:
    augmenter = augment.make_augmenter(ops, num_classes=NUM_CLASSES)
    # The step's key is derived inside the jit, as in the trainer: one dispatch per call.
    run = jax.jit(lambda key, i: augmenter(jax.random.fold_in(key, i), images, labels))
    key = jax.random.PRNGKey(0)
    return lambda i: run(key, i)


def train_step_fn(
    images: jax.Array, labels: jax.Array, ops: Sequence[dict[str, Any]] = ()
) -> Callable[[int], Any]:
    """The quickstart train step, optionally with augmentation inside the same jit."""
    model = nets.create('cnn', **QUICKSTART_MODEL)
    variables = model.init(
        {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, images[:1], train=False
    )
    params, model_state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
    tx = optax.sgd(learning_rate=0.1, momentum=0.9)
    augmenter = augment.make_augmenter(ops, num_classes=NUM_CLASSES) if ops else None
    mean, std = 0.2860, 0.3530  # Fashion-MNIST's train statistics

    def loss_fn(params, model_state, images, labels, rng):
        if augmenter is not None:
            images, targets = augmenter(jax.random.fold_in(rng, 1), images, labels)
        else:
            targets = jax.nn.one_hot(labels, NUM_CLASSES)
        logits, new_state = model.apply(
            {'params': params, **model_state},
            (images - mean) / std,
            train=True,
            rngs={'dropout': rng},
            mutable=list(model_state),
        )
        return optax.softmax_cross_entropy(logits, targets).mean(), new_state

    @jax.jit
    def step(state, images, labels, key, i):
        rng = jax.random.fold_in(key, i)
        params, model_state, opt_state = state
        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, images, labels, rng
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), model_state, opt_state), loss

    state = [(params, model_state, tx.init(params))]
    key = jax.random.PRNGKey(2)

    def run(i):
        state[0], loss = step(state[0], images, labels, key, i)
        return loss

    return run


def measure(repeats: int, large_repeats: int, batch_size: int, large: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = []
    shapes = [(28, 28, 1)] + ([(224, 224, 3)] if large else [])
    for shape in shapes:
        images = jnp.asarray(rng.uniform(size=(batch_size, *shape)).astype(np.float32))
        labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32))
        fns = {
            f'augment: {name}': augment_fn(ops, images, labels)
            for name, ops in (
                ('geometric (7 ops, 1 warp)', GEOMETRIC),
                ('photometric (6 ops)', PHOTOMETRIC),
                ('full chain (13 ops)', FULL_CHAIN),
            )
        }
        if shape == (28, 28, 1):
            fns['train step (quickstart CNN)'] = train_step_fn(images, labels)
            fns['train step + full chain in one jit'] = train_step_fn(images, labels, FULL_CHAIN)
        timings = time_interleaved(fns, repeats if shape == (28, 28, 1) else large_repeats)
        for what, (first, median) in timings.items():
            row = {
                'what': what,
                'shape': 'x'.join(map(str, shape)),
                'median_ms': median * 1e3,
                'images_per_s': batch_size / median,
                'first_call_s': first,
            }
            rows.append(row)
            print(
                f'  {what:<40} {row["shape"]:>9} {row["median_ms"]:10.2f} ms '
                f'{row["images_per_s"]:12,.0f} img/s   (compile + first call {first:.1f} s)',
                flush=True,
            )
    by_name = {(r['what'], r['shape']): r['median_ms'] for r in rows}
    train = by_name[('train step (quickstart CNN)', '28x28x1')]
    return {
        'device': str(jax.devices()[0]),
        'platform': jax.default_backend(),
        'device_kind': jax.devices()[0].device_kind,
        'cpu_count': os.cpu_count(),
        'jax': jax.__version__,
        'batch_size': batch_size,
        'repeats': repeats,
        'rows': rows,
        'augment_over_train_step': by_name[('augment: full chain (13 ops)', '28x28x1')] / train,
        'fused_overhead': by_name[('train step + full chain in one jit', '28x28x1')] / train - 1,
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    device = jax.devices()[0]
    print(
        f'{device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores, '
        f'jax {jax.__version__}, '
        f'batch {_BATCH_SIZE.value}, median of {_REPEATS.value}',
        flush=True,
    )
    report = measure(_REPEATS.value, _LARGE_REPEATS.value, _BATCH_SIZE.value, _LARGE.value)
    ratio = report['augment_over_train_step']
    print(
        f'full chain / train step (28x28x1): {ratio:.1%} (target < 10%: '
        f'{"met" if ratio < 0.1 else "NOT met"}); the same chain inside the train step adds '
        f'{report["fused_overhead"]:.1%}'
    )
    if _OUT.value:
        with open(_OUT.value, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'wrote {_OUT.value}')


if __name__ == '__main__':
    cli.run(main)
