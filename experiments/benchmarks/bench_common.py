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
import re
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from train.host_cpu import describe, this_cpu

# A worker prints its result as one line starting with this marker; the driver reads it.
ROW_MARKER = 'BENCHMARK_ROW '
FIRST_STEP_MARKER = 'BENCHMARK_FIRST_STEP '  # + time.time() as a PyTorch row's first step begins


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


def announce_first_step() -> None:
    """Prints FIRST_STEP_MARKER and the time, as a worker's first step begins."""
    print(f'{FIRST_STEP_MARKER}{time.time()}', flush=True)


def stopped_row(stdout: str | bytes | None, timeout: float, batch_size: int) -> dict[str, Any]:
    """The row of a worker stopped at `timeout`: an error, and where it had begun its first step
    (FIRST_STEP_MARKER on its `stdout`) and `batch_size` is given, the bound that gives: a step
    slower than the time since."""
    row: dict[str, Any] = {'error': f'timed out after {timeout:.0f} s'}
    text = stdout.decode(errors='replace') if isinstance(stdout, bytes) else stdout or ''
    began = [line for line in text.splitlines() if line.startswith(FIRST_STEP_MARKER)]
    if batch_size and began:
        seconds = time.time() - float(began[-1][len(FIRST_STEP_MARKER) :])
        row.update(step_s_at_least=seconds, examples_per_s_at_most=batch_size / seconds)
    return row


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


# The report's notes (the defaults chosen and what limits JAX, measured while developing; the
# rows of a run are its own evidence): one paragraph each in train_step_notes.md.
NOTES_FILE = Path(__file__).with_name('train_step_notes.md')


def report_notes(path: Path = NOTES_FILE) -> list[str]:
    """The notes of `path`: its paragraphs (blank-line separated, an HTML comment skipped), each
    joined into one line."""
    text = re.sub(r'<!--.*?-->', '', path.read_text(), flags=re.DOTALL)
    return [' '.join(p.split()) for p in re.split(r'\n\s*\n', text) if p.strip()]


NOTES = report_notes()


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
    it, so MFUs compare. Rows that failed keep their error and get nothing; where the PyTorch
    row was stopped before one step ended (`examples_per_s_at_most`), the JAX row gets the bound
    (`vs_torch_eager_at_least`, ...) instead."""
    flops: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r.get('dtype') != 'float32'):  # float32 first
        if row.get('framework') == 'jax' and row.get('step_flops'):
            flops.setdefault(row['model'], row['step_flops'])
    torch_speed = {
        (row['model'], row['dtype'], row['mode']): row['examples_per_s']
        for row in rows
        if row.get('framework') == 'torch' and 'examples_per_s' in row
    }
    # A PyTorch row stopped before its first step ended: its speed is at most this.
    torch_at_most = {
        (row['model'], row['dtype'], row['mode']): row['examples_per_s_at_most']
        for row in rows
        if row.get('framework') == 'torch' and row.get('examples_per_s_at_most')
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
            if not other and torch_at_most.get(key):
                row[f'{name}_at_least'] = row['examples_per_s'] / torch_at_most[key]
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


def _smaller_side(row: dict[str, Any]) -> bool:
    return row.get('torch_size', row['size']) != row['size']


def _ratio(row: dict[str, Any], name: str) -> str:
    """A ratio cell: the ratio, or '> N x' where PyTorch's row gave only a bound."""
    if row.get(name) is None and row.get(f'{name}_at_least'):
        return f'> {row[f"{name}_at_least"]:.0f}x'
    return _fmt(row.get(name), '.2f', 'x')


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
            f'{_fmt(row.get("torch_gflops"), ".1f")}'
            + (f' (at {row["torch_size"]})' if _smaller_side(row) else '')
            + ' | '
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
            at_most = row.get('examples_per_s_at_most')
            lines.append(
                f'| {row["model"]} | {row["dtype"]} | {row["framework"]} | {where} | | '
                + (
                    f'< {at_most:.2g} (no step ended in {row["step_s_at_least"]:.0f} s) | '
                    f'> {row["step_s_at_least"] * 1e3:.0f} | | | | | | | | | |'
                    if at_most
                    else f'failed: {row["error"][:80]} | | | | | | | | | | |'
                )
            )
            continue
        lines.append(
            f'| {row["model"]} | {row["dtype"]} | {row["framework"]} | {where} | '
            f'{row["params"]:,} | {row["examples_per_s"]:.1f} | {row["step_s"] * 1e3:.0f} | '
            f'{_fmt(row["cpu_s"] / row["step_s"] if row.get("cpu_s") else None, ".1f")} | '
            f'{_fmt(row.get("mfu"), ".1%")} | {_ratio(row, "vs_torch_eager")} | '
            f'{_ratio(row, "vs_torch_compile")} | '
            f'{_ratio(row, "vs_torch_eager_float32")} | '
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
