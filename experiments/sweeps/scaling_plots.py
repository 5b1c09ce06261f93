"""The scaling study's pictures: loss against compute with each family's frontier and fitted
laws, the families' frontiers together, the difference of a ConvNet and a ViT frontier with its
bootstrap intervals, optimal learning rate against epochs, and compute-optimal size and budget.
Reads what experiments/sweeps/scaling_study.py collected and analysed; trains nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.analysis.scaling_laws import law_value
from experiments.sweeps.scaling_grid import FINISHED


def _law_curve(fit: dict[str, Any], low: float, high: float) -> tuple[Any, Any] | None:
    import numpy as np

    if 'params' not in fit:
        return None
    x = np.geomspace(low, high, 100)
    return x, law_value(fit['law'], fit['params'], x)


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
    records: Sequence[dict[str, Any]],
    analysis: dict[str, Any],
    workdir: Path,
    comparisons: Sequence[dict[str, Any]] = (),
) -> list[Path]:
    """loss_vs_compute.png, frontiers.png, optimal_lr_vs_epochs.png, compute_optimal.png and,
    with `comparisons` (scaling_analysis.compare_families), frontier_difference.png in the
    workdir."""
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
        for key, style in (('power_law', '--'), ('saturating', '-'), ('saturating_power', ':')):
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

    # 5. ConvNet frontier / ViT frontier at the shared compute levels, with 95% intervals.
    compared = [c for c in comparisons if c.get('levels')]
    if compared:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, entry in enumerate(compared):
            levels = entry['levels']
            x = [row['compute'] for row in levels]
            ratio = [row['loss_ratio'] for row in levels]
            low = [math.exp(row['interval_95'][0]) for row in levels]
            high = [math.exp(row['interval_95'][1]) for row in levels]
            colour = plt.get_cmap('tab10')(i)
            ax.plot(x, ratio, 'o-', color=colour, label=f'{entry["convnet"]} / {entry["vit"]}')
            ax.fill_between(x, low, high, color=colour, alpha=0.2)
        ax.axhline(1.0, color='black', lw=0.8)
        ax.set_xscale('log')
        ax.set_xlabel('training FLOPs')
        ax.set_ylabel('frontier loss ratio, ConvNet / ViT (95% bootstrap)')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(workdir / 'frontier_difference.png')
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
