"""What a training run costs: FLOPs per train step of a config, and device time.

The counts come from the one FLOP counter (`nets.tools.flops`: XLA's cost analysis with loop
bodies multiplied by their trip counts) applied to the config's real train step, plus the
analytic checks (3 × the forward products and convolutions; 6·N per token for a ViT);
docs/scaling.md compares them on the study's ladders.

Device time is the unit Smith et al. (2023) report compute in: core-hours, the seconds a run
held its devices times the devices times the cores per device (a TPU v4 or v5p chip is one
JAX device with two TensorCores; one CPU device computes on every host core).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

import data
import nets
from data import augment
from nets.tools.flops import (
    FlopCount,
    analytic_forward_flops,
    loop_corrected_flops,
    matmul_params,
    transformer_train_flops,
)
from train.loop import create_model
from train.pictures import read_metrics
from train.sharding import host_to_global, make_mesh
from train.steps import init_train_state, make_train_step
from train.tasks import task_from_config

# --- The training step of a config -------------------------------------------------------------


def _dataset_info(
    config: ml_collections.ConfigDict, example_shape: Sequence[int], num_classes: int
) -> Any:
    channels = example_shape[-1]
    return data.DatasetInfo(
        name=config.dataset.name,
        num_classes=num_classes,
        class_names=tuple(str(i) for i in range(num_classes)),
        example_shape=tuple(example_shape),
        image_dtype='uint8',
        splits={},
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def _train_step_count(config: ml_collections.ConfigDict, info: Any, batch_size: int) -> FlopCount:
    model = create_model(config, info)
    augmenter = None
    if config.augment:
        augmenter = augment.make_augmenter(config.augment, num_classes=info.num_classes)
    task = task_from_config(config, model=model, info=info, augmenter=augmenter)
    # One device: a sharded program's cost analysis is one device's share of the step.
    mesh = make_mesh(jax.devices()[:1])
    # The schedule's constants change no FLOP count; any lengths will do.
    tx, _ = task.make_optimizer(config, steps_per_epoch=100, total_steps=1000)
    state = jax.eval_shape(lambda: init_train_state(task, tx, config.seed, mesh))
    batch = {
        'image': jax.ShapeDtypeStruct((batch_size, *info.example_shape), jnp.uint8),
        'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }
    step = make_train_step(task, tx, mesh, skip_nonfinite=config.nonfinite == 'skip')
    count = loop_corrected_flops(step, state, batch)
    if count.uncorrected_loops:
        logging.warning(
            '%s: %d while loop(s) with a trip count unknown at compile time are '
            'counted once by XLA; the FLOP count is a lower bound',
            config.model.name,
            count.uncorrected_loops,
        )
    return count


def train_step_flops(
    config: ml_collections.ConfigDict,
    example_shape: Sequence[int],
    num_classes: int,
    *,
    batch_size: int | None = None,
    info: Any = None,
) -> float:
    """FLOPs of one train step of `config` (forward, backward, optimiser update; loops
    corrected) for a global batch of `batch_size` (default `config.batch_size`) uint8 images of
    `example_shape` (H, W, C), as one device would run it: image tasks (classify, gan,
    diffusion). `info`: the data set's facts when known (else made up from the shape).

    Compiled at the real batch: XLA lowers convolutions differently at different batch sizes
    (a ResNet's count per example moved by ±5% between batches 4 and 64 on the CPU), so a count
    extrapolated from a small batch would not be the step that runs.
    """
    if len(example_shape) != 3:
        raise ValueError(
            f'train_step_flops builds batches of (H, W, C) images; got examples of '
            f'shape {tuple(example_shape)}'
        )
    info = info or _dataset_info(config, example_shape, num_classes)
    return _train_step_count(config, info, batch_size or config.batch_size).total


def flop_report(
    config: ml_collections.ConfigDict,
    example_shape: Sequence[int],
    num_classes: int,
    *,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Every count of one run's model: XLA's train step (loops corrected), XLA's forward pass
    per example, parameters, and the analytic checks: 3 × the forward matrix products and
    convolutions, and for a ViT 6·N per token with and without the attention products.
    `batch_size` defaults to `config.batch_size`; the analytic counts are for that batch."""
    batch_size = batch_size or config.batch_size
    model = create_model(config, _dataset_info(config, example_shape, num_classes))
    shape = (1, *example_shape)
    variables = jax.eval_shape(
        lambda: model.init(
            {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
            jnp.zeros(shape),
            train=True,
        )
    )
    params = variables['params']

    def forward(v: Any, x: jax.Array) -> jax.Array:
        return model.apply(v, x, train=False)

    image = jax.ShapeDtypeStruct(shape, jnp.float32)
    report = {
        'train_step_flops': train_step_flops(
            config, example_shape, num_classes, batch_size=batch_size
        ),
        'forward_flops_per_example': loop_corrected_flops(forward, variables, image).total,
        'analytic_train_step_flops': 3
        * batch_size
        * analytic_forward_flops(forward, variables, image),
        'params': float(sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))),
        'matmul_params': float(matmul_params(params)),
        'batch_size': float(batch_size),
    }
    if nets.model_family(config.model.name) == 'vit' and config.model.stem == 'patch':
        patch = config.model.patch_size
        tokens = (example_shape[0] // patch) * (example_shape[1] // patch)
        tokens += int(config.model.pool == 'token')
        n = matmul_params(params)
        report['transformer_6n_flops'] = transformer_train_flops(n, batch_size * tokens)
        report['transformer_6n_attention_flops'] = transformer_train_flops(
            n,
            batch_size * tokens,
            num_layers=config.model.depth,
            context=tokens,
            width=config.model.hidden_size,
        )
    return report


# --- Device time -------------------------------------------------------------------------------


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_per_device(platform: str, device_kind: str = '', num_devices: int = 1) -> int:
    """Cores behind one JAX device: TensorCores of a TPU chip (two on v4 and v5p, which JAX
    shows as one 'megacore' device; one on v2/v3, where each core is a device, and on v5e/v6e),
    one per GPU, and the host's cores shared out over the CPU devices."""
    kind = device_kind.lower()
    if platform == 'tpu':
        return 2 if ('v4' in kind or 'v5p' in kind or kind == 'tpu v5') else 1
    if platform == 'cpu':
        return max(1, host_cores() // max(num_devices, 1))
    return 1


def core_hours(device_seconds: float, cores: int) -> float:
    """Core-hours of `device_seconds` (seconds × devices) on devices of `cores` cores each."""
    return device_seconds * cores / 3600.0


def train_loop_seconds(metrics_file: str | Path, batch_size: int) -> float:
    """Seconds the training loop took, from the throughput of each logged window of train steps
    in metrics.jsonl (first-step compilation included, evaluation and checkpoints not). A run
    resumed after a crash counts the steps between its last logged record and the resume point
    at the resumed window's throughput: at most one logging window off per interruption."""
    path = Path(metrics_file)
    if not path.exists():
        return 0.0
    seconds, previous_step = 0.0, 0
    for record in read_metrics(path).get('train', []):
        steps = record['step'] - previous_step
        speed = record.get('examples_per_second', 0.0)
        if steps > 0 and speed and math.isfinite(speed):
            seconds += steps * batch_size / speed
        previous_step = record['step']
    return seconds


# --- Conversions and estimates -------------------------------------------------------------------

# TPU v4: 275 TFLOP/s (bfloat16) per chip, two TensorCores per chip.
TPU_V4_PEAK_FLOPS_PER_CORE = 275e12 / 2


def tpu_v4_core_hours(flops: float, mfu: float) -> float:
    """TPU-v4 core-hours that `flops` of training take at model FLOP utilisation `mfu`:
    core-hours = FLOPs / (peak FLOP/s per core × MFU × 3600)."""
    if not 0 < mfu <= 1:
        raise ValueError(f'mfu must be in (0, 1], got {mfu!r}')
    return flops / (TPU_V4_PEAK_FLOPS_PER_CORE * mfu * 3600.0)


def sweep_seconds(
    runs: Sequence[tuple[float, int]], flops_per_second: float, seconds_per_run: float
) -> float:
    """Estimated seconds of a sweep: each run's (train-step FLOPs, steps) at a measured
    `flops_per_second`, plus `seconds_per_run` for what does not scale with the steps
    (compilation, the evaluation, checkpoints)."""
    if not flops_per_second > 0:
        raise ValueError(f'flops_per_second must be > 0, got {flops_per_second!r}')
    return sum(flops * steps for flops, steps in runs) / flops_per_second + seconds_per_run * len(
        runs
    )


def measured_steps_per_second(
    config: ml_collections.ConfigDict,
    example_shape: Sequence[int],
    num_classes: int,
    *,
    steps: int = 5,
) -> tuple[float, float]:
    """(train steps per second, seconds of the first step, compilation included) of `config`'s
    train step on random uint8 images on the first device: a probe of a few steps."""
    info = _dataset_info(config, example_shape, num_classes)
    model = create_model(config, info)
    task = task_from_config(config, model=model, info=info, augmenter=None)
    mesh = make_mesh(jax.devices()[:1])
    tx, _ = task.make_optimizer(config, steps_per_epoch=100, total_steps=1000)
    state = init_train_state(task, tx, config.seed, mesh)
    rng = np.random.default_rng(0)
    batch = host_to_global(
        {
            'image': rng.integers(0, 256, (config.batch_size, *example_shape), dtype=np.uint8),
            'label': rng.integers(0, num_classes, config.batch_size).astype(np.int32),
        },
        mesh,
    )
    step = make_train_step(task, tx, mesh, skip_nonfinite=False)
    started = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps / (time.perf_counter() - started), first
