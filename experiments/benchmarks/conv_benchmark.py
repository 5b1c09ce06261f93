"""The convolutions of a ConvNet's train step, JAX against PyTorch, pass by pass: what limits
the ResNet-18 row of train_step_benchmark.py on the CPU, and what NFNets' grouped convolutions
cost.

Command:
  python -m experiments.benchmarks.conv_benchmark [--model=resnet18] [--size=full|tiny]
      [--convs=all|grouped] [--repeats=4] [--out=docs/conv_benchmark.json]
Finds every convolution of the model's forward pass by tracing it (the benchmark's ModelSpec:
ResNet-18 with the CIFAR stem, batch 128, 32x32x3; nfnet_f0, conv_passes.CONV_MODELS: NFNet-F0
with the one-conv stem, batch 32, 32x32x3), measures each distinct one once (with --convs=grouped
the grouped ones alone, feature_group_count > 1) and counts how often the step runs it. For each,
in one process, alternating block by block:
  * JAX with XLA's convolution kernels and JAX with oneDNN's (nets/kernels/onednn_conv.py, the CPU
    default where it builds, grouped convolutions included): the forward convolution and its
    backward pass (input and kernel gradients), each jitted alone through nets.kernels.conv (what
    the models run), under the XLA flags the trainer ships for the family (train/runtime.py);
  * PyTorch (`pip install -e '.[benchmark]'`; skipped where torch is missing):
    aten.convolution and aten.convolution_backward (with `groups`) on channels-last tensors
    (oneDNN), the kernels its eager train step runs.
The first convolution reads the image, so its backward pass is the kernel gradient alone, as in
a train step. Reported: ms and GFLOP/s per pass, the float32 matmul peak of both for scale, the
machine's load average before and after, and the sum over the step (count x time): the seconds
a train step spends in (the measured) convolutions in each. A --convs=grouped page ends with
grouped_summary_markdown's section (JAX time / PyTorch time per backend and pass), which
train_step_benchmark.py appends to its own page when this run's JSON lies beside it as
conv_benchmark_grouped.json (docs/benchmarks.md).

Hardware and time: a 2-core x86-64 CPU (AVX-512); about a minute for ResNet-18, three for
NFNet-F0's grouped convolutions (XLA's take seconds each).
Expected: ResNet-18's convolutions take as long with oneDNN's kernels in JAX as in PyTorch and
longer with XLA's, the gap largest on the 32x32x64 layers (docs/conv_benchmark.md); NFNet's
grouped ones several times longer with XLA's, as long with oneDNN's as in PyTorch
(docs/conv_benchmark_grouped.md); the readings are in docs/speed.md.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from experiments.benchmarks.bench_common import machine, version, write_report
from experiments.benchmarks.conv_passes import (
    JAX_BACKENDS,
    conv_flops,
    conv_model_spec,
    jax_passes,
    model_convolutions,
    time_alternating,
    torch_passes,
)

PASSES = ('forward', 'backward')
FRAMEWORKS = (*JAX_BACKENDS, 'torch')
LABELS = {'xla': 'JAX XLA', 'onednn': 'JAX oneDNN', 'torch': 'PyTorch'}
# The JAX convolution kernels of a summary's rows: where they come from and how to choose them.
BACKEND_NOTES = {
    'onednn': "oneDNN's (`nets/kernels/onednn_conv.py` through `nets.kernels.conv`, the CPU "
    'default where it builds)',
    'xla': "XLA's (`config.runtime.conv_backend=xla`)",
}
CONV_SETS = ('all', 'grouped')


def define_flags() -> None:
    flags.DEFINE_string(
        'model', 'resnet18', 'Image model of bench_common.MODELS or conv_passes.CONV_MODELS.'
    )
    flags.DEFINE_enum(
        'size', 'full', ['full', 'tiny'], "'tiny': toy model and batch (a smoke test)."
    )
    flags.DEFINE_enum('convs', 'all', list(CONV_SETS), "'grouped': the grouped convolutions alone.")
    flags.DEFINE_integer(
        'repeats', 4, 'Timed calls per pass, framework and round (2 rounds; median).', lower_bound=1
    )
    flags.DEFINE_string(
        'out',
        'docs/conv_benchmark.json',
        'JSON results; the markdown table goes beside it with the suffix .md (empty: print only).',
    )


def measure(
    convs: list[dict[str, Any]], repeats: int, frameworks: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per convolution and pass: each framework's median seconds (`<framework>_s`) and
    GFLOP/s; `frameworks` from FRAMEWORKS ('xla' and 'onednn': JAX with that backend)."""
    rows = []
    for conv in convs:
        calls = {
            name: (torch_passes(conv) if name == 'torch' else jax_passes(conv, name))
            for name in frameworks
        }
        for name in PASSES:
            # The backward pass: input and kernel gradients, each the forward's products.
            flops = conv_flops(conv) * (2 if name == 'backward' and not conv['reads_input'] else 1)
            seconds = time_alternating([calls[f][name] for f in frameworks], repeats)
            row = {
                'input_shape': list(conv['input_shape']),
                'kernel_shape': list(conv['kernel_shape']),
                'strides': list(conv['strides']),
                'groups': conv.get('groups', 1),
                'count': conv['count'],
                'pass': name,
                'gflop': flops / 1e9,
            }
            for framework, t in zip(frameworks, seconds):
                row.update({f'{framework}_s': t, f'{framework}_gflops': flops / t / 1e9})
            rows.append(row)
            print(row, flush=True)
    return rows


def step_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seconds a train step spends in the rows' convolutions (count x time), per framework and
    pass, and PyTorch's time over each JAX backend's, in all (`torch_over_<backend>`) and per
    pass (`torch_over_<backend>_<pass>`); over 1: JAX faster."""
    totals: dict[str, Any] = {}
    for framework in FRAMEWORKS:
        if not rows or any(f'{framework}_s' not in row for row in rows):
            continue
        by_pass = {
            name: sum(r['count'] * r[f'{framework}_s'] for r in rows if r['pass'] == name)
            for name in PASSES
        }
        totals[framework] = {
            'total_s': sum(by_pass.values()),
            **{f'{k}_s': v for k, v in by_pass.items()},
        }
    for backend in JAX_BACKENDS:
        if 'torch' in totals and backend in totals:
            torch, jax_ = totals['torch'], totals[backend]
            totals[f'torch_over_{backend}'] = torch['total_s'] / jax_['total_s']
            for name in PASSES:
                totals[f'torch_over_{backend}_{name}'] = torch[f'{name}_s'] / jax_[f'{name}_s']
    return totals


def markdown(report: dict[str, Any]) -> str:
    """The page written beside the JSON: setting, one row per convolution and pass, the step's
    totals; a --convs=grouped run's ends with grouped_summary_markdown's section."""
    present = [f for f in FRAMEWORKS if f in report['step_totals']]
    peaks = report['peak_gflops']
    grouped = report.get('convs') == 'grouped'
    which = 'grouped convolutions' if grouped else 'convolutions'
    machine_ = report['machine']
    lines = [
        f"# {which.capitalize()} of {report['model']}'s train step: JAX against PyTorch",
        '',
        f'Generated by `{report["command"]}` on {report["date"]}.',
        '',
        f'Machine: {machine_.get("cpu_summary", machine_["cpu_model"])}; '
        f'jax {report["versions"]["jax"]}, torch {report["versions"]["torch"]}; XLA flags '
        f'`{report["xla_flags"]}`. Float32 matmul peak ({report["peak_size"]}): JAX '
        f'{peaks["jax"]:.0f} GFLOP/s, PyTorch '
        + (f'{peaks["torch"]:.0f}' if peaks.get('torch') else '–')
        + ' GFLOP/s.',
        '',
        f'Load average (1, 5, 15 min) before: {machine_["load_average"]}; after: '
        f'{report.get("load_average_after", "–")}. Where it exceeds what this run adds (about '
        'one per core it keeps busy), other processes shared the cores: every time is then '
        'inflated, but the frameworks alternate in blocks within one process, so the load hits '
        'the columns of a row alike; compare those, not absolute times across runs.',
        '',
        "Columns: JAX with XLA's convolution kernels (`xla`), JAX with oneDNN's "
        '(`onednn`, nets/kernels/onednn_conv.py, the CPU default where it builds), PyTorch '
        '(oneDNN, channels-last). Kernels are HWIO with I the input channels per group.',
        '',
        '| input (NHWC) | kernel (HWIO) | groups | stride | per step | pass | '
        + ' | '.join(f'{LABELS[f]} ms | {LABELS[f]} GFLOP/s' for f in present)
        + ' |',
        '|' + '---|' * (6 + 2 * len(present)),
    ]
    for r in report['rows']:
        cells = ' | '.join(f'{r[f + "_s"] * 1e3:.1f} | {r[f + "_gflops"]:.0f}' for f in present)
        lines.append(
            f'| {"x".join(map(str, r["input_shape"]))} | '
            f'{"x".join(map(str, r["kernel_shape"]))} | {r.get("groups", 1)} | '
            f'{r["strides"][0]} | {r["count"]} | {r["pass"]} | {cells} |'
        )
    totals = report['step_totals']
    lines += [
        '',
        f'## Per train step (count x time, {which})',
        '',
        f'| framework | {which} s | forward s | backward s |',
        '|---|---|---|---|',
    ]
    for framework in present:
        t = totals[framework]
        lines.append(
            f'| {LABELS[framework]} | {t["total_s"]:.3f} | {t["forward_s"]:.3f} | '
            f'{t["backward_s"]:.3f} |'
        )
    ratios = [
        f'{LABELS[b]} {totals[f"torch_over_{b}"]:.2f}x (forward '
        f'{totals[f"torch_over_{b}_forward"]:.2f}x, backward '
        f'{totals[f"torch_over_{b}_backward"]:.2f}x)'
        for b in JAX_BACKENDS
        if f'torch_over_{b}' in totals
    ]
    if ratios:
        lines += [
            '',
            f"PyTorch / JAX time over the step's {which}: "
            + ', '.join(ratios)
            + ' (over 1: JAX faster).',
        ]
    if grouped:
        lines += ['', grouped_summary_markdown(report).rstrip('\n')]
    return '\n'.join(lines) + '\n'


def _ratio(value: float) -> str:
    return f'{value:.2f}' if value < 10 else f'{value:.1f}'


def _seconds(value: float) -> str:
    """Three significant digits, trailing zeros kept (3.00, 26.4, 0.876)."""
    digits = 2 - math.floor(math.log10(value)) if value > 0 else 3
    return f'{value:.{max(digits, 0)}f}'


def _gflops(value: float) -> str:
    return f'{value:.0f}' if value >= 10 else f'{value:.1f}'


def _span(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f'{low}-{high}'


def _and(items: Sequence[Any]) -> str:
    words = [str(item) for item in items]
    return ' and '.join([', '.join(words[:-1]), words[-1]] if len(words) > 2 else words)


def grouped_summary_markdown(
    report: dict[str, Any], rows_page: str | None = None, peak_elsewhere: str | None = None
) -> str:
    """The section that sums up a --convs=grouped run (`report`, as run returns it and its JSON
    holds it): command, date, machine, load, JAX time / PyTorch time per JAX backend for the
    forward and backward passes and the train step's grouped convolutions (count x time), and
    the per-layer ranges. `rows_page`: the page with every row, linked relative to the page the
    section goes in (None: the table at the top of that page). `peak_elsewhere`: the float32
    matmul peak of another run, set beside this run's (e.g. '464 in the train-step run above').
    ValueError names a report of another convolution set."""
    if report.get('convs') != 'grouped':
        raise ValueError(f'convs {report.get("convs")!r}: the summary is of a --convs=grouped run')
    machine_, rows, totals = report['machine'], report['rows'], report['step_totals']
    shapes = {
        (tuple(r['input_shape']), tuple(r['kernel_shape']), tuple(r['strides'])) for r in rows
    }
    where = f'[`{rows_page}`]({rows_page})' if rows_page else 'the table at the top of this page'
    lines = [
        f'## Grouped convolutions ({report["model"]}): JAX against PyTorch',
        '',
        f'Measured apart from any train step: `{report["command"]}`, {report["date"]}. Machine: '
        f'{machine_.get("cpu_summary", machine_["cpu_model"])}; jax {report["versions"]["jax"]}, '
        f'torch {report["versions"]["torch"] or "not installed"}; XLA flags '
        f'`{report["xla_flags"]}`.',
        '',
        f'{report["model"]} at batch {report["batch_size"]}: its {len(shapes)} distinct grouped '
        f'convolutions ({_and(sorted({r["groups"] for r in rows}))} groups of '
        f'{_and(sorted({r["kernel_shape"][2] for r in rows}))} input channels), each timed '
        'alone, forward and backward (input + kernel gradient), the frameworks alternating block '
        f'by block in one process; every row in {where}.',
        '',
        f'Load average (1, 5, 15 min) before the run: {machine_["load_average"]}; after it: '
        f'{report.get("load_average_after", "–")}, which counts the run itself (about one per '
        f'core it keeps busy). The JAX float32 matmul peak ({report["peak_size"]}) read '
        f'{report["peak_gflops"]["jax"]:.0f} GFLOP/s'
        + (f' ({peak_elsewhere})' if peak_elsewhere else '')
        + '. Any load beyond the run itself came from other processes sharing the cores: every '
        'time is then inflated, but alike in the alternating columns, so compare the ratios, '
        'not absolute times.',
        '',
    ]
    backends = [b for b in BACKEND_NOTES if b in totals]
    if 'torch' not in totals or not backends:
        lines.append('PyTorch was not measured in this run (torch not installed): no ratios.')
        return '\n'.join(lines) + '\n'
    torch = totals['torch']
    lines += [
        'JAX time / PyTorch time (PyTorch: `torch.conv2d(groups=G)` and '
        '`aten.convolution_backward` on channels-last tensors; under 1: JAX faster):',
        '',
        "| JAX kernels | forward | backward | train step's grouped convolutions (count x time) |",
        '|---|---|---|---|',
    ]
    for backend in backends:
        cells = [
            f'{_ratio(totals[backend][key] / torch[key])}x '
            f'({_seconds(totals[backend][key])} vs {_seconds(torch[key])} s)'
            for key in ('forward_s', 'backward_s', 'total_s')
        ]
        lines.append(f'| {BACKEND_NOTES[backend]} | {" | ".join(cells)} |')
    by_pass = {name: [r for r in rows if r['pass'] == name] for name in PASSES}
    spans = [
        f"with {LABELS[backend].removeprefix('JAX ')}'s kernels "
        + ', '.join(
            f'{_span([r[f"{backend}_s"] / r["torch_s"] for r in measured], _ratio)}x {name} '
            f'({_span([r[f"{backend}_gflops"] for r in measured], _gflops)} GFLOP/s)'
            for name, measured in by_pass.items()
        )
        for backend in backends
    ]
    torch_rates = ', '.join(
        f'{_span([r["torch_gflops"] for r in measured], _gflops)} GFLOP/s {name}'
        for name, measured in by_pass.items()
    )
    lines += [
        '',
        f'Per layer, JAX time / PyTorch time: {"; ".join(spans)}. PyTorch: {torch_rates}.',
    ]
    return '\n'.join(lines) + '\n'


def run(model: str, size: str, repeats: int, convs: str = 'all') -> dict[str, Any]:
    """The whole measurement; XLA flags must be configured before JAX starts (main does)."""
    import jax

    from experiments.benchmarks.jax_rows import jax_peak_row
    from nets.kernels import onednn_conv

    if convs not in CONV_SETS:
        raise ValueError(f'convs {convs!r}: valid sets are {", ".join(CONV_SETS)}')
    with_torch = version('torch') is not None
    spec = conv_model_spec(model, size)
    found = model_convolutions(spec)
    if convs == 'grouped':
        found = [c for c in found if c['groups'] > 1]
        if not found:
            raise ValueError(f'{model!r} has no grouped convolutions; measure --convs=all')
    host = machine()
    peak_size = 2048 if size == 'full' else 256
    peaks = {'jax': jax_peak_row(peak_size, ['float32'])[0]['gflops'], 'torch': None}
    if with_torch:
        from experiments.benchmarks.torch_models import torch_matmul_gflops

        peaks['torch'] = torch_matmul_gflops(peak_size, 'float32', repeats=5)
    frameworks = (
        ['xla']
        + (['onednn'] if onednn_conv.available() else [])
        + (['torch'] if with_torch else [])
    )
    rows = measure(found, repeats, frameworks)
    return {
        'model': model,
        'size': size,
        'convs': convs,
        'batch_size': spec.batch_size,
        'command': f'python -m experiments.benchmarks.conv_benchmark --model={model} '
        f'--size={size} --convs={convs} --repeats={repeats}',
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': host,
        'load_average_after': ', '.join(f'{x:.1f}' for x in os.getloadavg()),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'versions': {
            'jax': jax.__version__,
            'torch': version('torch'),
            'python': platform.python_version(),
        },
        'peak_size': peak_size,
        'peak_gflops': peaks,
        'rows': rows,
        'step_totals': step_totals(rows),
    }


def main(argv: Sequence[str]) -> None:
    del argv
    from train import host_cpu, runtime
    from train.config import default_config, model_config

    FLAGS = flags.FLAGS
    try:
        spec = conv_model_spec(FLAGS.model, FLAGS.size)
        # The XLA flags the trainer ships for the model, set before JAX starts its CPU backend.
        config = default_config()
        config.model = model_config(spec.net, **spec.fields)
        runtime.apply(runtime.resolve(config, host_cpu.host_facts()), starting_process=True)
        report = run(FLAGS.model, FLAGS.size, FLAGS.repeats, FLAGS.convs)
    except ValueError as error:  # a bad --model: the message names it and the valid ones
        raise app.UsageError(str(error)) from None
    if FLAGS.out:  # the command that wrote the files, as the reports show it
        report['command'] += f' --out={FLAGS.out}'
    write_report(report, markdown(report), FLAGS.out or None)


if __name__ == '__main__':
    # Here, not at the top: train.cli imports JAX (through data), and train_step_benchmark.py
    # imports this module (grouped_summary_markdown) into its PyTorch workers, which stay free
    # of JAX.
    from train import cli

    define_flags()
    cli.run(main)
