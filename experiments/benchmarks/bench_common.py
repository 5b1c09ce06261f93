"""What the train-step benchmark measures and how its rows become a report (no JAX, no torch).

Shared by `train_step_benchmark.py` (the driver), `jax_rows.py` (the JAX rows) and
`torch_models.py` (the PyTorch twins), so a PyTorch worker process never imports JAX (its peak
memory is its own).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from train.host_cpu import describe, this_cpu

# A worker prints its result as one line starting with this marker; the driver reads it.
ROW_MARKER = 'BENCHMARK_ROW '


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: the project's registered net with explicit fields (the PyTorch
    twin is built from the same values), its batch and the shape of one example."""

    net: str  # name in nets/registry
    fields: dict[str, Any]  # architecture fields, shared with the twin
    batch_size: int
    example_shape: tuple[int, ...]  # (H, W, C) images or (T,) token ids
    kind: str  # 'image' (classify task) or 'tokens' (language_model task)
    jax_fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # JAX-only knobs

    @property
    def num_classes(self) -> int:
        return int(self.fields['num_classes'])


MODELS: dict[str, ModelSpec] = {
    # ResNet-18 with the CIFAR stem (3x3/1 conv, no max pool), 32x32x3, 10 classes.
    'resnet18': ModelSpec(
        'resnet18',
        dict(num_classes=10, stem='cifar', stage_sizes=(2, 2, 2, 2), width=64),
        128,
        (32, 32, 3),
        'image',
    ),
    # ViT-Ti with 4x4 patches on 32x32x3: 64 patches + the class token.
    'vit_ti4': ModelSpec(
        'vit_ti16',
        dict(num_classes=10, patch_size=4, hidden_size=192, depth=12, num_heads=3, mlp_dim=768),
        128,
        (32, 32, 3),
        'image',
        jax_fields=dict(attention_implementation='xla'),
    ),
    # One-layer LSTM language model, byte vocabulary, 128-token windows.
    'lstm_lm': ModelSpec(
        'char_lstm',
        dict(num_classes=256, embed_dim=128, hidden_size=512),
        64,
        (128,),
        'tokens',
        jax_fields=dict(unroll=1),
    ),
    # The GPU benchmark's ImageNet-size pair (experiments/benchmarks/gpu_benchmark.py): a batch
    # that keeps an accelerator busy; far too slow for the 2-core CPU's default run.
    'resnet50': ModelSpec(
        'resnet50',
        dict(
            num_classes=1000,
            stem='imagenet',
            block='bottleneck',
            stage_sizes=(3, 4, 6, 3),
            width=64,
        ),
        256,
        (224, 224, 3),
        'image',
    ),
    'vit_b16': ModelSpec(
        'vit_b16',
        dict(
            num_classes=1000, patch_size=16, hidden_size=768, depth=12, num_heads=12, mlp_dim=3072
        ),
        256,
        (224, 224, 3),
        'image',
        jax_fields=dict(attention_implementation='xla'),
    ),
}

# The same architectures at toy sizes: what the tests run (seconds, not minutes).
TINY_MODELS: dict[str, ModelSpec] = {
    'resnet18': ModelSpec(
        'resnet18',
        dict(num_classes=10, stem='cifar', stage_sizes=(1, 1), width=8),
        8,
        (8, 8, 3),
        'image',
    ),
    'vit_ti4': ModelSpec(
        'vit_ti16',
        dict(num_classes=10, patch_size=4, hidden_size=16, depth=1, num_heads=2, mlp_dim=32),
        8,
        (8, 8, 3),
        'image',
        jax_fields=dict(attention_implementation='xla'),
    ),
    'lstm_lm': ModelSpec(
        'char_lstm',
        dict(num_classes=32, embed_dim=8, hidden_size=16),
        4,
        (8,),
        'tokens',
        jax_fields=dict(unroll=1),
    ),
    'resnet50': ModelSpec(
        'resnet50',
        dict(num_classes=10, stem='imagenet', block='bottleneck', stage_sizes=(1, 1), width=4),
        4,
        (16, 16, 3),
        'image',
    ),
    'vit_b16': ModelSpec(
        'vit_b16',
        dict(num_classes=10, patch_size=8, hidden_size=16, depth=1, num_heads=2, mlp_dim=32),
        4,
        (16, 16, 3),
        'image',
        jax_fields=dict(attention_implementation='xla'),
    ),
}


def model_spec(model: str, size: str = 'full') -> ModelSpec:
    specs = {'full': MODELS, 'tiny': TINY_MODELS}
    if size not in specs:
        raise ValueError(f'unknown size {size!r}; valid: {sorted(specs)}')
    if model not in specs[size]:
        raise ValueError(f'unknown model {model!r}; valid: {sorted(specs[size])}')
    return specs[size][model]


def time_steps(
    run: Callable[[int], Any], sync: Callable[[Any], Any], *, steps: int, warmup: int
) -> tuple[float, list[float], list[float]]:
    """(seconds of the first call, wall seconds of each of `steps` timed calls, CPU seconds of
    this process in each) of `run(i)`, each call waited for with `sync`; `warmup` untimed calls
    after the first (caches, allocator). CPU seconds over wall seconds is the parallelism the
    step got: below the core count when other processes share the machine."""
    start = time.perf_counter()
    sync(run(0))
    first = time.perf_counter() - start
    for i in range(warmup):
        sync(run(1 + i))
    wall, cpu = [], []
    for i in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        sync(run(1 + warmup + i))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return first, wall, cpu


def step_summary(
    batch_size: int, first_call_s: float, times: Sequence[float], cpu_times: Sequence[float] = ()
) -> dict[str, Any]:
    """The timing fields of a row: median step, examples/s from it, spread, CPU seconds."""
    median = statistics.median(times)
    summary = {
        'step_s': median,
        'step_s_min': min(times),
        'step_s_max': max(times),
        'examples_per_s': batch_size / median,
        'first_call_s': first_call_s,
        'timed_steps': len(times),
    }
    if cpu_times:
        summary['cpu_s'] = statistics.median(cpu_times)
    return summary


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    """The machine a report comes from: the CPU (model, the instruction-set flags the runtime's
    choices depend on, cores, caches: train.host_cpu), core count, memory, load."""
    cpu = this_cpu()
    try:
        memory_kib = next(
            int(line.split()[1])
            for line in Path('/proc/meminfo').read_text().splitlines()
            if line.startswith('MemTotal')
        )
    except (OSError, StopIteration):
        memory_kib = 0
    return {
        'cpu_model': cpu.model,
        'cpu_flags': cpu.properties()['flags'],
        'cpu': cpu.properties(),
        'cpu_summary': describe(cpu),
        'cores': os.cpu_count(),
        'memory_gib': memory_kib / 2**20,
        'load_average': ', '.join(f'{x:.1f}' for x in os.getloadavg()),
    }


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def matmul_flops(size: int) -> float:
    """FLOPs of one (size x size) @ (size x size) product (multiply-add = 2)."""
    return 2.0 * size**3


# What the report's notes say: the defaults chosen and what limits JAX (measured while
# developing; the rows of a run are its own evidence).
NOTES = [
    'Rows are medians of --steps timed steps after one untimed call (plus --warmup); each row '
    'runs in its own process. Compare rows only where `cores` is near the core count: lower '
    'means other processes shared the machine, which costs PyTorch (OpenMP barriers) more than '
    'JAX.',
    'The VM changed host between runs: until 2026-11-27 08:21 UTC its float32 matmul peak read '
    "150-200 GFLOP/s in JAX, from 10:00 that day 390-440 (memory ~7 GB/s, PyTorch's matmul "
    '~200). The development figures below are from the older host unless they say otherwise; '
    'ratios measured in one run are comparable, absolute times across hosts are not.',
    # Development A/Bs (2-core AMD EPYC, jax 0.10.2, torch 2.13.0, machine shared at load 4-9,
    # so train-step CPU seconds were compared, interleaved in one process or in alternating
    # processes):
    'XLA flags (train/runtime.py, per model family and dtype, what train.main adds on '
    "CPU-only hosts; each row's flags are in the JSON): convolutions off YNNPACK "
    '(--xla_cpu_experimental_ynn_fusion_type=-individual_convolution) for every model cut the '
    'CPU seconds of a ResNet-18 step by 24% (8.9 -> 6.6-6.8 s), ViT-Ti/4 by 5%, the LSTM and the '
    'quickstart CNN by 0%. Dot products off YNNPACK as well (-individual_dot,-dot) for float32 '
    'ViTs: ViT-Ti/4 step 3.42/3.00 s -> 2.89/2.85 s (alternating A/B, 5 steps each); the same '
    "made the LSTM slower (0.65 -> 0.94 s), ResNet-18 no faster, and bfloat16 slower (Eigen's "
    "bfloat16 products run at half YNNPACK's rate). Element-wise fusions on YNNPACK (+eltwise) "
    'do not compile the LSTM step (jax 0.10.2: "unsupported layout in YNN fusion"); reductions '
    'on it (+reduce) cost the same (0.272 vs 0.274 s, 3 alternating rounds, 2026-11-27).',
    'Convolutions on oneDNN (nets/kernels/onednn_conv.py, the CPU default where it builds; '
    "config.runtime.conv_backend=xla for XLA's): 2-D float32/bfloat16 convolutions and both their "
    'gradients run as XLA FFI calls into oneDNN 3.2 (the onednn-cpu-gomp wheel), the library '
    "PyTorch's CPU convolutions use, with activations in JAX's channels-last layout and the "
    "kernel reordered into oneDNN's blocked layout per call. 2026-11-27, alternating runs, "
    'without the allocator settings below: ResNet-18 step 1.70 -> 1.26-1.30 s float32 (one '
    "device; 1.73 -> 1.29 s on two), 1.66 -> 0.92 s bfloat16 (oneDNN's AVX512-BF16 "
    "convolutions; XLA's CPU convolutions have none), ViT-Ti/4 1.30 -> 1.20 s (its patch "
    'embedding). The 32x32x64 3x3 forward convolution runs at 481 GFLOP/s in oneDNN alone, as in '
    "PyTorch, against XLA's 272. Written first with oneDNN's default library-managed "
    'scratchpad, which primitives share: two convolutions XLA ran at the same time corrupted '
    "each other (a GAN's resumed run differed, a two-discriminator program hung); each call "
    "now takes its calling thread's own scratch buffer (tests/test_onednn_conv.py).",
    'Allocator (train/runtime.py MALLOC_ENV, what train.main restarts with for ResNets and '
    "language models; `+malloc` in the table): XLA's CPU runtime allocates a step's buffers "
    'afresh each step, and glibc maps large ones with mmap and returns them when freed, so the '
    'kernel supplies (and zeroes) new pages every step: ~230,000 page faults per ResNet-18 step. '
    'One arena, no mmap and no trimming keep the memory in the heap: ~1,500 faults per step; '
    'ResNet-18 1.28-1.30 -> 1.10-1.14 s, LSTM 0.27-0.31 -> 0.23 s (alternating runs); ViT-Ti/4 '
    "1.25 -> 1.39-1.50 s with one arena, 1.24 s without the arena limit, so the ViT keeps glibc's "
    'defaults. PyTorch eager gains as much or more under the same settings (the `eager+malloc` '
    'rows, two runs of 2026-11-27: ResNet-18 float32 +27-34%, the LSTM +41-45%): with equal '
    "allocator settings JAX's ResNet-18 is at 0.90-0.96x PyTorch eager and the float32 LSTM at "
    '0.74-0.87x. PyTorch does not ship such settings; this project does.',
    'Micro-batches (train/runtime.py MICRO_BATCH_BY_FAMILY, what train.main does on the '
    'CPU; `(k micro)` in the table): ViT steps run their batch as micro-batches of 16 examples '
    'per device in a scan (config.grad_accum_steps; the same averaged gradient and one update). '
    'The activations of 16 images (0.8 MB per ViT-Ti/4 layer output, 3.2 MB in the MLP) stay '
    'in the caches between the memory-bound layer norms, GELUs and softmaxes, where 128 images '
    'stream through main memory at ~6 GB/s. Interleaved A/B, ViT-Ti/4 batch 128: float32 one '
    'device 3.3-3.7 -> 2.2-2.4 s (micro-batches of 32: 2.3-2.5 s), two devices 2.8 -> 2.2 s, '
    'bfloat16 2.7 -> 1.9 s; PyTorch eager split the same way: 2.7 -> 2.5 s. The LSTM gains '
    'nothing (0.52 -> 0.54 s with two micro-batches); ResNet-18 would, but batch norm would then '
    'see 16- or 32-image statistics, so it keeps whole batches. Convolutions in that scan go '
    "through nets.kernels.conv.Conv: XLA's CPU backend gives gradient convolutions their fast "
    'layout '
    "only outside loops (a 32x32x64 3x3 layer's kernel gradient took 13 s in a scan, 0.13 s "
    'with Conv; ResNet-18 in 4 micro-batches: 168 s -> 3.0 s per step, 3.3 s whole).',
    "ViT attention: 'xla' (jax.nn.dot_product_attention) and the explicit 'plain' softmax cost "
    "the same (5.6 vs 5.7 CPU s; on the CPU both materialise the 65x65 weights); rows use 'xla'.",
    'LSTM unroll: 1 step per loop iteration is fastest (CPU s 1.25; 2: 1.38, 4: 1.58, 8: 2.32), '
    'the project default. Hoisting the input projection x·W_x out of the scan (one '
    '(8192x128)·(128x2048) product before the loop, as cuDNN/oneDNN do) was measured slower: '
    'train step 0.58 -> 0.72 s, fwd+bwd of a bare LSTM 0.45 -> 0.60 s. The projected inputs '
    "(64 MiB, and their gradient) pass through memory several times at this VM's ~6 GB/s "
    '(a 64 MiB read+write copy), while inside the loop x_t and W_x stay in cache; kept inside. '
    'One concatenated [x_t, h]·[W_x; W_h] product per step instead of two was no faster either '
    '(bare LSTM 0.48-0.50 -> 0.51-0.54 s).',
    'LSTM backward (nets/kernels/fused_lstm.py, every RNNLayer LSTM): differentiating the '
    'scanned cell, '
    "JAX adds the 64-deep products x_t^T·dz_t and h_{t-1}^T·dz_t into the kernels' gradients at "
    "every step; the fused layer's backward loop carries only the state gradients and stacks "
    'dz_t, and the weight, bias and input gradients are single products over all 8192 rows '
    'after the loop (the (512x8192)·(8192x2048) one at 188 GFLOP/s), as cuDNN/oneDNN do. '
    'Interleaved, one device: train step 0.69 -> 0.58 s (median); keeping the four gate '
    'activations as separate arrays rather than concatenated gained another 6%; keeping tanh(c) '
    'rather than recomputing it did not pay; unroll 2 the same, 4 slower. On the 2-device mesh '
    'those products contract (time, batch) as two axes: reshaped into one, the sharded batch '
    'merged with time and XLA all-gathered the 64 MiB stacked gradients (0.90 -> 0.75 s; a test '
    'checks the sharded gradient gathers nothing).',
    'Device count: a 2-device mesh took 7% fewer CPU s for ResNet-18, the same for ViT, 30% more '
    'for the LSTM before its fused backward (now about the same as one device); on the faster '
    'host (2026-11-27, 3 alternating rounds) ResNet-18 took 1.92 s per step on one device and '
    '2.07 s on two (with oneDNN convolutions 1.26-1.30 and 1.29 s). The trainer '
    'stays at one device by default (a 2-device all-reduce stalled once in ~10 runs, see '
    'docs/speed.md), --config.runtime.cpu_devices=2 opts in.',
    "bfloat16 in JAX: asked for a bfloat16 result, XLA's CPU backend converts both operands "
    "to float32 (a 2048^3 product at 167 GFLOP/s, below float32's 200); asked to accumulate "
    'in float32 it runs AVX512-BF16 through YNNPACK at 371 GFLOP/s (the bfloat16 peak above). '
    "nets.kernels.mixed_precision (every model's Dense/DenseGeneral and the recurrent cells) "
    'does so '
    'for the forward product and both gradient products: ViT-Ti/4 bfloat16 step 3.44 -> 2.49 s '
    "(1 device; 2.23 s on 2, as fast as PyTorch eager float32), LSTM 0.81 -> 0.56 s. XLA's CPU "
    'convolutions have no bfloat16 path (124-132 GFLOP/s vs 146 float32 on a 32x32x64 3x3 layer, '
    "older host); oneDNN's use AVX512-BF16, in PyTorch and now in JAX (ResNet-18's bfloat16 step "
    "runs at 1.5x JAX's float32 one, 2.1x in PyTorch).",
    "Three bfloat16 pathologies of XLA's CPU backend, found in profiles of the bfloat16 steps "
    '(2026-12-07, the slower host): (1) a bias gradient summed in bfloat16 became a reduce-window '
    'in float32 rounded to bfloat16 after every addition, ~20% of a ViT-Ti/4 step; '
    "nets.kernels.mixed_precision.add_bias sums it in float32; (2) oneDNN's bfloat16 kernel "
    'gradient of the 4x4 patch embedding (3 input channels) took ~17% of the step; a patch '
    'embedding is now one product (nets.kernels.conv.patch_product); (3) a scan stacking '
    'bfloat16 outputs converted the whole stack to float32 and back at every step (O(T^2) '
    'traffic in the LSTM); the fused LSTM stacks their bits as uint16. ViT-Ti/4 bfloat16 step '
    '1.82-1.88 -> 1.52-1.54 s, LSTM bfloat16 0.33-0.50 -> 0.30-0.42 s (alternating runs of the '
    'commits before and after).',
    'torch.compile breaks the graph at nn.LSTM (the LSTM compile row runs eagerly) and takes '
    '35-50 s per model on 2 cores. PyTorch images are channels-last (faster than NCHW for '
    'ResNet-18 here: 9.1 vs 10.4 s per step, interleaved, under load).',
    "What limits JAX. ResNet-18: its convolutions are now oneDNN's, as in PyTorch "
    '(experiments/benchmarks/conv_benchmark.py, docs/conv_benchmark.md, times each one in JAX '
    "with XLA's kernels, with oneDNN's, and in PyTorch); the rest of the step (batch norm, "
    "ReLU, the update) is XLA's fusions. Before oneDNN, XLA's CPU convolutions took 1.2-1.3 "
    "s of a ~1.65 s step against PyTorch's 0.91-0.94 s: its 32x32x64 layers at ~0.6x oneDNN "
    '(forward 279 vs 487 GFLOP/s; the kernel gradient first transposes input and gradient into '
    "the (C, H, W, N) and (H, W, N, C) layouts XLA's kernel-gradient convolution wants), the "
    "deeper ones at 0.7-1.1x, YNNPACK's slower still. That XLA path, which still serves "
    'other convolutions and config.runtime.conv_backend=xla, got three fixes in '
    'nets/kernels/conv.py: strided '
    "layers' input gradients as stride-1 convolutions of the input phases (XLA ran them over "
    'zero-dilated gradients at 68 GFLOP/s), 1x1 kernel gradients as one product (24 GFLOP/s as '
    "convolutions): step 1.98 -> 1.92 s; large-activation layers' gradients in cache-sized "
    'chunks of 16 examples strided over the batch: 1.89 -> 1.72 s on one device, 2.04 -> 1.78 s '
    'on two. Tried there and measured no better: the kernel gradient as a 3-D convolution that '
    'reads the gradient untransposed (52 -> 267 ms); on the older host, materialising the '
    'gradient once (3.4 -> 3.5 s) or the activations; a batch norm with a one-map custom '
    'backward (3.395 vs 3.405 s); weight gradients as im2col or 9 shifted products (15-95 '
    "GFLOP/s against XLA's 96-172); oneDNN flags of XLA (not built into this jaxlib); "
    '--xla_cpu_use_fusion_emitters=false (3.18 -> 3.41 s) and the concurrency-optimised '
    'scheduler (3.18 -> 3.33 s; the LSTM on the faster host 0.269 vs 0.270 s, 5 rounds). '
    'LSTM: PyTorch '
    "runs oneDNN's fused LSTM; XLA runs each time step as ~10 small kernels in a while loop: "
    'the per-step products at 180-190 GFLOP/s (near the peak), then the element-wise gate '
    'kernels, the stacking of what the backward pass keeps, and ~0.4 ms per step of gaps '
    "between kernels (a profile's kernels add up to 0.45 of a 0.54 s step). ViT-Ti/4 float32: "
    'its 192-wide products run at '
    '~110-170 GFLOP/s, the layer norms, exact GELU and softmax are memory-bound at ~6 GB/s. '
    'A quiet-moment check: one-device steps keep both XLA threads ~93-95% busy.',
]


# --- From measured rows to the report ----------------------------------------------------------


def add_ratios(
    rows: list[dict[str, Any]], peaks: dict[str, float], *, peak_of_row_dtype: bool = False
) -> list[dict[str, Any]]:
    """Adds to every train-step row `model_flops` and `mfu` = model FLOPs / step time / float32
    matmul peak (with `peak_of_row_dtype`, the peak of the row's own dtype: a GPU's bfloat16
    tensor cores are the roofline of its bfloat16 rows), and to every JAX row `vs_torch_eager`,
    `vs_torch_compile` (examples/s over the PyTorch row of the same model and dtype;
    `vs_torch_eager_same_malloc`: over PyTorch eager
    under the JAX row's allocator settings) and `vs_torch_eager_float32` (the issue's
    target: >= 1). Model FLOPs are XLA's count of the model's JAX float32 step (any dtype's
    when no float32 row counted): one count per model, whatever dtype, mesh or framework runs
    it, so MFUs compare. Rows that failed keep their error and get nothing."""
    flops: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r.get('dtype') != 'float32'):  # float32 first
        if row.get('framework') == 'jax' and row.get('step_flops'):
            flops.setdefault(row['model'], row['step_flops'])
    torch_speed = {
        (row['model'], row['dtype'], row['mode']): row['examples_per_s']
        for row in rows
        if row.get('framework') == 'torch' and 'examples_per_s' in row
    }
    for row in rows:
        if 'examples_per_s' not in row:
            continue
        peak = peaks.get(row['dtype'] if peak_of_row_dtype else 'float32')
        row['model_flops'] = flops.get(row['model'])
        row['mfu'] = (
            row['model_flops'] / row['step_s'] / peak if row['model_flops'] and peak else None
        )
        if row['framework'] != 'jax':
            continue
        for name, key in (
            ('vs_torch_eager', (row['model'], row['dtype'], 'eager')),
            ('vs_torch_eager_same_malloc', (row['model'], row['dtype'], 'eager+malloc')),
            ('vs_torch_compile', (row['model'], row['dtype'], 'compile')),
            ('vs_torch_eager_float32', (row['model'], 'float32', 'eager')),
        ):
            other = torch_speed.get(key)
            row[name] = row['examples_per_s'] / other if other else None
    return rows


def reach(rows: list[dict[str, Any]], vit_model: str = 'vit_ti4') -> dict[str, Any]:
    """The issue's two targets, judged on the measured rows: every JAX row at least as fast as
    PyTorch eager float32 on its model, and the best float32 JAX ViT row at >= 50% of the
    float32 matmul peak."""
    jax_rows = [r for r in rows if r.get('framework') == 'jax' and 'examples_per_s' in r]
    compared = [r for r in jax_rows if r.get('vs_torch_eager_float32') is not None]
    slower = [
        f'{r["model"]} {r["dtype"]} {r["devices"]}dev: {r["vs_torch_eager_float32"]:.2f}x'
        for r in compared
        if r['vs_torch_eager_float32'] < 1.0
    ]
    vit_mfu = [
        r['mfu']
        for r in jax_rows
        if r['model'] == vit_model and r['dtype'] == 'float32' and r.get('mfu')
    ]
    best_vit = max(vit_mfu) if vit_mfu else None
    return {
        'all_rows_at_least_torch_eager_float32': bool(compared) and not slower,
        'rows_slower_than_torch_eager_float32': slower,
        'best_vit_mfu': best_vit,
        'vit_at_least_half_of_peak': best_vit is not None and best_vit >= 0.5,
    }


def _fmt(value: Any, spec: str = '.2f', suffix: str = '') -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '–'
    return f'{value:{spec}}{suffix}'


def _kernels(row: dict[str, Any]) -> str:
    """A JAX row's convolution kernels (+ oneDNN products where it ran them) and the YNNPACK
    fusions its XLA flags turn off."""
    if row.get('framework') != 'jax':
        return ''
    fusions = [f.split('=', 1)[1] for f in row.get('xla_flags', '').split() if 'ynn_fusion' in f]
    products = ' +matmul' if row.get('matmul_backend') == 'onednn' else ''
    return f'{row.get("conv_backend", "–")}{products} / {",".join(fusions) or "XLA defaults"}'


def _choice_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """'JAX choices': per model and dtype, each CPU choice of its JAX rows with the reason."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        if row.get('framework') == 'jax' and row.get('choices'):
            seen.setdefault((row['model'], row['dtype']), row['choices'])
    if not seen:
        return []
    lines = ['', '## JAX choices (train/runtime.py, for this CPU)', '']
    for (model, dtype), choices in seen.items():
        reasons = '; '.join(f'{name}: {why}' for name, why in choices.items())
        lines.append(f'- {model} {dtype}: {reasons}')
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """docs/benchmarks.md: the setting, the peaks, one table row per measured train step, the
    input pipeline, whether the targets were reached and the notes."""
    meta = report['meta']
    lines = [
        "# Train-step benchmarks: JAX against PyTorch and the machine's peak",
        '',
        f'Generated by `{meta["command"]}` on {meta["date"]}.',
        '',
        f'Machine: {meta["cpu_model"]}, {meta["cores"]} cores, {meta["memory_gib"]:.0f} GiB; '
        f'jax {meta["jax"]}, torch {meta.get("torch") or "not installed"}, '
        f'python {meta["python"]}. Load average at the start: {meta["load_average"]}.',
        '',
        f'CPU: {meta.get("cpu_summary") or meta["cpu_model"]}. JAX rows ran with the choices '
        f'train/runtime.py makes for this CPU ({meta.get("cpu_class") or "class not recorded"}); '
        "--xla_flags, --cpu_malloc=false and --micro_batches=false override them; each row's "
        'kernels, flags and micro-batches are in the table, the reasons under "JAX choices".',
        '',
        '## Peak (large matmul in JAX; the roofline MFU is measured against)',
        '',
        '| dtype | size | GFLOP/s | PyTorch GFLOP/s | GFLOP/s again at the end |',
        '|---|---|---|---|---|',
    ]
    at_end = {row['dtype']: row.get('gflops') for row in report.get('peak_at_end', [])}
    for row in report['peak']:
        lines.append(
            f'| {row["dtype"]} | {row["size"]} | {_fmt(row.get("gflops"), ".1f")} | '
            f'{_fmt(row.get("torch_gflops"), ".1f")} | '
            f'{_fmt(at_end.get(row["dtype"]), ".1f")} |'
        )
    lines += [
        '',
        '## Train steps (forward + backward + SGD-momentum update, synthetic batches)',
        '',
        "examples/s from the median step; MFU = XLA FLOPs of the model's JAX float32 step / "
        'step time / float32 matmul peak (the higher of its two measurements), for every row '
        '(PyTorch and bfloat16 rows too, so '
        'over 100% means faster than the float32 roofline); ratios are examples/s of the '
        'JAX row over the PyTorch row of the same model and dtype (`vs eager f32`: over '
        'PyTorch eager float32, the target); cores = CPU seconds / wall seconds of a step '
        '(below the core count: the step waited, or other processes took the cores); '
        '`(k micro)`: the step ran its batch as k micro-batches, as the trainer does on '
        'the CPU for that family (train/runtime.py); `+malloc`: JAX rows of families '
        'the trainer gives glibc allocator settings (train/runtime.py MALLOC_ENV) ran '
        'with them, and `eager+malloc` is PyTorch eager under the same settings (`vs '
        "eager+malloc`: the JAX row over it); `conv / fusions`: the JAX row's convolution "
        "kernels (`+matmul`: its large bfloat16 products on oneDNN's too) and the YNNPACK "
        'fusions its XLA flags turn off.',
        '',
        '| model | dtype | framework | devices/mode | params | examples/s | step ms | '
        'cores | MFU | vs eager | vs compile | vs eager f32 | vs eager+malloc | compile s '
        '| peak RSS MiB | conv / fusions |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in report['rows']:
        where = f'{row["devices"]} dev' if row['framework'] == 'jax' else row.get('mode', '')
        if row['framework'] == 'jax' and row.get('malloc_env'):
            where += ' +malloc'
        if row.get('grad_accum_steps', 1) > 1:
            where += f' ({row["grad_accum_steps"]} micro)'
        if 'error' in row:
            lines.append(
                f'| {row["model"]} | {row["dtype"]} | {row["framework"]} | {where} | | '
                f'failed: {row["error"][:80]} | | | | | | | | | | |'
            )
            continue
        lines.append(
            f'| {row["model"]} | {row["dtype"]} | {row["framework"]} | {where} | '
            f'{row["params"]:,} | {row["examples_per_s"]:.1f} | {row["step_s"] * 1e3:.0f} | '
            f'{_fmt(row["cpu_s"] / row["step_s"] if row.get("cpu_s") else None, ".1f")} | '
            f'{_fmt(row.get("mfu"), ".1%")} | {_fmt(row.get("vs_torch_eager"), ".2f", "x")} | '
            f'{_fmt(row.get("vs_torch_compile"), ".2f", "x")} | '
            f'{_fmt(row.get("vs_torch_eager_float32"), ".2f", "x")} | '
            f'{_fmt(row.get("vs_torch_eager_same_malloc"), ".2f", "x")} | '
            f'{_fmt(row.get("compile_s"), ".1f")} | {_fmt(row.get("peak_rss_mib"), ".0f")} | '
            f'{_kernels(row)} |'
        )
    lines += _choice_lines(report['rows'])
    if report.get('pipeline'):
        lines += [
            '',
            '## Input pipeline (data.train_loader over memory + on-device augmentation)',
            '',
            '| stage | examples/s | train step consumes (examples/s) | headroom |',
            '|---|---|---|---|',
        ]
        for row in report['pipeline']:
            lines.append(
                f'| {row["stage"]} | {row["examples_per_s"]:.0f} | '
                f'{_fmt(row.get("consumed_per_s"), ".1f")} | '
                f'{_fmt(row.get("headroom"), ".1f", "x")} |'
            )
    target = report.get('reach', {})
    lines += [
        '',
        '## Targets',
        '',
        '- Every JAX row at least as fast as PyTorch eager float32: '
        + ('reached' if target.get('all_rows_at_least_torch_eager_float32') else 'NOT reached')
        + (
            f' (slower: {"; ".join(target["rows_slower_than_torch_eager_float32"])})'
            if target.get('rows_slower_than_torch_eager_float32')
            else ''
        ),
        '- ViT (float32) at >= 50% of the float32 matmul peak: '
        f'{"reached" if target.get("vit_at_least_half_of_peak") else "NOT reached"} '
        f'(best ViT MFU {_fmt(target.get("best_vit_mfu"), ".1%")})',
        '',
    ]
    if report.get('notes'):
        lines += ['## Notes', ''] + [f'- {note}' for note in report['notes']] + ['']
    return '\n'.join(lines)


def write_report(report: dict[str, Any], table: str, out: str | None) -> None:
    """Prints the markdown `table`; writes `report` as JSON to `out` and the table beside it
    (suffix .md)."""
    print(table)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        path.with_suffix('.md').write_text(table)
        print(f'wrote {path} and {path.with_suffix(".md")}')
