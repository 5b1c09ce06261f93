"""The JAX side of the benchmarks, one measured row per call: the project's compiled train step
(`jax_train_step_row`, with XLA's FLOP count of the step from `model_step_flops`), the matmul
peak (`jax_peak_row`) and the input pipeline (`pipeline_rows`), on synthetic batches shaped by a
`bench_common.ModelSpec`.

Run in the worker processes of train_step_benchmark.py (one row each) and by gpu_benchmark.py
and conv_benchmark.py. JAX and the project's packages are imported inside the functions: a
PyTorch worker imports the driver, and so this module, but must never start JAX (its peak memory
is its own).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.benchmarks.bench_common import (
    ModelSpec,
    matmul_flops,
    peak_rss_mib,
    step_summary,
    time_steps,
)

# The augmentation the pipeline rows time: a 4-pixel random translation and a horizontal flip.
CROP_FLIP = ({'op': 'translate', 'max_pixels': 4.0, 'fill_mode': 'constant'}, {'op': 'flip_lr'})


def _dataset_info(spec: ModelSpec) -> Any:
    import data

    if spec.kind == 'image':
        channels = spec.example_shape[-1]
        return data.DatasetInfo(
            name='synthetic',
            num_classes=spec.num_classes,
            class_names=tuple(map(str, range(spec.num_classes))),
            example_shape=spec.example_shape,
            image_dtype='uint8',
            splits={},
            mean=(0.5,) * channels,
            std=(0.25,) * channels,
        )
    from data.tokenizers import SPECIAL_TOKENS

    # Byte-like vocabulary: the specials, then one character per remaining id.
    tokens = tuple(SPECIAL_TOKENS) + tuple(
        chr(0x100 + i) for i in range(spec.num_classes - len(SPECIAL_TOKENS))
    )
    return data.DatasetInfo(
        name='synthetic',
        num_classes=spec.num_classes,
        class_names=tokens,
        example_shape=spec.example_shape,
        image_dtype='int32',
        splits={},
        mean=(),
        std=(),
    )


def synthetic_batch(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch as the data pipeline gives it: uint8 images + labels, or token windows."""
    rng = np.random.default_rng(seed)
    shape = (spec.batch_size, *spec.example_shape)
    if spec.kind == 'image':
        return {
            'image': rng.integers(0, 256, shape, dtype=np.uint8),
            'label': rng.integers(0, spec.num_classes, spec.batch_size, dtype=np.int32),
        }
    return {
        'inputs': rng.integers(4, spec.num_classes, shape, dtype=np.int32),
        'targets': rng.integers(4, spec.num_classes, shape, dtype=np.int32),
    }


def _task_and_optimizer(spec: ModelSpec, dtype: str, accumulate: int) -> tuple[Any, Any]:
    """The project's task for `spec` in compute `dtype` and the benchmark's optimiser (the
    default config's SGD momentum 0.9, constant schedule), accumulating over `accumulate`
    micro-batches."""
    import jax.numpy as jnp

    import nets
    from train.config import default_config
    from train.optim import build_optimizer
    from train.tasks import create_task

    model = nets.create(spec.net, **spec.fields, **spec.jax_fields, dtype=jnp.dtype(dtype))
    task_name = 'classify' if spec.kind == 'image' else 'language_model'
    task = create_task(task_name, model=model, info=_dataset_info(spec))
    config = default_config()
    config.schedule.name = 'constant'
    tx = build_optimizer(
        config.optimizer,
        config.schedule,
        steps_per_epoch=100,
        total_steps=1000,
        accumulate_steps=accumulate,
    )[0]
    return task, tx


def model_step_flops(spec: ModelSpec, dtype: str, *, compiled: Any = None, seed: int = 0) -> Any:
    """XLA's count (nets.tools.flops.FlopCount) of `spec`'s whole-batch train step on one device,
    always by the CPU compiler (present in every jaxlib; abstract arguments, nothing runs): one
    count of the model's FLOPs whatever backend times the step. A GPU's cost analysis leaves out
    what it hands to cuDNN (ResNet-50's convolutions: its count was 0.1 of the CPU's on an
    H100). `compiled`: the step already compiled for one CPU device (saves compiling it)."""
    import jax

    from nets.tools.flops import loop_corrected_flops
    from train.sharding import make_mesh
    from train.steps import init_train_state, make_train_step

    mesh = make_mesh(jax.devices('cpu')[:1])
    task, tx = _task_and_optimizer(spec, dtype, 1)
    state = jax.eval_shape(lambda: init_train_state(task, tx, seed, mesh))
    batch = {
        name: jax.ShapeDtypeStruct(value.shape, value.dtype)
        for name, value in synthetic_batch(spec, seed).items()
    }
    step = make_train_step(task, tx, mesh, skip_nonfinite=False)
    return loop_corrected_flops(step, state, batch, compiled=compiled)


def jax_train_step_row(
    spec: ModelSpec,
    *,
    dtype: str,
    devices: int,
    steps: int,
    warmup: int,
    count_flops: bool = True,
    micro_batches: bool = True,
    steps_per_call: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Times the project's compiled train step of `spec` on a mesh of the first `devices` JAX
    devices; a benchmark row. With `micro_batches` the step splits its batch as the trainer does
    on the CPU (train.runtime.cpu_grad_accum_steps; `grad_accum_steps` in the row; whole
    batches on other backends). Each timed call runs `steps_per_call` steps before waiting for
    the device (so an accelerator's queue stays full); step times are per step.
    `step_flops`: `model_step_flops`; `device_memory_mib`: the compiled step's arguments,
    outputs and temporaries (XLA's memory analysis)."""
    import jax

    import nets
    from nets.kernels import onednn_conv
    from train.runtime import cpu_grad_accum_steps
    from train.sharding import host_to_global, make_mesh
    from train.steps import init_train_state, make_train_step

    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f'{devices} devices asked for, {len(available)} available (set '
            f'XLA_FLAGS=--xla_force_host_platform_device_count={devices})'
        )
    mesh = make_mesh(available[:devices])
    on_cpu = jax.default_backend() == 'cpu'
    accumulate = (
        cpu_grad_accum_steps(nets.model_family(spec.net), spec.batch_size, devices)
        if micro_batches and on_cpu
        else 1
    )
    task, tx = _task_and_optimizer(spec, dtype, accumulate)
    state = init_train_state(task, tx, seed, mesh)
    batch = host_to_global(synthetic_batch(spec, seed), mesh)
    step = make_train_step(task, tx, mesh, skip_nonfinite=False, grad_accum_steps=accumulate)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    memory = compiled.memory_analysis()
    holder = [state]

    def run(_: int) -> Any:
        for _ in range(steps_per_call):
            holder[0], metrics = compiled(holder[0], batch)
        return metrics['loss']

    first, times, cpu = time_steps(run, jax.block_until_ready, steps=steps, warmup=warmup)
    times, cpu = [t / steps_per_call for t in times], [t / steps_per_call for t in cpu]
    row = {
        'framework': 'jax',
        'devices': devices,
        'dtype': dtype,
        'params': params,
        'compile_s': compile_s,
        'jax_fields': dict(spec.jax_fields),
        'grad_accum_steps': accumulate,
        'backend': jax.default_backend(),
        'device_kind': available[0].device_kind,
        'steps_per_call': steps_per_call,
        **step_summary(spec.batch_size, first, times, cpu),
    }
    if memory is not None:
        row['device_memory_mib'] = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        ) / 2**20
    if count_flops:
        start = time.perf_counter()
        # Micro-batches add no model FLOPs: counted on the whole-batch step, the timed
        # executable itself when it is that step on one CPU device.
        # (Not where it runs oneDNN's convolutions: XLA counts those custom calls as free.)
        reuse = (
            compiled
            if on_cpu and accumulate == 1 and devices == 1 and not onednn_conv.available()
            else None
        )
        count = model_step_flops(spec, dtype, compiled=reuse, seed=seed)
        row.update(
            step_flops=count.total,
            uncorrected_loops=count.uncorrected_loops,
            flop_count_s=time.perf_counter() - start,
        )
    row['peak_rss_mib'] = peak_rss_mib()
    return row


def jax_peak_row(
    size: int, dtypes: Sequence[str], repeats: int = 5, products_per_call: int = 1
) -> list[dict[str, Any]]:
    """Achieved FLOP/s of a (size x size) @ (size x size) product per dtype: the median of
    `repeats` calls (the roofline MFU is measured against), each of `products_per_call`
    independent products (an accelerator's queue stays full; times are per product)."""
    import jax

    from nets.kernels.mixed_precision import matmul

    rows = []
    for dtype in dtypes:
        key_a, key_b = jax.random.split(jax.random.key(0))
        a = jax.random.normal(key_a, (size, size), dtype)
        others = jax.random.normal(key_b, (products_per_call, size, size), dtype)
        # The product the models run (nets.kernels.mixed_precision): bfloat16 accumulates in
        # float32.
        # Every result is returned: XLA can neither drop nor shrink one.
        products = jax.jit(lambda a, others: [matmul(a, b) for b in others])
        _, times, _ = time_steps(
            lambda _, products=products, a=a, others=others: products(a, others),
            jax.block_until_ready,
            steps=repeats,
            warmup=1,
        )
        summary = step_summary(1, 0.0, [t / products_per_call for t in times])
        rows.append(
            {
                'dtype': dtype,
                'size': size,
                'seconds': summary['step_s'],
                'gflops': matmul_flops(size) / summary['step_s'] / 1e9,
                'gflops_best': matmul_flops(size) / summary['step_s_min'] / 1e9,
            }
        )
    return rows


def pipeline_rows(spec: ModelSpec, *, steps: int, examples: int = 4096) -> list[dict[str, Any]]:
    """examples/s of data.train_loader over an in-memory split of random uint8 images, of the
    jitted crop + flip (data.augment) on one device, and of both with the host -> device copy."""
    import jax

    import data
    from data import augment

    rng = np.random.default_rng(0)
    source = data.InMemorySource(
        image=rng.integers(0, 256, (examples, *spec.example_shape), dtype=np.uint8),
        label=rng.integers(0, spec.num_classes, examples, dtype=np.int32),
    )
    batches = iter(data.train_loader(source, global_batch_size=spec.batch_size, seed=0))
    augmenter = augment.make_augmenter(CROP_FLIP, num_classes=spec.num_classes)
    key = jax.random.key(0)
    crop_flip = jax.jit(
        lambda i, images, labels: augmenter(
            jax.random.fold_in(key, i), images.astype('float32') / 255.0, labels
        )
    )
    host = next(batches)
    on_device = jax.device_put(host)
    loader = time_steps(lambda _: next(batches), lambda b: b, steps=steps, warmup=1)[1]
    augment_only = time_steps(
        lambda i: crop_flip(i, on_device['image'], on_device['label']),
        jax.block_until_ready,
        steps=steps,
        warmup=1,
    )[1]

    def both(i: int) -> Any:
        batch = jax.device_put(next(batches))
        return crop_flip(i, batch['image'], batch['label'])

    together = time_steps(both, jax.block_until_ready, steps=steps, warmup=1)[1]
    return [
        {'stage': stage, **step_summary(spec.batch_size, 0.0, times)}
        for stage, times in (
            ('grain loader (host, in memory)', loader),
            ('crop + flip (jitted, on device)', augment_only),
            ('loader + device_put + crop + flip', together),
        )
    ]
