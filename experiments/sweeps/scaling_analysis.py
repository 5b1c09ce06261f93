"""The analysis of a scaling study's runs: LR-tuned points, each family's frontier and laws (fitted
on all of it, and tested by predicting its held-out largest budgets), compute-optimal size,
epochs and learning rate, and each ConvNet family's frontier against each ViT family's with
bootstrap intervals and a verdict computed from them. Reads the run records that
experiments/sweeps/scaling_study.py collects; trains nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from experiments.analysis import compute
from experiments.analysis import scaling_laws as laws
from experiments.analysis import scaling_prediction as prediction
from experiments.sweeps.scaling_grid import FINISHED

# The model FLOP utilisation assumed when a study's FLOPs are converted to TPU-v4 core-hours.
ASSUMED_MFU = 0.4


def _try_fit(
    fit: Callable[..., laws.Fit], x: Sequence[float], y: Sequence[float], num_resamples: int
) -> dict[str, Any]:
    try:
        return laws.summarize_fit(fit(x, y, num_resamples=num_resamples))
    except (ValueError, RuntimeError) as error:
        return {'error': str(error)}


def tuned_points(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best learning rate of each (family, size, epoch budget): Smith et al. tune the rate
    per budget. Diverged runs count as the worst rate."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r['family'], r['size'], r['epochs']), []).append(r)
    points = []
    for (family, size, epochs), runs in groups.items():
        finished = [r for r in runs if r['status'] == FINISHED]
        if not finished:
            continue
        best = min(finished, key=lambda r: r['eval_loss'])
        rate, at_edge = laws.best_learning_rate(
            [r['learning_rate'] for r in runs],
            [r['eval_loss'] if r['status'] == FINISHED else math.inf for r in runs],
        )
        points.append(
            {
                'family': family,
                'kind': best.get('kind', ''),
                'size': size,
                'epochs': epochs,
                'params': best['params'],
                'compute': best['train_flops'],
                'core_hours': best['core_hours'],
                'device_seconds': best.get('train_device_seconds', math.nan),
                'device_kind': best.get('device_kind') or best.get('platform') or '',
                'tpu_v4_core_hours': compute.tpu_v4_core_hours(best['train_flops'], ASSUMED_MFU),
                'loss': best['eval_loss'],
                'accuracy': best['eval_accuracy'],
                'best_grid_lr': best['learning_rate'],
                'optimal_lr': rate,
                'lr_at_grid_edge': at_edge,
                'learning_rates_tried': sorted(r['learning_rate'] for r in runs),
            }
        )
    return sorted(points, key=lambda p: (p['family'], p['compute']))


def analyze_family(points: Sequence[dict[str, Any]], num_resamples: int) -> dict[str, Any]:
    """Frontier, the laws (fitted on all of it and tested on its held-out largest budgets),
    compute-optimal size and epochs, and optimal LR of one family."""
    compute_values = [p['compute'] for p in points]
    losses = [p['loss'] for p in points]
    frontier = [points[i] for i in laws.pareto_frontier(compute_values, losses)]
    fx, fy = [p['compute'] for p in frontier], [p['loss'] for p in frontier]
    optimal = laws.compute_optimal(
        [p['size'] for p in points],
        [p['params'] for p in points],
        compute_values,
        losses,
        [p['epochs'] for p in points],
    )
    # Levels where only one size competed say nothing about which size is best; a cheaper run
    # chosen at several levels is one observation.
    contested = list({(o.spent, o.size): o for o in optimal if o.candidates >= 2}.values())
    learning_rates = [p for p in points if math.isfinite(p['optimal_lr'])]
    return {
        'kind': points[0].get('kind', '') if points else '',
        'points': list(points),
        'frontier': frontier,
        'power_law': _try_fit(laws.fit_power_law, fx, fy, num_resamples),
        'saturating': _try_fit(laws.fit_saturating, fx, fy, num_resamples),
        'saturating_power': _try_fit(laws.fit_saturating_power, fx, fy, num_resamples),
        'held_out': prediction.compare_laws(fx, fy, num_resamples=num_resamples),
        'compute_optimal': [vars(o) for o in optimal],
        'optimal_params_fit': _try_fit(
            laws.fit_log_linear,
            [o.spent for o in contested],
            [o.params for o in contested],
            num_resamples,
        ),
        'optimal_epochs_fit': _try_fit(
            laws.fit_log_linear,
            [o.spent for o in contested],
            [o.epochs for o in contested],
            num_resamples,
        ),
        'optimal_lr_fit': _try_fit(
            laws.fit_log_linear,
            [p['epochs'] for p in learning_rates],
            [p['optimal_lr'] for p in learning_rates],
            num_resamples,
        ),
        'lr_at_grid_edge': sum(p['lr_at_grid_edge'] for p in points),
    }


def analyze(records: Sequence[dict[str, Any]], num_resamples: int = 1000) -> dict[str, Any]:
    """Each family's analysis (`analyze_family`), by family name."""
    points = tuned_points(records)
    families = sorted({p['family'] for p in points})
    return {
        family: analyze_family([p for p in points if p['family'] == family], num_resamples)
        for family in families
    }


def compare_families(
    analysis: dict[str, Any], num_resamples: int = 1000, num_levels: int = 8
) -> list[dict[str, Any]]:
    """Each ConvNet family's frontier against each ViT family's: the difference of their
    frontier power laws at `num_levels` shared compute levels with bootstrap intervals, the
    verdict sentence computed from it, and their compute-optimal exponents side by side."""
    convnets = [f for f, r in analysis.items() if r['kind'] == 'convnet']
    vits = [f for f, r in analysis.items() if r['kind'] == 'vit']
    comparisons = []
    for a in convnets:
        for b in vits:
            fa, fb = analysis[a]['frontier'], analysis[b]['frontier']
            entry: dict[str, Any] = {'convnet': a, 'vit': b}
            try:
                difference = prediction.frontier_difference(
                    [p['compute'] for p in fa],
                    [p['loss'] for p in fa],
                    [p['compute'] for p in fb],
                    [p['loss'] for p in fb],
                    num_levels=num_levels,
                    num_resamples=num_resamples,
                )
            except ValueError as error:
                entry.update(levels=[], verdict=f'No verdict for {a} against {b}: {error}.')
            else:
                entry.update(difference, verdict=prediction.verdict(a, b, difference['levels']))
            entry['exponents'] = [
                prediction.exponent_comparison(
                    a, analysis[a][key], b, analysis[b][key], f'{quantity} ∝ {variable}^p'
                )
                for key, quantity, variable in (
                    ('optimal_params_fit', 'compute-optimal parameters', 'C'),
                    ('optimal_epochs_fit', 'compute-optimal epochs', 'C'),
                    ('optimal_lr_fit', 'optimal learning rate', 'epochs'),
                )
            ]
            comparisons.append(entry)
    return comparisons
