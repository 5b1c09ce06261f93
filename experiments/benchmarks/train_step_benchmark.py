"""Train-step speed against PyTorch and against the machine's matmul peak, side by side.

Command (the full run; writes docs/benchmarks.json and docs/benchmarks.md):
  python -m experiments.benchmarks.train_step_benchmark --out=docs/benchmarks.json
      [--models=resnet18,vit_ti4,lstm_lm] [--dtypes=float32,bfloat16] [--devices=1,2]
      [--torch=eager,compile] [--steps=6] [--warmup=0] [--pipeline=true] [--size=full|tiny]
      [--micro_batches=true] [--rounds=1]
Measures, each row in its own worker process (so its compile time and peak resident memory,
ru_maxrss, are its own, and the device count can differ: `--xla_force_host_platform_device_count`
is read when JAX starts), one model after another, so that the rows compared run close in time:
  * peak: a 2048x2048 matmul in JAX, float32 and bfloat16 (and in PyTorch, for reference);
  * the project's train step (train.tasks + train.optim SGD momentum 0.9 + train.steps on a
    train.sharding mesh of 1 or 2 CPU devices, state donated) on synthetic batches of
    ResNet-18 (CIFAR stem, 32x32x3, batch 128), ViT-Ti/4 (32x32x3, batch 128) and a one-layer
    LSTM language model (hidden 512, embedding 128, 256 tokens, length 128, batch 64), in
    float32 and bfloat16 compute; XLA's FLOP count of the compiled step
    (experiments.analysis.compute, loops corrected) gives MFU = FLOPs / step time / float32 peak;
  * the PyTorch twins (experiments/benchmarks/torch_models.py: same architecture, parameter
    count and optimiser), eager and torch.compile, float32 and bfloat16 autocast;
  * the input pipeline: data.train_loader over an in-memory split, and random crop + flip
    (data.augment) jitted on device, against the train step's consumption.
Ratios (JAX / PyTorch examples/s) and the two speed targets (bench_common.reach) are judged in
the report. This module plans the jobs, runs each in a worker process and assembles the report;
jax_rows.py measures the JAX rows, torch_models.py the PyTorch ones. Where a grouped-convolution
run's JSON (`conv_benchmark.py --convs=grouped --out=.../conv_benchmark_grouped.json`) lies beside
--out, the page ends with its section (conv_benchmark.grouped_summary_markdown): a model's
grouped convolutions (NFNet-F0's in docs/) in JAX against PyTorch, measured apart from this run.
CPU defaults (XLA flags, convolution kernels, allocator, micro-batches) are what train/runtime.py
chooses for this CPU (the tables measured on AMD Zen there, rules from the CPU's properties
elsewhere); see NOTES, `--xla_flags` and `--micro_batches`. The report names the CPU, its
instruction-set flags and each JAX row's choices with their reasons.

Hardware and time: the 2-core CPU (AMD EPYC, AVX-512 with AVX512-BF16), jax 0.10.2, torch
2.13.0 (CPU wheel: `pip install -e '.[benchmark]'`). 27 worker processes, 7-11 minutes;
`--torch=eager` saves ~1 minute; `--size=tiny` checks the plumbing in a few minutes. Zen 3 AVX2
host (docs/benchmarks.md, 18 min with `--torch_timeout=150`): float32 0.73-1.00x, bfloat16 > 30x.
Expected (2026-12-08 01:00 UTC run with --rounds=2, docs/benchmarks_epyc_avx512.md, 21 minutes,
on the slower AVX-512 host): peak ~190-205 GFLOP/s float32, ~400 bfloat16 (0.98x PyTorch's); JAX /
PyTorch eager at the same dtype, 1 device / 2 devices: ResNet-18 1.19x / 1.14x float32,
0.97x / 1.03x bfloat16; ViT-Ti/4 1.02x / 1.01x and 1.06x / 1.18x; LSTM 1.07x / 0.95x and
0.90x / 0.76x; ViT float32 MFU 69%. Single runs of that host spread by about 10% per ratio
(docs/speed.md compares five). conv_benchmark.py takes ResNet-18's convolutions apart. The
GPU counterpart is gpu_benchmark.py.
Other processes on the cores change the picture (PyTorch's OpenMP threads suffer more): compare
rows whose `cores` is near the core count. A shared VM's speed also moves by 5-25% over minutes:
`--rounds=2` runs each model and dtype's rows twice, PyTorch's first the second time, and
reports each row's fastest round (run_noise.py; about twice the time).
"""

from __future__ import annotations

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

from experiments.benchmarks import run_noise
from experiments.benchmarks.bench_common import (
    NOTES,
    ROW_MARKER,
    add_ratios,
    announce_first_step,
    machine,
    markdown_report,
    model_spec,
    reach,
    stopped_row,
    version,
    write_report,
)
from experiments.benchmarks.conv_benchmark import grouped_summary_markdown
from experiments.benchmarks.jax_rows import jax_peak_row, jax_train_step_row, pipeline_rows

# PyTorch eager under the allocator settings the JAX row of its model runs with.
TORCH_EAGER_SAME_MALLOC = 'eager+malloc'
# conv_benchmark.py --convs=grouped's JSON: beside --out, its section ends the page.
GROUPED_CONV_JSON = 'conv_benchmark_grouped.json'


def _family(model: str) -> str:
    """The registry family of a benchmarked model (the same at every size)."""
    import nets

    return nets.model_family(model_spec(model).net)


def define_flags() -> None:
    """Flags of the command line only: tests import this module beside other absl programs
    that define --out too."""
    flags.DEFINE_string(
        'out',
        'docs/benchmarks.json',
        'JSON results; the markdown table goes beside it with the suffix .md (empty: print '
        f'only). A {GROUPED_CONV_JSON} beside it (conv_benchmark.py --convs=grouped) adds its '
        'section to the page.',
    )
    flags.DEFINE_list('models', ['resnet18', 'vit_ti4', 'lstm_lm'], 'Models to measure.')
    flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
    flags.DEFINE_list('devices', ['1', '2'], 'JAX CPU device counts (data-parallel mesh).')
    flags.DEFINE_list('torch', ['eager', 'compile'], 'PyTorch modes (empty: no PyTorch).')
    flags.DEFINE_integer(
        'steps',
        6,
        'Timed train steps per row (median; medians of 3 moved by '
        'up to 15% between runs on the shared 2-core VM).',
        lower_bound=1,
    )
    flags.DEFINE_integer('warmup', 0, 'Untimed steps after the first (untimed) one.', lower_bound=0)
    flags.DEFINE_integer(
        'rounds',
        1,
        "Times each model and dtype's rows run, in alternating order (JAX rows first, then "
        'PyTorch rows first, ...); each row reports its fastest round.',
        lower_bound=1,
    )
    flags.DEFINE_enum('size', 'full', ['full', 'tiny'], "'tiny': toy models (a smoke test).")
    flags.DEFINE_integer('peak_size', 2048, 'Side of the peak matmul.', lower_bound=8)
    flags.DEFINE_bool('pipeline', True, 'Measure the input pipeline.')
    flags.DEFINE_bool(
        'cpu_malloc',
        True,
        'JAX rows run with the allocator settings '
        'train.main uses for their family (train/runtime.py), and PyTorch '
        "eager once more under them ('eager+malloc' rows).",
    )
    flags.DEFINE_bool(
        'micro_batches',
        True,
        'JAX steps split their batch into the micro-batches '
        'the trainer uses on the CPU (train.runtime; ViTs: 16 examples per '
        'device); false: whole batches.',
    )
    flags.DEFINE_string(
        'xla_flags',
        None,
        'XLA_FLAGS of every JAX worker (the device count is added per row); '
        "default: what train.main adds for the row's model family and dtype "
        '(train/runtime.py).',
    )
    flags.DEFINE_integer('row_timeout', 900, 'Seconds before a worker is abandoned.')
    flags.DEFINE_integer(
        'torch_timeout', None, 'Seconds for a PyTorch worker (default --row_timeout): see NOTES.'
    )
    flags.DEFINE_string('worker', None, 'Internal: run one row (JSON) and print it.')


# --- A worker (one job per process) -------------------------------------------------------------


def run_worker(job: dict[str, Any]) -> Any:
    """One job of the driver, in this process: 'peak', 'jax_step', 'torch_step', 'pipeline'."""
    size, kind = job.get('size', 'full'), job['job']
    if kind == 'peak':
        rows = jax_peak_row(job['peak_size'], job['dtypes'])
        if job.get('torch'):
            try:
                from experiments.benchmarks.torch_models import torch_peak_gflops
            except ImportError:
                return rows
            for row in rows:
                row['torch_gflops'], row['torch_size'] = torch_peak_gflops(
                    job['peak_size'], row['dtype']
                )
        return rows
    if kind == 'pipeline':
        return pipeline_rows(model_spec(job['model'], size), steps=max(job['steps'], 20))
    spec = model_spec(job['model'], size)
    from train.runtime import MALLOC_ENV

    malloc_env = {name: os.environ[name] for name in MALLOC_ENV if name in os.environ}
    if kind == 'jax_step':
        from nets.kernels import onednn_conv, switch
        from train.runtime import cpu_choices

        choices = cpu_choices(_family(job['model']), job['dtype'], job['devices'])
        conv, matmul = choices['conv_backend'][0], choices['matmul_backend'][0]
        # 'auto' runs oneDNN's where it builds, as the trainer falls back to XLA's.
        with switch.use(
            conv='auto' if conv == 'onednn' else conv,
            matmul='auto' if matmul == 'onednn' else matmul,
        ):
            row = jax_train_step_row(
                spec,
                dtype=job['dtype'],
                devices=job['devices'],
                steps=job['steps'],
                warmup=job['warmup'],
                count_flops=job.get('count_flops', True),
                micro_batches=job.get('micro_batches', True),
            )
        built = onednn_conv.available()  # what ran: 'auto' falls back to XLA's where not built
        ran = {
            name: 'onednn' if c == 'onednn' and built else 'xla'
            for name, c in (('conv_backend', conv), ('matmul_backend', matmul))
        }
        return {
            'malloc_env': malloc_env,
            **row,
            **ran,
            'choices': {name: reason for name, (_, reason) in choices.items()},
        }
    if kind == 'torch_step':
        from experiments.benchmarks.torch_models import torch_train_step_row

        mode = 'eager' if job['mode'] == TORCH_EAGER_SAME_MALLOC else job['mode']
        row = torch_train_step_row(
            spec,
            dtype=job['dtype'],
            mode=mode,
            steps=job['steps'],
            warmup=job['warmup'],
            first_step=announce_first_step,
        )
        return {**row, 'mode': job['mode'], 'malloc_env': malloc_env}
    raise ValueError(f'unknown job {kind!r}')


# --- The driver --------------------------------------------------------------------------------


def plan_jobs(
    models: Sequence[str],
    dtypes: Sequence[str],
    devices: Sequence[int],
    torch_modes: Sequence[str],
    *,
    steps: int,
    warmup: int,
    size: str,
    peak_size: int,
    pipeline: bool,
    micro_batches: bool = True,
    cpu_malloc: bool = True,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Every job in the order it runs: the peak, then per model and dtype its JAX rows (one
    per device count) and PyTorch rows, so that the rows compared run close in time, and the
    peak again (a shared VM's speed can drift within a run; the report says when it did).
    `cpu_malloc`: JAX rows run with the trainer's allocator settings for their family
    (train.runtime.cpu_malloc_env), and where there are any, PyTorch eager runs once more
    under the same settings (mode 'eager+malloc'). `rounds` > 1 repeats each model and dtype's
    rows that many times (job key 'round'), every other round in reverse order, so a drift of
    the machine's speed within the block favours neither framework; FLOPs are counted in the
    first round only."""
    from train.runtime import cpu_malloc_env

    common = dict(steps=steps, warmup=warmup, size=size)
    peak = dict(
        job='peak',
        peak_size=peak_size,
        dtypes=list(dtypes),
        torch=bool(torch_modes),
        devices=1,
        size=size,
    )
    jobs = [peak]
    for model in models:
        model_spec(model, size)  # unknown names fail before anything runs
        for dtype in dtypes:
            # Model FLOPs are counted once per model (add_ratios): on the smallest mesh's row
            # of the first dtype (float32 when measured).
            count_dtype = 'float32' if 'float32' in dtypes else dtypes[0]
            block = [
                dict(
                    job='jax_step',
                    model=model,
                    dtype=dtype,
                    devices=n,
                    count_flops=dtype == count_dtype and n == min(devices),
                    micro_batches=micro_batches,
                    malloc=cpu_malloc,
                    **common,
                )
                for n in devices
            ]
            block += [
                dict(job='torch_step', model=model, dtype=dtype, mode=mode, **common)
                for mode in torch_modes
            ]
            if cpu_malloc and 'eager' in torch_modes and cpu_malloc_env(_family(model)):
                block.append(
                    dict(
                        job='torch_step',
                        model=model,
                        dtype=dtype,
                        mode=TORCH_EAGER_SAME_MALLOC,
                        **common,
                    )
                )
            if rounds == 1:
                jobs += block
                continue
            for r in range(rounds):
                jobs += [
                    dict(
                        job,
                        round=r,
                        **({'count_flops': False} if r and 'count_flops' in job else {}),
                    )
                    for job in (block if r % 2 == 0 else block[::-1])
                ]
    if pipeline:
        image_models = [m for m in models if model_spec(m, size).kind == 'image'] or ['resnet18']
        jobs.append(dict(job='pipeline', model=image_models[0], devices=1, **common))
    return jobs + [dict(peak, again=True)]


def job_xla_flags(job: dict[str, Any], xla_flags: str | None = None) -> str:
    """XLA_FLAGS for a job: `xla_flags` when given, else the trainer's CPU defaults for the
    job's model family and dtype (train.runtime: the benchmark measures what ships)."""
    if xla_flags is not None or job['job'] == 'torch_step':
        return xla_flags or ''
    from train.runtime import cpu_xla_flags

    family = _family(job['model']) if job['job'] == 'jax_step' else None
    return ' '.join(cpu_xla_flags(family, job.get('dtype', 'float32')))


def worker_env(job: dict[str, Any], xla_flags: str | None) -> dict[str, str]:
    """The environment of a job's process: XLA flags, for a JAX mesh the device count, and
    the allocator settings the trainer uses for the model's family on JAX rows with `malloc`
    and 'eager+malloc' PyTorch rows (glibc's defaults for every other row)."""
    from train.runtime import MALLOC_ENV, cpu_malloc_env

    env = {name: value for name, value in os.environ.items() if name not in MALLOC_ENV}
    if job.get('malloc') or job.get('mode') == TORCH_EAGER_SAME_MALLOC:
        env.update(cpu_malloc_env(_family(job['model'])))
    flags_now = job_xla_flags(job, xla_flags).split()
    if job['job'] != 'torch_step' and job.get('devices', 1) > 1:
        flags_now.append(f'--xla_force_host_platform_device_count={job["devices"]}')
    env['XLA_FLAGS'] = ' '.join(flags_now)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    return env


def run_in_subprocess(job: dict[str, Any], xla_flags: str | None, timeout: float) -> Any:
    """Runs `job` in a fresh interpreter; its result, or {'error': ...}."""
    command = [
        sys.executable,
        '-m',
        'experiments.benchmarks.train_step_benchmark',
        f'--worker={json.dumps(job)}',
    ]
    try:
        done = subprocess.run(
            command,
            env=worker_env(job, xla_flags),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).resolve().parents[2],
        )
    except subprocess.TimeoutExpired as stopped:
        torch = job['job'] == 'torch_step'
        batch = model_spec(job['model'], job.get('size', 'full')).batch_size if torch else 0
        return stopped_row(stopped.stdout, timeout, batch)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(ROW_MARKER):
            return json.loads(line[len(ROW_MARKER) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {'error': f'exit {done.returncode}: ' + ' | '.join(tail)}


def run_benchmark(
    jobs: list[dict[str, Any]],
    runner: Callable[[dict[str, Any]], Any],
    *,
    command: str,
    xla_flags: str | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs `jobs` with `runner` and assembles the report (rows, ratios, targets, notes)."""
    report: dict[str, Any] = {
        'meta': {
            'command': command,
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            **machine(),
            'jax': version('jax'),
            'torch': version('torch'),
            'python': platform.python_version(),
            'xla_flags': 'per row' if xla_flags is None else xla_flags,
            'cpu_class': cpu_class(),
        },
        'peak': [],
        'rows': [],
        'pipeline': [],
        'notes': list(NOTES),
    }
    for job in jobs:
        start = time.perf_counter()
        result = runner(job)
        label = ' '.join(
            str(job[k])
            for k in ('job', 'model', 'dtype', 'devices', 'mode')
            if k in job and not (k == 'devices' and job['job'] != 'jax_step')
        )
        if job['job'] == 'peak':
            if isinstance(result, dict):  # failed
                raise RuntimeError(f'the peak measurement failed: {result["error"]}')
            report['peak_at_end' if job.get('again') else 'peak'] = result
            text = ', '.join(f'{r["dtype"]} {r["gflops"]:.1f} GFLOP/s' for r in result)
        elif job['job'] == 'pipeline':
            report['pipeline'] = (
                result
                if isinstance(result, list)
                else [{'stage': 'pipeline', 'examples_per_s': 0.0, **result}]
            )
            text = ', '.join(
                f'{r["stage"]}: {r["examples_per_s"]:.0f}/s' for r in report['pipeline']
            )
        else:
            row = {
                'model': job['model'],
                'dtype': job['dtype'],
                **(
                    {'devices': job['devices']}
                    if job['job'] == 'jax_step'
                    else {'mode': job['mode']}
                ),
                'framework': 'jax' if job['job'] == 'jax_step' else 'torch',
                **result,
            }
            if job['job'] == 'jax_step':
                row['xla_flags'] = job_xla_flags(job, xla_flags)
            report['rows'].append(row)
            text = (
                row['error']
                if 'error' in row
                else f'{row["examples_per_s"]:.1f} examples/s, step {row["step_s"] * 1e3:.0f} ms, '
                f'compile {row.get("compile_s") or 0:.1f} s, {row["params"]:,} params'
            )
        log(f'{label:<40} {text}   ({time.perf_counter() - start:.0f} s)')
    report['rows'] = run_noise.fastest_rounds(report['rows'])
    note = run_noise.rounds_note(report['rows'])
    if note:
        report['notes'].append(note)
    # MFU against the higher of the two peak measurements: a slow moment at the start must not
    # flatter every row.
    peaks = {r['dtype']: r['gflops'] * 1e9 for r in report['peak']}
    for r in report.get('peak_at_end', []):
        peaks[r['dtype']] = max(peaks.get(r['dtype'], 0.0), r['gflops'] * 1e9)
    add_ratios(report['rows'], peaks)
    consumption = [
        r['examples_per_s']
        for r in report['rows']
        if r['framework'] == 'jax'
        and r.get('dtype') == 'float32'
        and r.get('devices') == 1
        and 'examples_per_s' in r
        and model_spec(r['model']).kind == 'image'
    ]
    for row in report['pipeline']:
        if consumption and row.get('examples_per_s'):
            row['consumed_per_s'] = max(consumption)
            row['headroom'] = row['examples_per_s'] / max(consumption)
    report['reach'] = reach(report['rows'])
    report['peak_drift'] = run_noise.peak_drift(report['peak'], report.get('peak_at_end', []))
    drifted = {
        dtype: change
        for dtype, change in report['peak_drift'].items()
        if abs(change) > run_noise.DRIFT_TOLERANCE
    }
    if drifted:
        report['notes'].append(
            "The machine's speed moved during this run: the matmul peak measured again at the "
            'end differs from the start by '
            + ', '.join(f'{change:+.0%} ({dtype})' for dtype, change in drifted.items())
            + ': rows measured minutes apart (and their ratios) are not comparable; rerun '
            'before quoting.'
        )
    # The rows' own CPU use tells whether other processes took cores (the load average would
    # count this benchmark's own threads).
    shared = [
        f'{r["model"]} {r["dtype"]} {r["framework"]} {r.get("devices") or r.get("mode")}'
        for r in report['rows']
        if r.get('cpu_s') and r['cpu_s'] / r['step_s'] < 0.8 * (os.cpu_count() or 1)
    ]
    if shared:
        report['notes'].append(
            f'Other processes shared the machine during {len(shared)} rows '
            f'({", ".join(shared[:4])}{", ..." if len(shared) > 4 else ""}: '
            'cores below 80% of the core count): rerun idle before quoting.'
        )
    return report


def grouped_conv_report(out: str | None) -> dict[str, Any] | None:
    """The report of conv_benchmark.py --convs=grouped saved as GROUPED_CONV_JSON beside `out`,
    or None (no `out`, no such file); ValueError names a file that holds no such report."""
    path = Path(out).with_name(GROUPED_CONV_JSON) if out else None
    if path is None or not path.exists():
        return None
    try:
        grouped = json.loads(path.read_text())
        grouped_summary_markdown(grouped)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f'{path}: not a report of conv_benchmark.py --convs=grouped ({error})'
        ) from None
    return grouped


def report_markdown(report: dict[str, Any], grouped: dict[str, Any] | None = None) -> str:
    """The page (docs/benchmarks.md): bench_common.markdown_report, then, given `grouped`
    (grouped_conv_report), the grouped convolutions' section, its rows linked on the .md page
    beside their JSON and its matmul peak set beside this run's float32 one."""
    table = markdown_report(report)
    if grouped is None:
        return table
    peaks = [
        row['gflops']
        for row in (*report['peak'], *report.get('peak_at_end', []))
        if row['dtype'] == 'float32' and row.get('gflops')
    ]
    return (
        table
        + '\n'
        + grouped_summary_markdown(
            grouped,
            rows_page=Path(GROUPED_CONV_JSON).with_suffix('.md').name,
            peak_elsewhere=f'{max(peaks):.0f} in the train-step run above' if peaks else None,
        )
    )


def cpu_class() -> str:
    """Whether this CPU is of the class train/runtime.py's tables were measured on, or which
    property puts it outside (its choices then follow rules from its properties)."""
    from train.host_cpu import this_cpu
    from train.runtime import MEASURED_CPU_CLASS, class_mismatch, in_measured_class

    cpu = this_cpu()
    if in_measured_class(cpu):
        return f'{MEASURED_CPU_CLASS}: the measured tables'
    return f'{class_mismatch(cpu)}, not {MEASURED_CPU_CLASS}: rules from its properties'


def main(argv: Sequence[str]) -> None:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if FLAGS.worker:
        result = run_worker(json.loads(FLAGS.worker))
        print(ROW_MARKER + json.dumps(result), flush=True)
        return
    try:  # read before the run: a bad file fails in seconds, not after it
        grouped = grouped_conv_report(FLAGS.out)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    torch_modes = [m for m in FLAGS.torch if m]
    if torch_modes and version('torch') is None:
        print("torch is not installed (pip install -e '.[benchmark]'): no PyTorch rows")
        torch_modes = []
    jobs = plan_jobs(
        FLAGS.models,
        FLAGS.dtypes,
        [int(n) for n in FLAGS.devices],
        torch_modes,
        steps=FLAGS.steps,
        warmup=FLAGS.warmup,
        size=FLAGS.size,
        peak_size=FLAGS.peak_size,
        pipeline=FLAGS.pipeline,
        micro_batches=FLAGS.micro_batches,
        cpu_malloc=FLAGS.cpu_malloc,
        rounds=FLAGS.rounds,
    )
    command = ' '.join(['python -m experiments.benchmarks.train_step_benchmark', *sys.argv[1:]])
    print(
        f'{len(jobs)} jobs; XLA_FLAGS for JAX: '
        f'{"train/runtime.py per row" if FLAGS.xla_flags is None else FLAGS.xla_flags}',
        flush=True,
    )
    report = run_benchmark(
        jobs,
        lambda job: run_in_subprocess(
            job,
            FLAGS.xla_flags,
            FLAGS.torch_timeout or FLAGS.row_timeout
            if job['job'] == 'torch_step'
            else FLAGS.row_timeout,
        ),
        command=command,
        xla_flags=FLAGS.xla_flags,
        log=lambda s: print(s, flush=True),
    )
    write_report(report, report_markdown(report, grouped), FLAGS.out)


if __name__ == '__main__':
    define_flags()
    app.run(main)
