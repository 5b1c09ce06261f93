"""Train-step speed on one GPU: the project's JAX steps against PyTorch on the same card and
against the card's measured matmul peak.

Command (a machine with one CUDA GPU, jax[cuda] and torch; writes the JSON and a markdown table
beside it):
  python -m experiments.benchmarks.gpu_benchmark --out=docs/benchmarks_gpu.json
      [--models=vit_b16,resnet50,resnet18,vit_ti4,lstm_lm] [--dtypes=bfloat16,float32]
      [--big_dtypes=bfloat16] [--torch=eager,compile] [--budget_s=150]
Measures, in two worker processes (JAX, then PyTorch: neither shares the card's memory or
clocks with the other):
  * peak: an 8192^3 matmul, float32 (TF32 tensor cores: JAX's default precision on the GPU) and
    bfloat16, in JAX and PyTorch (random operands; the roofline of each dtype's rows);
  * the project's train step (the same code as jax_rows.jax_train_step_row: train.tasks
    + SGD momentum 0.9 + train.steps on a one-device mesh, state donated, whole batches) and its
    PyTorch twin (experiments/benchmarks/torch_models.py, eager and torch.compile, TF32 float32 /
    bfloat16 autocast) for the CPU benchmark's three models (ResNet-18 CIFAR batch 128, ViT-Ti/4
    batch 128, LSTM LM batch 64) in --dtypes and the ImageNet-size pair that fills a card
    (ResNet-50 and ViT-B/16 at 224 px, batch 256) in --big_dtypes. Each timed call runs several
    steps before waiting for the card; rows are medians of --steps such calls, per step.
  * MFU = XLA's FLOPs of the model's JAX step / step time / the peak of the row's dtype.
Rows run in priority order (the big bfloat16 pair first, torch.compile last) and a worker stops
starting rows after --budget_s, so a short lease still returns the headline rows.

Hardware and time: one NVIDIA H100 80GB (jax 0.11.2 with the CUDA 13 plugin, torch 2.11),
about 6-7 minutes with the defaults; the project's other packages carried as wheels (WORKSPACE.md,
GPU runbook). Expected: see docs/benchmarks_gpu.md (the run that wrote it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from experiments.benchmarks.bench_common import (
    ROW_MARKER,
    add_ratios,
    machine,
    model_spec,
    version,
    write_report,
)
from train import cli

BIG_MODELS = ('vit_b16', 'resnet50')  # ImageNet size: measured in --big_dtypes only
PEAK_SIZE = 8192
PRODUCTS_PER_CALL = 10  # matmuls per timed call of the peak (host waits amortised)


def define_flags() -> None:
    flags.DEFINE_string(
        'out',
        'docs/benchmarks_gpu.json',
        'JSON results; the markdown table goes beside it with the suffix .md (empty: print only).',
    )
    flags.DEFINE_list(
        'models',
        ['vit_b16', 'resnet50', 'resnet18', 'vit_ti4', 'lstm_lm'],
        'Models, in the order they run.',
    )
    flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Compute dtypes of the small models.')
    flags.DEFINE_list('big_dtypes', ['bfloat16'], f'Compute dtypes of {", ".join(BIG_MODELS)}.')
    flags.DEFINE_list('torch', ['eager', 'compile'], 'PyTorch modes (empty: no PyTorch).')
    flags.DEFINE_integer('steps', 5, 'Timed calls per row (median).', lower_bound=1)
    flags.DEFINE_integer('steps_per_call', 10, 'Train steps per timed call.', lower_bound=1)
    flags.DEFINE_float('budget_s', 150.0, 'Seconds after which a worker starts no new row.')
    flags.DEFINE_enum(
        'attention',
        'auto',
        ['auto', 'xla', 'plain', 'cudnn'],
        "The JAX ViTs' attention (nets.layers.attention; 'auto', the project's default, "
        'is cuDNN flash attention on a GPU in bfloat16, the einsum softmax in '
        'float32).',
    )
    flags.DEFINE_enum(
        'size',
        'full',
        ['full', 'tiny'],
        "'tiny': toy models (checks the plumbing anywhere, with --torch_device=cpu).",
    )
    flags.DEFINE_enum('torch_device', 'cuda', ['cuda', 'cpu'], 'Where the PyTorch rows run.')
    flags.DEFINE_list(
        'from_rows',
        None,
        'Only write the report of the results runs left in '
        'these .rows.jsonl files (a run stopped before its report, or runs that '
        'measured the rows an earlier one skipped, on the same machine).',
    )
    flags.DEFINE_bool(
        'recount_flops',
        False,
        "With --from_rows: count the models' FLOPs "
        "again with XLA's CPU compiler (rows of runs that counted on the GPU).",
    )
    flags.DEFINE_string('worker', None, 'Internal: the plan of one worker, as JSON.')


def plan_rows(
    models: Sequence[str],
    dtypes: Sequence[str],
    big_dtypes: Sequence[str],
    torch_modes: Sequence[str],
) -> dict[str, list[dict[str, Any]]]:
    """The rows of each framework's worker in the order they run: every (model, dtype) pair,
    bfloat16 first; torch.compile rows after all eager ones (their compile is the slowest)."""
    pairs = []
    for model in models:
        model_spec(model)  # unknown names fail before anything runs
        for dtype in big_dtypes if model in BIG_MODELS else dtypes:
            if dtype not in ('float32', 'bfloat16'):
                raise ValueError(f"unknown dtype {dtype!r}; valid: ['bfloat16', 'float32']")
            pairs.append(dict(model=model, dtype=dtype))
    pairs.sort(key=lambda p: p['dtype'] != 'bfloat16')  # stable: model order kept
    for mode in torch_modes:
        if mode not in ('eager', 'compile'):
            raise ValueError(f"unknown torch mode {mode!r}; valid: ['compile', 'eager']")
    torch_rows = [
        dict(pair, mode=mode)
        for mode in sorted(torch_modes, key=['eager', 'compile'].index)
        for pair in pairs
    ]
    return {'jax': pairs, 'torch': torch_rows}


# --- Workers (one process per framework) -------------------------------------------------------


def peak_rows(framework: str, size: int = PEAK_SIZE, device: str = 'cuda') -> list[dict[str, Any]]:
    """`framework`'s matmul TFLOP/s per dtype: jax_rows.jax_peak_row (the product
    the models run) or torch_models.torch_matmul_gflops, PRODUCTS_PER_CALL products per call."""
    dtypes = ('float32', 'bfloat16')
    if framework == 'jax':
        from experiments.benchmarks.jax_rows import jax_peak_row

        gflops = {
            row['dtype']: row['gflops']
            for row in jax_peak_row(size, dtypes, products_per_call=PRODUCTS_PER_CALL)
        }
    else:
        from experiments.benchmarks.torch_models import torch_matmul_gflops

        gflops = {
            dtype: torch_matmul_gflops(size, dtype, 5, device, PRODUCTS_PER_CALL)
            for dtype in dtypes
        }
    return [
        {'dtype': dtype, 'size': size, 'framework': framework, 'tflops': gflops[dtype] / 1e3}
        for dtype in dtypes
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def run_worker(
    framework: str, plan: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> None:
    """Measures the peak, then `plan['rows']` one by one, emitting each result as it comes;
    once `plan['budget_s']` has passed, the remaining rows are emitted as skipped. The plan's
    `device` ('cuda'; 'cpu' in the tests) and `size` ('full'; 'tiny') say where and what."""
    start = time.perf_counter()
    emit(
        {
            'kind': 'host',
            **machine(),
            'jax': version('jax'),
            'torch': version('torch'),
            'python': platform.python_version(),
            'measured_at': _now(),
        }
    )
    device, size = plan.get('device', 'cuda'), plan.get('size', 'full')
    peak_size = PEAK_SIZE if size == 'full' else 64
    for row in peak_rows(framework, peak_size, device):
        emit({'kind': 'peak', **row})
    for job in plan['rows']:
        head = {'kind': 'row', 'framework': framework, **job}
        if time.perf_counter() - start > plan['budget_s']:
            emit({**head, 'error': f"skipped: the worker's {plan['budget_s']:.0f} s were spent"})
            continue
        spec = model_spec(job['model'], size)
        if 'attention_implementation' in spec.jax_fields:
            spec = dataclasses.replace(
                spec,
                jax_fields=dict(
                    spec.jax_fields, attention_implementation=plan.get('attention', 'auto')
                ),
            )
        try:
            if framework == 'jax':
                from experiments.benchmarks.jax_rows import jax_train_step_row

                result = jax_train_step_row(
                    spec,
                    dtype=job['dtype'],
                    devices=1,
                    steps=plan['steps'],
                    warmup=1,
                    steps_per_call=plan['steps_per_call'],
                )
            else:
                from experiments.benchmarks.torch_models import torch_train_step_row

                result = torch_train_step_row(
                    spec,
                    dtype=job['dtype'],
                    mode=job['mode'],
                    steps=plan['steps'],
                    warmup=1,
                    device=device,
                    steps_per_call=plan['steps_per_call'],
                )
        except Exception as error:  # a failed row (out of memory, say) must not lose the rest
            result = {'error': f'{type(error).__name__}: {error}'[:300]}
        emit({**head, 'batch_size': spec.batch_size, **result})


def run_in_subprocess(
    framework: str, plan: dict[str, Any], timeout: float, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One worker in a fresh interpreter; every result it printed before it ended (or was
    stopped at `timeout`)."""
    command = [
        sys.executable,
        '-m',
        'experiments.benchmarks.gpu_benchmark',
        f'--worker={json.dumps({"framework": framework, **plan})}',
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parents[2],
        )
        stdout, stderr, note = done.stdout, done.stderr, f'exit {done.returncode}'
    except subprocess.TimeoutExpired as stopped:

        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else value or ''

        stdout, stderr = text(stopped.stdout), text(stopped.stderr)
        note = f'stopped after {timeout:.0f} s'
    results = [
        json.loads(line[len(ROW_MARKER) :])
        for line in stdout.splitlines()
        if line.startswith(ROW_MARKER)
    ]
    log(f'{framework} worker: {len(results)} results, {note}')
    if not any(r['kind'] == 'row' and 'error' not in r for r in results):
        log('\n'.join(stderr.strip().splitlines()[-15:]))
    return results


NOTES = [
    "Model FLOPs are counted by XLA's CPU compiler on the same step (jax_rows."
    "model_step_flops): the GPU compiler's cost analysis leaves out the convolutions it hands "
    'to cuDNN (ResNet-50 counted 0.1 of its FLOPs there).',
    "float32 rows run on TF32 tensor cores in both frameworks (JAX's default precision on the "
    "GPU; PyTorch with set_float32_matmul_precision('high'), its cuDNN convolutions by "
    'default); bfloat16 rows are JAX models in bfloat16 compute with float32 parameters and '
    'PyTorch autocast.',
    "ViT attention in JAX is the project's default 'auto': cuDNN flash attention only for "
    "even sequence lengths (JAX's cuDNN attention cannot train on odd ones, such as the class "
    'token + patches: 197 for ViT-B/16, 65 for ViT-Ti/4), otherwise the einsum softmax; rows '
    "measured with --attention=xla used jax.nn.dot_product_attention's XLA version (the same "
    'materialised weights). PyTorch runs scaled_dot_product_attention (flash / memory-efficient '
    'kernels).',
    'The 2-device rows of the CPU benchmark have no GPU counterpart: the lent machine has one GPU.',
]


def _row_key(result: dict[str, Any]) -> tuple[Any, ...]:
    return result['framework'], result['model'], result['dtype'], result.get('mode')


def merge_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results of several runs in order: every peak, and per row its last measurement (a row one
    run skipped or failed, another measured, keeps the measurement)."""
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results:
        if result['kind'] != 'row':
            continue
        key = _row_key(result)
        if 'error' not in result or 'error' in last.get(key, {'error': ''}):
            last[key] = result
    return [r for r in results if r['kind'] != 'row'] + [
        r for r in results if r['kind'] == 'row' and last[_row_key(r)] is r
    ]


def recount_flops(results: list[dict[str, Any]], size: str = 'full') -> None:
    """Sets every measured JAX row's `step_flops` to XLA's CPU count of its model's step
    (jax_rows.model_step_flops; float32 where the model has a float32 row, as
    add_ratios counts)."""
    from experiments.benchmarks.jax_rows import model_step_flops

    rows = [
        r for r in results if r['kind'] == 'row' and r['framework'] == 'jax' and 'error' not in r
    ]
    for model in dict.fromkeys(r['model'] for r in rows):
        dtypes = {r['dtype'] for r in rows if r['model'] == model}
        dtype = 'float32' if 'float32' in dtypes else sorted(dtypes)[0]
        count = model_step_flops(model_spec(model, size), dtype)
        for row in rows:
            if row['model'] == model:
                row.update(
                    step_flops=count.total,
                    uncorrected_loops=count.uncorrected_loops,
                    flops_counted_on='cpu (recounted)',
                )


# --- The report --------------------------------------------------------------------------------


def assemble(results: list[dict[str, Any]], *, command: str) -> dict[str, Any]:
    """Peaks (the higher of JAX's and PyTorch's per dtype is the roofline), rows with MFU against
    their dtype's peak and ratios against the PyTorch rows of the same model."""
    peaks = [{k: v for k, v in r.items() if k != 'kind'} for r in results if r['kind'] == 'peak']
    roofline = {}
    for row in peaks:
        roofline[row['dtype']] = max(roofline.get(row['dtype'], 0.0), row['tflops'] * 1e12)
    rows = [{k: v for k, v in r.items() if k != 'kind'} for r in results if r['kind'] == 'row']
    add_ratios(rows, roofline, peak_of_row_dtype=True)
    # The machine that measured (its workers' record), not the one writing the report.
    hosts = [r for r in results if r['kind'] == 'host']
    host = (
        {k: v for k, v in hosts[0].items() if k != 'kind'}
        if hosts
        else {
            **machine(),
            'jax': version('jax'),
            'torch': version('torch'),
            'python': platform.python_version(),
        }
    )
    if hosts:  # each worker knows one framework's version
        host['torch'] = next((h['torch'] for h in hosts if h.get('torch')), None)
    meta = {
        'command': command,
        'date': _now(),
        'measured_at': _now(),
        **host,
        'device_kind': next((r['device_kind'] for r in rows if r.get('device_kind')), None),
    }
    return {
        'meta': meta,
        'peak': peaks,
        'roofline_tflops': {k: v / 1e12 for k, v in roofline.items()},
        'rows': rows,
        'notes': list(NOTES),
    }


def _cell(value: Any, spec: str, suffix: str = '') -> str:
    return '–' if value is None else f'{value:{spec}}{suffix}'


def markdown_report(report: dict[str, Any]) -> str:
    meta = report['meta']
    lines = [
        "# Train-step benchmarks on a GPU: JAX against PyTorch and the card's peak",
        '',
        f'Generated by `{meta["command"]}` on {meta["date"]}; measured {meta["measured_at"]}.',
        '',
        f'Device: {meta.get("device_kind") or "GPU"}; host {meta["cpu_model"]}, '
        f'{meta["cores"]} cores; jax {meta["jax"]}, torch {meta["torch"]}, '
        f'python {meta["python"]}.',
        '',
        f'## Peak ({report["peak"][0]["size"] if report["peak"] else PEAK_SIZE}^3 matmul, '
        'random operands; float32 = TF32 tensor cores)',
        '',
        '| dtype | JAX TFLOP/s | PyTorch TFLOP/s |',
        '|---|---|---|',
    ]
    by: dict[tuple[str, str], float] = {}
    for row in report['peak']:  # the best of the runs merged
        key = (row['dtype'], row['framework'])
        by[key] = max(by.get(key, 0.0), row['tflops'])
    for dtype in ('float32', 'bfloat16'):
        lines.append(
            f'| {dtype} | {_cell(by.get((dtype, "jax")), ".1f")} | '
            f'{_cell(by.get((dtype, "torch")), ".1f")} |'
        )
    lines += [
        '',
        '## Train steps (forward + backward + SGD-momentum update, synthetic batches, one GPU)',
        '',
        'examples/s from the median of timed calls of several steps each; MFU = XLA FLOPs '
        "of the model's JAX step / step time / the higher JAX or PyTorch matmul peak of "
        "the row's dtype; ratios: examples/s of the JAX row over the PyTorch row of the "
        "same model (`vs eager f32`: over PyTorch eager float32); memory: XLA's memory "
        "analysis of the compiled step (JAX) or the allocator's peak (PyTorch).",
        '',
        '| model | batch | dtype | framework | params | examples/s | step ms | MFU | '
        'vs eager | vs compile | vs eager f32 | compile s | memory GiB |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    order = {name: i for i, name in enumerate(dict.fromkeys(r['model'] for r in report['rows']))}
    for row in sorted(
        report['rows'],
        key=lambda r: (
            order[r['model']],
            r['dtype'] != 'float32',
            r['framework'],
            r.get('mode', ''),
        ),
    ):
        who = row['framework'] + (f' {row["mode"]}' if row.get('mode') else '')
        attention = (row.get('jax_fields') or {}).get('attention_implementation')
        who += f' ({attention} attention)' if attention else ''
        if 'error' in row:
            lines.append(
                f'| {row["model"]} | | {row["dtype"]} | {who} | | '
                f'{row["error"][:90]} | | | | | | | |'
            )
            continue
        memory = row.get('device_memory_mib', row.get('peak_device_mib'))
        lines.append(
            f'| {row["model"]} | {row["batch_size"]} | {row["dtype"]} | {who} | '
            f'{row["params"]:,} | {row["examples_per_s"]:.0f} | {row["step_s"] * 1e3:.1f} | '
            f'{_cell(row.get("mfu"), ".1%")} | {_cell(row.get("vs_torch_eager"), ".2f", "x")} | '
            f'{_cell(row.get("vs_torch_compile"), ".2f", "x")} | '
            f'{_cell(row.get("vs_torch_eager_float32"), ".2f", "x")} | '
            f'{_cell(row.get("compile_s"), ".1f")} | '
            f'{_cell(memory / 1024 if memory else None, ".1f")} |'
        )
    if report.get('notes'):
        lines += ['', '## Notes', ''] + [f'- {note}' for note in report['notes']]
    return '\n'.join(lines + [''])


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if FLAGS.worker:
        plan = json.loads(FLAGS.worker)

        def emit(result: dict[str, Any]) -> None:
            print(ROW_MARKER + json.dumps(result), flush=True)
            if plan.get('rows_path'):  # survives a lease that ends before the report is written
                with open(plan['rows_path'], 'a') as rows_file:
                    rows_file.write(json.dumps(result) + '\n')

        run_worker(plan['framework'], plan, emit)
        return
    command = ' '.join(['python -m experiments.benchmarks.gpu_benchmark', *sys.argv[1:]])
    if FLAGS.from_rows:
        results = merge_results(
            [
                json.loads(line)
                for path in FLAGS.from_rows
                for line in Path(path).read_text().splitlines()
                if line.strip()
            ]
        )
        if FLAGS.recount_flops:
            recount_flops(results)
        report = assemble(results, command=command)
        write_report(report, markdown_report(report), FLAGS.out)
        return
    rows = plan_rows(FLAGS.models, FLAGS.dtypes, FLAGS.big_dtypes, [m for m in FLAGS.torch if m])
    rows_path = Path(FLAGS.out).with_suffix('.rows.jsonl') if FLAGS.out else None
    if rows_path:
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        rows_path.unlink(missing_ok=True)
    common = dict(
        steps=FLAGS.steps,
        steps_per_call=FLAGS.steps_per_call,
        budget_s=FLAGS.budget_s,
        size=FLAGS.size,
        device=FLAGS.torch_device,
        attention=FLAGS.attention,
        rows_path=str(rows_path) if rows_path else None,
    )
    timeout = FLAGS.budget_s + 150  # the row under way when the budget ends, and start-up
    results = []
    for framework in ('jax', 'torch'):
        if rows[framework]:
            results += run_in_subprocess(
                framework,
                dict(rows=rows[framework], **common),
                timeout,
                lambda s: print(s, flush=True),
            )
    report = assemble(results, command=command)
    write_report(report, markdown_report(report), FLAGS.out)


if __name__ == '__main__':
    define_flags()
    cli.run(main)
