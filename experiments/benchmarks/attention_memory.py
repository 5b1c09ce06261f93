"""Attention needs N×M memory, measured: one self-attention layer against one LSTM layer.

Command:
  python -m experiments.benchmarks.attention_memory [--lengths=64,128,256,512,1024,2048,4096]
      [--width=128] [--heads=4] [--batch=1] [--repeats=5] [--out=docs/attention_memory]
For each sequence length L, three layers of model width D on (batch, L, D) float32 inputs:
  * `nets.layers.attention.MultiHeadAttention(num_heads=heads, implementation='plain')`: the
    course's explicit softmax(QKᵀ/√d)V, whose (batch, heads, L, L) weights are materialised;
  * the same layer with implementation='xla' (`jax.nn.dot_product_attention`);
  * `nets.layers.recurrent.RNNLayer(cell='lstm', features=D)`: a scan over the L time steps.
Each runs as a jitted training step: the loss mean(y²) of its outputs y, and its gradient with
respect to the parameters and the inputs (forward + backward, no optimiser update).

Memory comes from XLA's compiled memory analysis (`jax.jit(step).lower(...).compile()
.memory_analysis()`, a `CompiledMemoryStats`): memory = temp_size_in_bytes (the peak of the
buffers live inside the program, as XLA's buffer assignment packs them) + argument_size_in_bytes
(parameters and inputs) + output_size_in_bytes (loss and gradients). No buffer is donated, so
alias_size_in_bytes is 0 and nothing is counted twice. This is deterministic for a given jax
version and backend: the number to assert on. (`peak_memory_in_bytes` exists too, but on the
CPU backend it is only arguments + outputs, without the temporaries, so it is not used.)
Time: the compiled step is called twice untimed, then `--repeats` times with
`block_until_ready`, the three layers' calls alternating (so that a shared machine's changing
load hits them alike); the median is reported.
The slope of log(memory) against log(L), fitted over the upper half of the lengths, is ~2 for
attention (the L×L weights dominate) and ~1 for the LSTM (it keeps L time steps of activations
for the backward pass).

Hardware and time: 2-2.5 minutes on a 2-core CPU (the 4096 row dominates); the process peaks
at ~2.7 GiB resident.
Expected: memory slopes near 2 for attention and near 1 for the LSTM; on the CPU 'xla'
materialises the same L×L matrices as 'plain' (identical memory), while fused (flash) kernels
such as cuDNN's on a GPU are built to avoid them. The measured table is
docs/attention_memory.md, its reading in docs/attention.md.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from nets.layers.attention import MultiHeadAttention
from nets.layers.recurrent import RNNLayer
from train import cli

DEFAULT_LENGTHS = ('64', '128', '256', '512', '1024', '2048', '4096')
# 'attention' is the course's explicit formula and the headline column; 'attention_xla' is
# jax.nn.dot_product_attention, kept to show whether a library kernel changes the picture.
LAYERS = ('attention', 'attention_xla', 'lstm')
LABELS = {'attention': "attention ('plain')", 'attention_xla': "attention ('xla')", 'lstm': 'LSTM'}
MEMORY_FIELDS = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes')
MIB = 2.0**20

_LENGTHS = flags.DEFINE_list('lengths', list(DEFAULT_LENGTHS), 'Sequence lengths L to measure.')
_WIDTH = flags.DEFINE_integer('width', 128, 'Model width D of both layers.', lower_bound=1)
_HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads (must divide --width).', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch', 1, 'Sequences per batch.', lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    'repeats',
    5,
    'Timed calls per measurement (median reported); 0 measures memory only.',
    lower_bound=0,
)
_OUT = flags.DEFINE_string(
    'out', 'docs/attention_memory', 'Write OUT.md, OUT.json and OUT.png (empty: print only).'
)


def make_layer(layer: str, width: int, heads: int) -> Any:
    """The flax module measured under the name `layer` (one of LAYERS)."""
    if layer == 'attention':
        return MultiHeadAttention(num_heads=heads, implementation='plain')
    if layer == 'attention_xla':
        return MultiHeadAttention(num_heads=heads, implementation='xla')
    if layer == 'lstm':
        return RNNLayer(cell='lstm', features=width)
    raise ValueError(f'unknown layer {layer!r}; valid choices: {", ".join(LAYERS)}')


def compile_train_step(
    layer: str, length: int, *, width: int, heads: int, batch: int
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Compiles one training step of `layer` on (batch, length, width) inputs.

    Returns (run, stats): `run()` calls the compiled step once on fixed parameters and inputs;
    stats holds the compiled memory analysis' fields (bytes), `memory_bytes` (temp + argument
    + output) and the compile time.
    """
    if width % heads != 0 and layer != 'lstm':
        raise ValueError(f'width {width} is not divisible by heads {heads}')
    module = make_layer(layer, width, heads)
    x_shape = jax.ShapeDtypeStruct((batch, length, width), jnp.float32)
    # Compiled from shapes alone: the memory analysis needs no values, and skipping the eager
    # initialisation keeps a memory-only measurement (the test's) fast.
    params_shape = jax.eval_shape(module.init, jax.random.PRNGKey(1), x_shape)['params']

    def loss(params: Any, x: jax.Array) -> jax.Array:
        return jnp.mean(module.apply({'params': params}, x) ** 2)

    # Gradients w.r.t. inputs too, as a layer inside a deeper network needs them.
    step = jax.value_and_grad(loss, argnums=(0, 1))
    start = time.perf_counter()
    compiled = jax.jit(step).lower(params_shape, x_shape).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise RuntimeError(
            f'this backend ({jax.default_backend()}) gives no compiled memory analysis'
        )
    stats: dict[str, Any] = {
        name: int(getattr(analysis, name))
        for name in MEMORY_FIELDS + ('alias_size_in_bytes', 'generated_code_size_in_bytes')
    }
    stats['memory_bytes'] = sum(stats[name] for name in MEMORY_FIELDS)
    stats['compile_s'] = compile_s
    values: list[tuple[Any, jax.Array]] = []

    def run() -> Any:
        if not values:  # made on the first call, so that only timed measurements pay for them
            x = jax.random.normal(jax.random.PRNGKey(0), x_shape.shape, x_shape.dtype)
            values.append((module.init(jax.random.PRNGKey(1), x)['params'], x))
        return compiled(*values[0])

    return run, stats


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """name -> median seconds of `repeats` calls, after two untimed calls each (the first
    allocates, the second finds caches warm). The functions' calls alternate so that a change
    in a shared machine's load hits them all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_length(
    length: int,
    *,
    width: int = 128,
    heads: int = 4,
    batch: int = 1,
    repeats: int = 5,
    layers: Sequence[str] = LAYERS,
) -> dict[str, dict[str, Any]]:
    """layer -> memory-analysis stats (and `median_ms` when repeats > 0) at one length."""
    runs, results = {}, {}
    for layer in layers:
        runs[layer], results[layer] = compile_train_step(
            layer, length, width=width, heads=heads, batch=batch
        )
    if repeats > 0:
        for layer, seconds in time_interleaved(runs, repeats).items():
            results[layer]['median_ms'] = seconds * 1e3
    return results


def fit_slope(lengths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(length): 2 for N², 1 for N."""
    return float(np.polyfit(np.log(lengths), np.log(values), 1)[0])


def upper_half(lengths: Sequence[int]) -> list[int]:
    """The longer half of the lengths (the middle one included for an odd count), where the
    length-independent parts (parameters, code) no longer hide the growth."""
    ordered = sorted(lengths)
    return ordered[len(ordered) // 2 :]


def measure(
    lengths: Sequence[int], *, width: int, heads: int, batch: int, repeats: int
) -> dict[str, Any]:
    """The whole table: one row per length, plus the fitted slopes."""
    rows = []
    for length in lengths:
        results = measure_length(length, width=width, heads=heads, batch=batch, repeats=repeats)
        row: dict[str, Any] = {
            'length': length,
            # One (batch, heads, L, L) float32 matrix: the unit of the N² term.
            'weights_copy_mib': batch * heads * length * length * 4 / MIB,
        }
        for layer, stats in results.items():
            row[layer] = stats
        row['attention_over_lstm_memory'] = (
            results['attention']['memory_bytes'] / results['lstm']['memory_bytes']
        )
        rows.append(row)
        print(format_row(row), flush=True)
    fit_lengths = upper_half(lengths)
    by_length = {row['length']: row for row in rows}
    slopes = {'fit_lengths': fit_lengths}
    for layer in LAYERS:
        slopes[f'{layer}_memory'] = fit_slope(
            fit_lengths, [by_length[n][layer]['memory_bytes'] for n in fit_lengths]
        )
        # The temporaries alone, without the length-independent parameters and their gradients.
        slopes[f'{layer}_temp'] = fit_slope(
            fit_lengths, [by_length[n][layer]['temp_size_in_bytes'] for n in fit_lengths]
        )
        if repeats > 0:
            slopes[f'{layer}_time'] = fit_slope(
                fit_lengths, [by_length[n][layer]['median_ms'] for n in fit_lengths]
            )
    device = jax.devices()[0]
    return {
        'platform': jax.default_backend(),
        'device_kind': device.device_kind,
        'cpu_count': os.cpu_count(),
        'jax': jax.__version__,
        'width': width,
        'heads': heads,
        'batch': batch,
        'repeats': repeats,
        'memory': ' + '.join(MEMORY_FIELDS),
        'rows': rows,
        'slopes': slopes,
    }


HEADER = (
    f'{"L":>5} {"attn MiB":>9} {"attn ms":>9} {"xla MiB":>9} {"xla ms":>9} '
    f'{"LSTM MiB":>9} {"LSTM ms":>9} {"attn/LSTM mem":>13} {"L×L copy MiB":>12}'
)


def format_row(row: dict[str, Any]) -> str:
    def ms(stats: dict[str, Any]) -> str:
        return f'{stats["median_ms"]:9.1f}' if 'median_ms' in stats else f'{"-":>9}'

    a, x, r = row['attention'], row['attention_xla'], row['lstm']
    return (
        f'{row["length"]:>5} {a["memory_bytes"] / MIB:9.2f} {ms(a)} {x["memory_bytes"] / MIB:9.2f} '
        f'{ms(x)} {r["memory_bytes"] / MIB:9.2f} {ms(r)} {row["attention_over_lstm_memory"]:13.2f} '
        f'{row["weights_copy_mib"]:12.2f}'
    )


def markdown(report: dict[str, Any], command: str, wall_s: float, picture: str) -> str:
    """The report as a markdown page; `picture` is the PNG's path relative to the page."""
    slopes = report['slopes']
    timed = report['repeats'] > 0
    device = (
        f'{report["platform"]} ({report["cpu_count"]} cores)'
        if report['platform'] == 'cpu'
        else f'{report["platform"]} ({report["device_kind"]})'
    )

    def ms(stats: dict[str, Any]) -> str:
        return f'{stats["median_ms"]:.1f}' if timed else '-'

    lines = [
        '# Attention needs L×L memory: one attention layer against one LSTM layer',
        '',
        f'Generated by `{command}` in {wall_s:.0f} s on {device}, jax {report["jax"]}; load '
        f'average {report["load_average"]:.1f} at the start (a machine shared with other jobs '
        f"makes the times noisy; the memory figures are exact and deterministic). The process's "
        f'peak resident memory was {report["max_rss_mib"]:.0f} MiB: the JAX runtime, the '
        f"compiled programs and the allocator's caching come on top of the per-step figures.",
        '',
        f'One training step (loss mean(y²), gradient w.r.t. parameters and inputs) of a layer of '
        f'width D={report["width"]} on (batch={report["batch"]}, L, D) float32 inputs: '
        f"`MultiHeadAttention(num_heads={report['heads']})` with implementation 'plain' "
        f"(softmax(QKᵀ/√d)V written out) and 'xla' (`jax.nn.dot_product_attention`), and "
        f"`RNNLayer(cell='lstm', features={report['width']})`. Memory is XLA's compiled memory "
        f'analysis, `{report["memory"]}` (MiB = 2²⁰ bytes); time is the median of '
        f"{report['repeats']} calls. 'L×L copy' is one (batch, heads, L, L) float32 matrix.",
        '',
        '| L | attention MiB | attention ms | attention (xla) MiB | attention (xla) ms '
        '| LSTM MiB | LSTM ms | attention / LSTM memory | L×L copy MiB |',
        '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for row in report['rows']:
        a, x, r = row['attention'], row['attention_xla'], row['lstm']
        lines.append(
            f'| {row["length"]} | {a["memory_bytes"] / MIB:.2f} | {ms(a)} | '
            f'{x["memory_bytes"] / MIB:.2f} | {ms(x)} | {r["memory_bytes"] / MIB:.2f} | '
            f'{ms(r)} | {row["attention_over_lstm_memory"]:.2f} | '
            f'{row["weights_copy_mib"]:.2f} |'
        )
    fit = ', '.join(map(str, slopes['fit_lengths']))
    lines += [
        '',
        f'Log-log slopes fitted over L = {fit} (2 means L², 1 means L):',
        '',
        '| layer | memory slope | temp_size_in_bytes slope | time slope |',
        '|---|---:|---:|---:|',
    ]
    for layer in LAYERS:
        time_slope = f'{slopes[f"{layer}_time"]:.2f}' if timed else '-'
        lines.append(
            f'| {LABELS[layer]} | {slopes[f"{layer}_memory"]:.2f} | '
            f'{slopes[f"{layer}_temp"]:.2f} | {time_slope} |'
        )
    last = report['rows'][-1]
    xla_share = last['attention_xla']['memory_bytes'] / last['attention']['memory_bytes']
    if xla_share > 0.5:
        xla_note = (
            f"On this backend ({report['platform']}) 'xla' materialises the L×L matrices "
            f"as 'plain' does ({xla_share:.0%} of its memory); fused (flash) kernels such "
            f"as cuDNN's on a GPU are built to avoid them (not measured here)."
        )
    else:
        xla_note = f"Here 'xla' needs {xla_share:.0%} of the memory of 'plain'."
    lines += [
        '',
        f'At L={last["length"]} the attention step needs '
        f'{last["attention"]["temp_size_in_bytes"] / MIB / last["weights_copy_mib"]:.1f} L×L '
        f"copies' worth of temporaries (the softmax weights kept for the backward pass and the "
        f"gradients flowing through them), {last['attention_over_lstm_memory']:.0f}× the LSTM's "
        f'memory. The LSTM keeps only its L steps of activations, so its memory grows linearly; '
        f'it pays instead in time, with L steps that must run one after another. '
        f'{xla_note}',
        '',
        f'![memory and time against L]({picture})',
        '',
    ]
    return '\n'.join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    """Log-log memory (and time) against L for each layer, with slope-2 and slope-1 guides."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    lengths = np.array([row['length'] for row in report['rows']], float)
    timed = report['repeats'] > 0
    fig, axes = plt.subplots(
        1, 2 if timed else 1, figsize=(11 if timed else 5.5, 4.2), squeeze=False
    )
    styles = {
        'attention': ('tab:red', 'o-'),
        'attention_xla': ('tab:orange', 's--'),
        'lstm': ('tab:blue', '^-'),
    }
    panels = [('memory_bytes', 'memory (MiB)', 1 / MIB, 'memory of one training step')]
    if timed:
        panels.append(('median_ms', 'time (ms)', 1.0, 'time of one training step (median)'))
    for ax, (key, ylabel, scale, title) in zip(axes[0], panels):
        for layer in LAYERS:
            color, style = styles[layer]
            values = np.array([row[layer][key] for row in report['rows']]) * scale
            ax.plot(lengths, values, style, color=color, label=LABELS[layer])
        # Reference slopes through the last attention and LSTM points: the eye compares the
        # curves' ends with N² and N rather than judging curvature on a log-log plot.
        top = report['rows'][-1]
        for layer, power, name in (('attention', 2, 'slope 2 (L²)'), ('lstm', 1, 'slope 1 (L)')):
            anchor = top[layer][key] * scale
            ax.plot(
                lengths, anchor * (lengths / lengths[-1]) ** power, ':', color='gray', linewidth=1.2
            )
            ax.annotate(
                name,
                (lengths[0], anchor * (lengths[0] / lengths[-1]) ** power),
                textcoords='offset points',
                xytext=(2, 4),
                fontsize=8,
                color='gray',
            )
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('sequence length L')
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f'self-attention vs LSTM, width {report["width"]}, {report["heads"]} heads, '
        f'batch {report["batch"]} ({report["platform"]}, jax {report["jax"]})',
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    try:
        lengths = sorted({int(n) for n in _LENGTHS.value})
    except ValueError:
        raise app.UsageError(f'--lengths must be integers, got {_LENGTHS.value}') from None
    if len(lengths) < 2 or lengths[0] < 1:
        raise app.UsageError(f'--lengths needs at least two positive lengths, got {lengths}')
    if _WIDTH.value % _HEADS.value != 0:
        raise app.UsageError(f'--width {_WIDTH.value} is not divisible by --heads {_HEADS.value}')
    start = time.perf_counter()
    load_average = os.getloadavg()[0]
    device = jax.devices()[0]
    print(
        f'{device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores, '
        f'jax {jax.__version__}; '
        f'width {_WIDTH.value}, {_HEADS.value} heads, batch {_BATCH.value}, median of '
        f'{_REPEATS.value}; memory = {" + ".join(MEMORY_FIELDS)}',
        flush=True,
    )
    print(HEADER, flush=True)
    report = measure(
        lengths, width=_WIDTH.value, heads=_HEADS.value, batch=_BATCH.value, repeats=_REPEATS.value
    )
    wall_s = time.perf_counter() - start
    report['wall_s'] = wall_s
    report['load_average'] = load_average
    # ru_maxrss counts KiB on Linux but bytes on macOS.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report['max_rss_mib'] = max_rss / (MIB if sys.platform == 'darwin' else 1024)
    slopes = report['slopes']
    print(
        f'log-log slope of memory vs L over L = {", ".join(map(str, slopes["fit_lengths"]))}: '
        + ', '.join(f'{LABELS[layer]} {slopes[f"{layer}_memory"]:.2f}' for layer in LAYERS)
        + ' (expect ~2 for attention, ~1 for the LSTM)'
    )
    print(
        '  temp_size_in_bytes alone: '
        + ', '.join(f'{LABELS[layer]} {slopes[f"{layer}_temp"]:.2f}' for layer in LAYERS)
    )
    if _REPEATS.value > 0:
        print(
            'log-log slope of time vs L: '
            + ', '.join(f'{LABELS[layer]} {slopes[f"{layer}_time"]:.2f}' for layer in LAYERS)
        )
    print(f'wall time {wall_s:.0f} s')
    if _OUT.value:
        command = 'python -m experiments.benchmarks.attention_memory' + ''.join(
            f' --{name}={value}'
            for name, value in (
                ('lengths', ','.join(map(str, lengths))),
                ('width', _WIDTH.value),
                ('heads', _HEADS.value),
                ('batch', _BATCH.value),
                ('repeats', _REPEATS.value),
                ('out', _OUT.value),
            )
        )
        report['command'] = command
        os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
        with open(_OUT.value + '.json', 'w') as f:
            json.dump(report, f, indent=2)
        with open(_OUT.value + '.md', 'w') as f:
            f.write(markdown(report, command, wall_s, os.path.basename(_OUT.value) + '.png'))
        plot(report, _OUT.value + '.png')
        print(f'wrote {_OUT.value}.md, {_OUT.value}.json, {_OUT.value}.png')


if __name__ == '__main__':
    cli.run(main)
