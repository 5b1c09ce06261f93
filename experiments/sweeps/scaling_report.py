"""The scaling study's pictures and report: loss against compute with each family's frontier
and fitted laws, optimal learning rate against epochs, compute-optimal size and budget, and
`report.md` with the fitted numbers. Reads what experiments/sweeps/scaling_study.py collected
(run records and the analysis); trains nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps.scaling_grid import DIVERGED, FINISHED, size_key

# --- Plots -------------------------------------------------------------------------------------


def _law_curve(fit: dict[str, Any], low: float, high: float) -> tuple[Any, Any] | None:
    import numpy as np

    if 'params' not in fit:
        return None
    x = np.geomspace(low, high, 100)
    p = fit['params']
    if fit['law'] == 'power':
        return x, p['a'] * x ** (-p['b'])
    return x, p['c'] + p['a'] * (x + p['d']) ** (-p['b'])


def _log_axes(ax: Any, y_plain: bool = True) -> None:
    """Log-log axes whose labels do not collide: no labels on minor x ticks, and plain numbers
    on y, where a loss range spans less than a decade."""
    from matplotlib import ticker

    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if y_plain:
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%.3g'))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter('%.3g'))


def write_plots(
    records: Sequence[dict[str, Any]], analysis: dict[str, Any], workdir: Path
) -> list[Path]:
    """loss_vs_compute.png, frontiers.png, optimal_lr_vs_epochs.png and compute_optimal.png in
    the workdir."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families = list(analysis)
    colours = plt.get_cmap('viridis')
    written = []

    # 1. Every run, each size's LR-tuned budgets joined, the frontier and both laws.
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.6), squeeze=False)
    for ax, family in zip(axes[0], families):
        result = analysis[family]
        sizes = list(
            dict.fromkeys(p['size'] for p in sorted(result['points'], key=lambda p: p['params']))
        )
        for i, size in enumerate(sizes):
            colour = colours(i / max(len(sizes) - 1, 1))
            tuned = sorted(
                (p for p in result['points'] if p['size'] == size), key=lambda p: p['compute']
            )
            ax.plot(
                [p['compute'] for p in tuned],
                [p['loss'] for p in tuned],
                'o-',
                color=colour,
                label=f'{size} ({tuned[0]["params"]:,.0f} params)',
                markersize=5,
            )
            others = [
                r
                for r in records
                if r['family'] == family and r['size'] == size and r['status'] == FINISHED
            ]
            ax.scatter(
                [r['train_flops'] for r in others],
                [r['eval_loss'] for r in others],
                marker='x',
                color=colour,
                alpha=0.4,
                s=18,
            )
        frontier = result['frontier']
        ax.plot(
            [p['compute'] for p in frontier],
            [p['loss'] for p in frontier],
            's',
            mfc='none',
            mec='black',
            markersize=11,
            label='frontier',
        )
        low = min((p['compute'] for p in frontier), default=1.0)
        high = max((p['compute'] for p in frontier), default=1.0)
        for key, style in (('power_law', '--'), ('saturating', '-')):
            curve = _law_curve(result[key], low, high)
            if curve is not None:
                b = result[key]['params']['b']
                ax.plot(
                    *curve,
                    style,
                    color='black',
                    lw=1,
                    label=f'{result[key]["formula"]}, b = {b:.3f}',
                )
        _log_axes(ax)
        ax.set_xlabel('training FLOPs (XLA count)')
        ax.set_ylabel('held-out loss')
        ax.set_title(f'{family}: LR-tuned budgets (o), other LRs (x)')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'loss_vs_compute.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 2. The families' frontiers and power laws on one figure.
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for i, family in enumerate(families):
        result = analysis[family]
        colour = plt.get_cmap('tab10')(i)
        frontier = result['frontier']
        ax.plot(
            [p['compute'] for p in frontier],
            [p['loss'] for p in frontier],
            'o',
            color=colour,
            label=f'{family} frontier',
        )
        points = result['points']
        curve = _law_curve(
            result['power_law'],
            min(p['compute'] for p in points),
            max(p['compute'] for p in points),
        )
        if curve is not None:
            p = result['power_law']['params']
            ax.plot(*curve, '--', color=colour, label=f'{family}: {p["a"]:.3g}·C^-{p["b"]:.3f}')
        curve = _law_curve(
            result['saturating'],
            min(p['compute'] for p in points),
            max(p['compute'] for p in points),
        )
        if curve is not None:
            ax.plot(*curve, '-', color=colour, lw=1, alpha=0.7, label=f'{family}: saturating fit')
    _log_axes(ax)
    ax.set_xlabel('training FLOPs (XLA count)')
    ax.set_ylabel('held-out loss')
    ax.set_title('Pareto frontiers')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'frontiers.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 3. The best learning rate of each budget, one line per size.
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False)
    for ax, family in zip(axes[0], families):
        points = analysis[family]['points']
        sizes = list(dict.fromkeys(p['size'] for p in sorted(points, key=lambda p: p['params'])))
        for i, size in enumerate(sizes):
            rows = sorted((p for p in points if p['size'] == size), key=lambda p: p['epochs'])
            # Sizes often share a rate: a small vertical offset keeps every line visible.
            offset = 2.0 ** (0.03 * (i - (len(sizes) - 1) / 2))
            ax.plot(
                [p['epochs'] for p in rows],
                [p['optimal_lr'] * offset for p in rows],
                'o-',
                color=colours(i / max(len(sizes) - 1, 1)),
                label=size,
                alpha=0.85,
            )
        tried = sorted({lr for p in points for lr in p['learning_rates_tried']})
        for lr in tried:
            ax.axhline(lr, color='grey', lw=0.5, ls=':')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log', base=2)
        ax.set_xticks(sorted({p['epochs'] for p in points}))
        ax.set_xticklabels([f'{e:g}' for e in sorted({p['epochs'] for p in points})])
        ax.set_yticks(tried)
        ax.set_yticklabels([f'{lr:g}' for lr in tried])
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        low, high = min(tried), max(tried)
        ax.set_ylim(low / 2**0.5, high * 2**0.5)
        ax.set_xlabel('epoch budget')
        ax.set_ylabel('best learning rate (dotted: the grid; sizes offset)')
        ax.set_title(family)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'optimal_lr_vs_epochs.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 4. Compute-optimal parameters and epochs against compute.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, family in enumerate(families):
        colour = plt.get_cmap('tab10')(i)
        optimal = analysis[family]['compute_optimal']
        for ax, key, fit_key in (
            (axes[0], 'params', 'optimal_params_fit'),
            (axes[1], 'epochs', 'optimal_epochs_fit'),
        ):
            contested = [o for o in optimal if o['candidates'] >= 2]
            alone = [o for o in optimal if o['candidates'] < 2]
            ax.plot(
                [o['spent'] for o in contested],
                [o[key] for o in contested],
                'o',
                color=colour,
                label=f'{family} (sizes compared: fitted)',
                markersize=5,
            )
            ax.plot(
                [o['spent'] for o in alone],
                [o[key] for o in alone],
                'o',
                mfc='none',
                color=colour,
                label=f'{family} (one size only)',
                markersize=5,
            )
            fit = analysis[family][fit_key]
            if 'params' in fit:
                xs = sorted(o['spent'] for o in optimal)
                ax.plot(
                    xs,
                    [fit['params']['k'] * x ** fit['params']['p'] for x in xs],
                    '--',
                    color=colour,
                    label=f'{family}: ∝ C^{fit["params"]["p"]:.2f}',
                )
    for ax, label in zip(axes, ('compute-optimal parameters', 'compute-optimal epochs')):
        _log_axes(ax, y_plain=False)
        ax.set_xlabel('training FLOPs')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'compute_optimal.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# --- Report ------------------------------------------------------------------------------------


def _fit_text(fit: dict[str, Any]) -> str:
    if 'params' not in fit:
        return f'not fitted ({fit["error"]})'
    parts = []
    for name, value in fit['params'].items():
        low, high = fit['intervals_95'].get(name, (math.nan, math.nan))
        parts.append(f'{name} = {value:.4g} [{low:.4g}, {high:.4g}]')
    return (
        f'{fit["formula"]}: ' + ', '.join(parts) + f' ({fit["num_points"]} points, '
        f'{fit["num_bootstrap"]} bootstrap fits, '
        f'rms log residual {fit["residual_rms_log"]:.3f})'
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]


def _cost_lines(
    finished: Sequence[dict[str, Any]], sweep_log: Sequence[dict[str, Any]], sweep_seconds: float
) -> list[str]:
    lines = []
    if finished:
        wall = sum(r['wall_seconds'] for r in finished) / 60
        loops = sum(r['train_loop_seconds'] for r in finished) / 60
        core_hours = sum(r['wall_core_hours'] for r in finished)
        lines.append(
            f"The finished runs took {wall:.1f} min of wall time (each run's sessions, "
            f'compilation and evaluation included; {core_hours:.3f} core-hours at '
            f'{finished[0]["cores_per_device"]} cores per device), of which the training '
            f'loops took {loops:.1f} min.'
        )
    for entry in sweep_log:
        when = time.strftime('%Y-%m-%d %H:%M', time.gmtime(entry['started']))
        lines.append(
            f'- driver invocation of {when} UTC: {entry["train_seconds"] / 60:.1f} min '
            f'training the grid ({entry["counts"]}) on {entry["host_cores"]} host cores'
        )
    if sweep_seconds:
        took = f'{sweep_seconds / 60:.1f} min' if sweep_seconds >= 60 else f'{sweep_seconds:.0f} s'
        lines.append(f'- this invocation of the driver, analysis included: {took}')
    return lines + ['']


def _model_lines(
    preset: scaling.Preset, families: Sequence[str], flops: dict[str, Any]
) -> list[str]:
    rows = []
    for family in families:
        for size, rung in preset.families[family].sizes.items():
            entry = flops.get(size_key(preset, family, size))
            if entry is None:
                continue
            xla = entry['train_step_flops']
            transformer = ''
            if 'transformer_6n_flops' in entry:
                transformer = (
                    f'{entry["transformer_6n_flops"] / xla:.3f} '
                    f'({entry["transformer_6n_attention_flops"] / xla:.3f})'
                )
            rows.append(
                (
                    family,
                    size,
                    rung.description,
                    f'{entry["params"]:,.0f}',
                    f'{entry["forward_flops_per_example"] / 1e6:.2f}',
                    f'{xla / 1e9:.3f}',
                    f'{entry["analytic_train_step_flops"] / xla:.3f}',
                    transformer,
                )
            )
    header = (
        'family',
        'size',
        'model',
        'parameters',
        'forward MFLOPs/example',
        'train GFLOPs/step',
        'analytic 3x(conv+matmul) / XLA',
        '6N(+attention) / XLA',
    )
    return ['## Models', ''] + _table(header, rows) + ['']


def _family_lines(family: str, result: dict[str, Any]) -> list[str]:
    frontier_ids = {(p['size'], p['epochs']) for p in result['frontier']}
    rows = []
    for p in sorted(result['points'], key=lambda p: (p['params'], p['epochs'])):
        edge = ' (edge)' if p['lr_at_grid_edge'] else ''
        on_frontier = 'yes' if (p['size'], p['epochs']) in frontier_ids else ''
        rows.append(
            (
                p['size'],
                f'{p["epochs"]:g}',
                f'{p["best_grid_lr"]:g}{edge}',
                f'{p["loss"]:.4f}',
                f'{p["accuracy"]:.2%}',
                f'{p["compute"]:.3g}',
                f'{p["core_hours"]:.4f}',
                on_frontier,
            )
        )
    lines = [f'## {family}', ''] + _table(
        (
            'size',
            'epochs',
            'best LR on the grid',
            'held-out loss',
            'accuracy',
            'training FLOPs',
            'core-hours',
            'on frontier',
        ),
        rows,
    )

    contested = [o for o in result['compute_optimal'] if o['candidates'] >= 2]
    longest = max(p['epochs'] for p in result['points'])
    at_longest = sum(math.isclose(o['epochs'], longest, rel_tol=1e-6) for o in contested)
    distinct = len({(o['size'], o['spent']) for o in contested})
    budget_note = (
        f'- Levels where sizes were compared: {len(contested)} ({distinct} distinct '
        f'choices, the points of the two fits above); at {at_longest} of them the '
        f'best choice trains for the longest budget of the grid ({longest:g} epochs)'
    )
    if contested and at_longest == len(contested):
        budget_note += ': longer budgets belong in the grid'
    edge_note = (
        '- Budgets whose best rate is the lowest or highest of the grid, so that the '
        f'optimum is not bracketed: {result["lr_at_grid_edge"]} of '
        f'{len(result["points"])}'
    )
    if len(result['points'][0]['learning_rates_tried']) < 3:
        edge_note += ' (a grid of two rates never brackets it)'
    lines += [
        '',
        f'- Power law on the frontier: {_fit_text(result["power_law"])}',
        f'- Saturating law (Zhai et al.): {_fit_text(result["saturating"])}',
        '- Compute-optimal parameters N_opt = k·C^p: ' + _fit_text(result['optimal_params_fit']),
        f'- Compute-optimal epochs E_opt = k·C^p: {_fit_text(result["optimal_epochs_fit"])}',
        budget_note,
        '- Optimal learning rate vs epoch budget, LR_opt = k·E^p: '
        + _fit_text(result['optimal_lr_fit']),
        edge_note,
        '',
    ]
    rows = [
        (
            f'{o["compute"]:.3g}',
            o['size'],
            f'{o["params"]:,.0f}',
            f'{o["epochs"]:.3g}',
            f'{o["spent"]:.3g}',
            f'{o["loss"]:.4f}',
            o['candidates'],
        )
        for o in result['compute_optimal']
    ]
    return (
        lines
        + _table(
            (
                'compute level',
                'best size',
                'its parameters',
                'epochs',
                'compute it spends',
                'loss',
                'sizes compared',
            ),
            rows,
        )
        + ['']
    )


def _comparison_lines(analysis: dict[str, Any]) -> list[str]:
    names = list(analysis)
    common_low = max(min(p['compute'] for p in analysis[f]['points']) for f in names)
    common_high = min(max(p['compute'] for p in analysis[f]['points']) for f in names)
    if common_low >= common_high:
        return ['## Frontiers compared', '', "- the families' compute ranges do not overlap", '']
    lines = ['## Frontiers compared', '']
    for level in (common_low, math.sqrt(common_low * common_high), common_high):
        values = []
        for f in names:
            fit = analysis[f]['power_law']
            if 'params' in fit:
                loss = fit['params']['a'] * level ** -fit['params']['b']
                values.append(f'{f} {loss:.4f}')
        lines.append(f'- at {level:.3g} FLOPs the power laws give: ' + ', '.join(values))
    return lines + ['']


def write_report(
    preset: scaling.Preset,
    specs: Sequence[scaling.RunSpec],
    records: Sequence[dict[str, Any]],
    analysis: dict[str, Any],
    flops: dict[str, Any],
    workdir: Path,
    figures: Sequence[Path],
    sweep_seconds: float = 0.0,
    sweep_log: Sequence[dict[str, Any]] = (),
) -> Path:
    """`<workdir>/report.md`: the grid, its cost, the models' FLOP counts and checks, and per
    family the LR-tuned runs, the fitted laws with their intervals, the compute-optimal choices
    and the learning rates; then the frontiers compared and the figures."""
    finished = [r for r in records if r['status'] == FINISHED]
    diverged = [r for r in records if r['status'] == DIVERGED]
    families = sorted({s.family for s in specs})
    budgets = sorted({s.epochs for s in specs})
    lines = [
        f'# Scaling study `{preset.name}`',
        '',
        f'Data: `{preset.dataset}` train split `{preset.train_split}`, held-out '
        f'`{preset.eval_split}`, images {preset.image_shape}; batch {preset.batch_size}. '
        f'Grid: families {families} x sizes x epoch budgets {budgets} (each its own warmup '
        f'+ cosine schedule) x learning rates a factor 2 apart: {len(specs)} runs, '
        f'{len(finished)} finished, {len(diverged)} diverged, '
        f'{len(specs) - len(records)} not run yet.',
        '',
        "Training FLOPs are XLA's count of the compiled train step (forward, backward, "
        'optimiser; multiply-add = 2; loop bodies multiplied by their trip counts) times the '
        "steps; evaluation is not included. Core-hours are the training loop's measured "
        'seconds (from the logged throughput) x devices x cores per device.',
        '',
    ]
    lines += _cost_lines(finished, sweep_log, sweep_seconds)
    lines += _model_lines(preset, families, flops)
    for family, result in analysis.items():
        lines += _family_lines(family, result)
    if len(analysis) >= 2:
        lines += _comparison_lines(analysis)
    if diverged:
        lines += ['## Diverged runs', '']
        lines += [f'- {r["run_id"]}: {r["error"][:120]}' for r in diverged] + ['']
    lines += ['## Figures', ''] + [f'![{p.stem}]({p.name})' for p in figures] + ['']
    path = workdir / 'report.md'
    path.write_text('\n'.join(lines))
    return path
