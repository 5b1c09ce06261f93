"""Scaling laws tested by what they predict, and two families' frontiers compared with intervals.

- `predict_held_out`: fit a law on a frontier's smaller compute budgets and predict the held-out
  largest ones; the error is the mean |log(predicted / measured)| over the held-out points (about
  the relative error), with a percentile bootstrap interval from refits on resampled fitting
  points.
- `compare_laws`: the power law L = a·C^(-b) against the saturating power law L = a·C^(-b) + c on
  the same split, with a paired bootstrap of the difference of their errors; which form predicts
  better is read off that interval, and a degenerate saturating fit (its floor c at 0, at the
  best loss seen, or not pinned down by the points) is named.
- `frontier_difference`: log L_A(C) − log L_B(C) of two families' frontier power laws at
  compute levels inside both families' range, with bootstrap intervals from refits of each
  frontier on resampled points; each level is 'below', 'above' or 'indistinguishable'.
- `verdict`: the sentence that says so, written from those numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.analysis import scaling_laws as laws

HELD_OUT_LAWS = ('power', 'saturating_power')
LEVEL = 0.95
BELOW, ABOVE, INDISTINGUISHABLE = 'below', 'above', 'indistinguishable'


def _percentiles(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _clean(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite positive points sorted by x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    order = np.argsort(x[keep], kind='stable')
    return x[keep][order], y[keep][order]


def default_held_out(num_points: int) -> int:
    """How many of the largest budgets to hold out: a quarter of the points, at least 2 (one
    held-out point is a single residual, not a prediction test)."""
    return max(2, num_points // 4)


def _log_error(law: str, params: dict[str, float], x: np.ndarray, y: np.ndarray) -> float:
    predicted = laws.law_value(law, params, x)
    if not np.all(np.isfinite(predicted)) or np.any(predicted <= 0):
        return math.inf
    return float(np.mean(np.abs(np.log(predicted) - np.log(y))))


def saturating_degeneracy(
    params: dict[str, float], intervals: dict[str, tuple[float, float]], best_loss: float
) -> str:
    """Why a fit of L = a·C^(-b) + c says nothing beyond the power law, or '' when it does:
    its floor c is ~0 or its interval reaches 0 (it is the power law), c sits at the best loss
    seen (the bound: the curve flattens right at the last point), its interval spans most of
    [0, best loss] (the points do not pin it down), or its exponent is at the fit's bound."""
    c, b = params['c'], params['b']
    low, high = intervals.get('c', (c, c))
    if c <= 0.02 * best_loss or low <= 0.01 * best_loss:
        return (
            f'c -> 0 (c = {c:.3g}, {LEVEL:.0%} interval [{low:.3g}, {high:.3g}] reaches 0): '
            'the saturating form reduces to the power law'
        )
    if c >= 0.98 * best_loss:
        return (
            f'c = {c:.4g} sits at its bound, the best loss seen ({best_loss:.4g}): '
            'the floor is not identified'
        )
    if high - low > 0.5 * best_loss:
        return (
            f'c is unidentifiable: its {LEVEL:.0%} interval [{low:.3g}, {high:.3g}] spans '
            f'{(high - low) / best_loss:.0%} of the best loss seen'
        )
    if b >= 0.98 * laws.B_MAX:
        return f'the exponent b = {b:.3g} is at the bound of the fit ({laws.B_MAX:g})'
    return ''


def predict_held_out(
    compute: Sequence[float],
    loss: Sequence[float],
    law: str,
    *,
    num_held_out: int | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fits `law` on all but the `num_held_out` largest-compute points (default
    `default_held_out`) and predicts those; bootstrap refits on resampled fitting points give
    intervals for the parameters and the held-out error. Raises ValueError when the fitting
    points cannot determine the law."""
    x, y = _clean(compute, loss)
    held = default_held_out(len(x)) if num_held_out is None else num_held_out
    fit_x, fit_y, test_x, test_y = x[:-held], y[:-held], x[-held:], y[-held:]
    if held < 1 or len(np.unique(fit_x)) < laws.min_points(law):
        raise ValueError(
            f'{len(x)} points with {held} held out leave {len(np.unique(fit_x))} to fit the '
            f'{law} law, which needs {laws.min_points(law)}'
        )
    return _held_out_result(law, fit_x, fit_y, test_x, test_y, num_resamples, seed)[0]


def _held_out_result(
    law: str,
    fit_x: np.ndarray,
    fit_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_resamples: int,
    seed: int,
) -> tuple[dict[str, Any], list[float]]:
    """The held-out result of one law and its per-resample errors (nan where a refit failed),
    resample i drawn from `seed` the same way for every law: the pairing compare_laws uses."""
    params = laws.fit_params(law, fit_x, fit_y)
    rng = np.random.default_rng(seed)
    errors: list[float] = []
    samples: list[dict[str, float]] = []
    n = len(fit_x)
    for _ in range(num_resamples):
        index = rng.integers(0, n, n)
        error = math.nan
        if len(np.unique(fit_x[index])) >= laws.min_points(law) - 1:
            try:
                sample = laws.fit_params(law, fit_x[index], fit_y[index], params)
            except (RuntimeError, ValueError, np.linalg.LinAlgError):
                sample = None
            if sample is not None:
                samples.append(sample)
                error = _log_error(law, sample, test_x, test_y)
        errors.append(error)
    good = [e for e in errors if math.isfinite(e)]
    intervals = (
        {name: _percentiles([s[name] for s in samples]) for name in params} if samples else {}
    )
    result: dict[str, Any] = {
        'law': law,
        'formula': laws.FORMULAS[law],
        'params': params,
        'intervals_95': {k: list(v) for k, v in intervals.items()},
        'fit_compute': fit_x.tolist(),
        'held_out_compute': test_x.tolist(),
        'held_out_loss': test_y.tolist(),
        'predicted': laws.law_value(law, params, test_x).tolist(),
        'error': _log_error(law, params, test_x, test_y),
        'error_interval_95': list(_percentiles(good)) if good else [math.nan, math.nan],
        'num_bootstrap': len(good),
        'degenerate': '',
    }
    if law == 'saturating_power':
        result['degenerate'] = saturating_degeneracy(params, intervals, float(np.min(fit_y)))
    return result, errors


def compare_laws(
    compute: Sequence[float],
    loss: Sequence[float],
    *,
    num_held_out: int | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Both laws of HELD_OUT_LAWS on the same held-out split, and which predicts the held-out
    points better: the one whose error is lower when the paired bootstrap interval of the error
    difference (power − saturating) excludes 0, else neither. A degenerate saturating fit never
    wins (its error says nothing the power law's does not): `better` is then the power law, and
    the sentence says whether its error is measurably lower or the form is chosen by default."""
    x, y = _clean(compute, loss)
    held = default_held_out(len(x)) if num_held_out is None else num_held_out
    fit_x, fit_y, test_x, test_y = x[:-held], y[:-held], x[-held:], y[-held:]
    results: dict[str, Any] = {}
    errors: dict[str, list[float]] = {}
    for law in HELD_OUT_LAWS:
        if len(np.unique(fit_x)) < laws.min_points(law):
            results[law] = {
                'error': None,
                'reason': (
                    f'{len(np.unique(fit_x))} fitting points below the largest {held}; the '
                    f'{law} law needs {laws.min_points(law)}'
                ),
            }
            continue
        try:
            results[law], errors[law] = _held_out_result(
                law, fit_x, fit_y, test_x, test_y, num_resamples, seed
            )
        except (RuntimeError, ValueError) as error:
            results[law] = {'error': None, 'reason': str(error)}
    comparison: dict[str, Any] = {
        'num_points': len(x),
        'num_fit': len(fit_x),
        'num_held_out': len(test_x),
        'laws': results,
        'better': None,
        'difference_interval_95': None,
    }
    if len(errors) < 2:
        comparison['sentence'] = 'Too few frontier points to compare the laws on held-out budgets.'
        return comparison
    pairs = [
        p - s
        for p, s in zip(errors['power'], errors['saturating_power'])
        if math.isfinite(p) and math.isfinite(s)
    ]
    power, saturating = results['power'], results['saturating_power']
    low, high = _percentiles(pairs) if pairs else (math.nan, math.nan)
    comparison['difference_interval_95'] = [low, high]
    if saturating['degenerate']:
        better = 'power'
        reason = f'the saturating fit is degenerate ({saturating["degenerate"]})'
    elif low > 0:
        better, reason = 'saturating_power', 'the paired bootstrap interval of the difference > 0'
    elif high < 0:
        better, reason = 'power', 'the paired bootstrap interval of the difference < 0'
    else:
        better, reason = None, 'the paired bootstrap interval of the difference contains 0'
    comparison['better'] = better
    errors_text = (
        f'held-out error {power["error"]:.3f} (power law) vs {saturating["error"]:.3f} '
        f'(saturating); difference {power["error"] - saturating["error"]:+.3f}, '
        f'{LEVEL:.0%} interval [{low:+.3f}, {high:+.3f}]'
    )
    if better is None:
        comparison['sentence'] = (
            f'Neither law predicts the {held} held-out budgets better: {errors_text}; {reason}.'
        )
    elif saturating['degenerate'] and not high < 0:
        # Not measurably better: the power law is chosen because the other form collapses to it.
        comparison['sentence'] = (
            f'The {laws.FORMULAS["power"]} form is the one to use, though it does not predict '
            f'the {held} held-out budgets measurably better ({errors_text}): {reason}.'
        )
    else:
        comparison['sentence'] = (
            f'The {laws.FORMULAS[better]} form predicts the {held} held-out budgets better: '
            f'{errors_text}; {reason}.'
        )
    return comparison


# --- Two frontiers -------------------------------------------------------------------------------


def frontier_difference(
    compute_a: Sequence[float],
    loss_a: Sequence[float],
    compute_b: Sequence[float],
    loss_b: Sequence[float],
    *,
    num_levels: int = 8,
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """log L_A − log L_B of the power laws fitted to two frontiers, at `num_levels` log-spaced
    compute levels inside both frontiers' compute range (never extrapolated), with percentile
    intervals from refits of each frontier on its points resampled with replacement. At each
    level A is 'below' B when the interval lies below 0, 'above' when above, else
    'indistinguishable'."""
    xa, ya = _clean(compute_a, loss_a)
    xb, yb = _clean(compute_b, loss_b)
    needed = laws.min_points('power')
    if len(np.unique(xa)) < needed or len(np.unique(xb)) < needed:
        raise ValueError(
            f'each frontier needs {needed} points of distinct compute; '
            f'got {len(np.unique(xa))} and {len(np.unique(xb))}'
        )
    low, high = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    if not low < high:
        raise ValueError(
            f'the frontiers do not overlap in compute: [{xa[0]:.3g}, {xa[-1]:.3g}] and '
            f'[{xb[0]:.3g}, {xb[-1]:.3g}]'
        )
    levels = np.geomspace(low, high, num_levels)

    def log_difference(pa: dict[str, float], pb: dict[str, float]) -> np.ndarray:
        return np.log(laws.law_value('power', pa, levels)) - np.log(
            laws.law_value('power', pb, levels)
        )

    point = log_difference(laws.fit_params('power', xa, ya), laws.fit_params('power', xb, yb))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_resamples):
        ia, ib = rng.integers(0, len(xa), len(xa)), rng.integers(0, len(xb), len(xb))
        if len(np.unique(xa[ia])) < 2 or len(np.unique(xb[ib])) < 2:
            continue
        samples.append(
            log_difference(
                laws.fit_params('power', xa[ia], ya[ia]), laws.fit_params('power', xb[ib], yb[ib])
            )
        )
    samples_array = np.asarray(samples)
    rows = []
    for i, level in enumerate(levels):
        lo, hi = _percentiles(samples_array[:, i])
        side = BELOW if hi < 0 else ABOVE if lo > 0 else INDISTINGUISHABLE
        rows.append(
            {
                'compute': float(level),
                'log_difference': float(point[i]),
                'interval_95': [lo, hi],
                'loss_ratio': float(math.exp(point[i])),
                'side': side,
            }
        )
    return {'levels': rows, 'num_bootstrap': len(samples)}


def _span(rows: Sequence[dict[str, Any]]) -> str:
    if len(rows) == 1:
        return f'at {rows[0]["compute"]:.3g} FLOPs'
    return f'from {rows[0]["compute"]:.3g} to {rows[-1]["compute"]:.3g} FLOPs'


def verdict(name_a: str, name_b: str, levels: Sequence[dict[str, Any]]) -> str:
    """The sentence that compares frontier A with frontier B, from the side and interval of
    their difference at each compute level (`frontier_difference`'s rows)."""
    if not levels:
        return f'No compute level is shared by the {name_a} and {name_b} frontiers: no verdict.'
    ratios = [row['loss_ratio'] for row in levels]
    ratio_text = (
        f'loss ratio {name_a}/{name_b} {min(ratios):.3f}–{max(ratios):.3f}'
        if len(ratios) > 1
        else f'loss ratio {name_a}/{name_b} {ratios[0]:.3f}'
    )
    sides = [row['side'] for row in levels]
    if len(set(sides)) == 1:
        side = sides[0]
        where = f'at all {len(levels)} compute levels {_span(levels)}'
        if side == INDISTINGUISHABLE:
            return (
                f'The {name_a} and {name_b} frontiers are not distinguishable {where} '
                f'({ratio_text}; every {LEVEL:.0%} bootstrap interval of the difference '
                'contains 0).'
            )
        return (
            f'The {name_a} frontier is {side} the {name_b} frontier {where} ({ratio_text}; '
            f'every {LEVEL:.0%} bootstrap interval of the difference excludes 0).'
        )
    # Consecutive levels on the same side, in order of compute.
    runs: list[list[dict[str, Any]]] = []
    for row in levels:
        if runs and runs[-1][-1]['side'] == row['side']:
            runs[-1].append(row)
        else:
            runs.append([row])
    parts = []
    for run in runs:
        if run[0]['side'] == INDISTINGUISHABLE:
            parts.append(f'not distinguishable from the {name_b} frontier {_span(run)}')
        else:
            parts.append(f'{run[0]["side"]} it {_span(run)}')
    return (
        f'The {name_a} frontier is '
        + ', then '.join(parts)
        + f' ({ratio_text}; {LEVEL:.0%} bootstrap intervals of the difference).'
    )


def exponent_comparison(
    name_a: str, fit_a: dict[str, Any], name_b: str, fit_b: dict[str, Any], quantity: str
) -> str:
    """Whether two fitted exponents p (summarize_fit dicts of y = k·x^p) differ: their
    intervals overlap or not."""
    if 'params' not in fit_a or 'params' not in fit_b:
        return f'{quantity}: not fitted for both families.'
    pa, pb = fit_a['params']['p'], fit_b['params']['p']
    la, ha = fit_a['intervals_95'].get('p', (math.nan, math.nan))
    lb, hb = fit_b['intervals_95'].get('p', (math.nan, math.nan))
    text = (
        f'{quantity}: {name_a} {pa:.3g} [{la:.3g}, {ha:.3g}], '
        f'{name_b} {pb:.3g} [{lb:.3g}, {hb:.3g}]'
    )
    if ha < lb or hb < la:
        return text + ' (the intervals do not overlap).'
    return text + ' (the intervals overlap: not distinguishable).'
