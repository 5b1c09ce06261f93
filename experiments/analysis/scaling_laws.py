"""Scaling-law analysis of a sweep: frontiers, fitted laws with bootstrap intervals, and the
compute-optimal model size, epoch budget and learning rate.

- `pareto_frontier`: the runs no other run beats at equal or lower compute (the lower
  envelope of held-out loss against compute).
- `fit_power_law`: L = a·C^(-b), a straight line on log-log axes (Smith et al. 2023 find the
  NFNet frontier on JFT-4B follows one).
- `fit_saturating`: L = c + a·(C + d)^(-b) (Zhai et al. 2022): an irreducible loss c, and an
  offset d that bends the curve at small compute. Fitted in log space (relative errors, as the
  straight-line law is) with box constraints a, b > 0, 0 <= c < min L, d >= 0, from several
  starting points. `fit_saturating_power` is the same without the offset, L = a·C^(-b) + c:
  three parameters, the form the held-out prediction test compares with the power law
  (experiments/analysis/scaling_prediction.py).
- `bootstrap`: percentile intervals for every fitted parameter from refits on resampled
  points.
- `compute_optimal`: at each compute level, the model size whose loss-vs-compute curve (its
  LR-tuned epoch budgets, interpolated on log-log axes) is lowest, with the epoch budget that
  size needs to spend that compute, or a cheaper finished run when that is better still;
  `fit_log_linear` turns those into N_opt ∝ C^α and E_opt ∝ C^β.
- `best_learning_rate`: the best rate of a ×2 grid, refined by a parabola in log2(rate) when
  the best is inside the grid, and flagged when it lies on the grid's edge.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import optimize


@dataclasses.dataclass
class Fit:
    """A fitted law: its parameters, their bootstrap intervals, and the points it saw."""

    law: str  # 'power', 'saturating', 'saturating_power' or 'log_linear'
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # 95% percentile bootstrap intervals
    num_points: int
    num_bootstrap: int  # resamples that gave a fit
    residual_rms: float  # root-mean-square residual of log y

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return law_value(self.law, self.params, x)

    def formula(self) -> str:
        return FORMULAS[self.law]


FORMULAS = {
    'power': 'L = a·C^(-b)',
    'saturating': 'L = c + a·(C + d)^(-b)',
    'saturating_power': 'L = a·C^(-b) + c',
    'log_linear': 'y = k·x^p',
}


def law_value(law: str, params: dict[str, float], x: np.ndarray | float) -> np.ndarray:
    """The value of `law` with `params` at `x`."""
    x = np.asarray(x, dtype=np.float64)
    p = params
    if law == 'power':
        return p['a'] * x ** (-p['b'])
    if law == 'saturating':
        return p['c'] + p['a'] * (x + p['d']) ** (-p['b'])
    if law == 'saturating_power':
        return p['c'] + p['a'] * x ** (-p['b'])
    if law == 'log_linear':
        return p['k'] * x ** p['p']
    raise ValueError(f'unknown law {law!r}; valid: {sorted(FORMULAS)}')


# --- Frontier ----------------------------------------------------------------------------------


def pareto_frontier(compute: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """Indices of the points on the lower envelope, by increasing compute: a point is on it when
    every point of lower or equal compute has a higher loss. Non-finite losses never are."""
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    finite = np.flatnonzero(np.isfinite(loss) & np.isfinite(compute))
    order = finite[np.lexsort((loss[finite], compute[finite]))]
    frontier, best = [], math.inf
    for index in order:
        if loss[index] < best:
            frontier.append(index)
            best = loss[index]
    return np.asarray(frontier, dtype=np.int64)


# --- Fits --------------------------------------------------------------------------------------

# The largest exponent the saturating fits may take (a bound the degeneracy check looks for).
B_MAX = 5.0


def _log_linear_params(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(p, log k) of the least-squares line log y = p·log x + log k."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def _fit_log_linear_point(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p, log_k = _log_linear_params(x, y)
    return {'k': math.exp(log_k), 'p': p}


def _fit_power_point(compute: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    p, log_k = _log_linear_params(compute, loss)
    return {'a': math.exp(log_k), 'b': -p}


def _fit_saturating_point(
    compute: np.ndarray,
    loss: np.ndarray,
    start: dict[str, float] | None = None,
    offset: bool = True,
) -> dict[str, float]:
    """Least squares of log L against log(c + a·(C + d)^(-b)) with compute in units of its
    smallest value, so that every starting point is O(1). Without `start`, several starts
    (irreducible loss from 0 to 95% of the smallest loss, offset 0 or 1) and the best is kept;
    bootstrap refits start from the full-data fit and from c = d = 0. `offset=False` holds
    d at 0: L = a·C^(-b) + c."""
    scale = float(np.min(compute))
    x = compute / scale
    log_loss = np.log(loss)
    c_max = float(np.min(loss)) * (1 - 1e-9)
    d_max = 1e3 * float(np.max(x))
    free = 4 if offset else 3  # the parameters least squares moves: (log a, b, c[, d])

    def terms(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        log_a, b, c = theta[:3]
        d = theta[3] if offset else 0.0
        log_xd = np.log(x + d)
        power = np.exp(log_a - b * log_xd)
        return power, c + power, log_xd

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(terms(theta)[1]) - log_loss

    def jacobian(theta: np.ndarray) -> np.ndarray:
        b = theta[1]
        d = theta[3] if offset else 0.0
        power, predicted, log_xd = terms(theta)
        columns = [power / predicted, -log_xd * power / predicted, 1.0 / predicted]
        if offset:
            columns.append(-b * power / ((x + d) * predicted))
        return np.stack(columns, axis=1)

    starts = []
    if start is not None:
        starts.append((min(start['c'], c_max * 0.999), start.get('d', 0.0) / scale))
        starts.append((0.0, 0.0))
    else:
        offsets = (0.0, 1.0) if offset else (0.0,)
        starts = [(f * c_max, d0) for f in (0.0, 0.3, 0.6, 0.85, 0.95) for d0 in offsets]
    lower, upper = [-np.inf, 1e-4, 0.0, 0.0][:free], [np.inf, B_MAX, c_max, d_max][:free]
    best = None
    for c0, d0 in starts:
        d0 = min(d0, d_max * 0.999)
        slope, log_a0 = _log_linear_params(x + d0, np.maximum(loss - c0, 1e-12))
        theta0 = np.array([log_a0, min(max(-slope, 1e-3), 0.98 * B_MAX), c0, d0][:free])
        try:
            result = optimize.least_squares(
                residuals,
                theta0,
                jac=jacobian,
                method='trf',
                x_scale='jac',
                max_nfev=500,
                bounds=(lower, upper),
            )
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(result.fun)) and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        raise RuntimeError('saturating fit failed from every starting point')
    log_a, b, c = best.x[:3]
    # Back to the caller's compute units: a·(x + d)^(-b) = a·scale^b·(C + d·scale)^(-b).
    params = {'a': float(math.exp(log_a + b * math.log(scale))), 'b': float(b), 'c': float(c)}
    if offset:
        params['d'] = float(best.x[3] * scale)
    return params


def _fit_saturating_power_point(
    compute: np.ndarray, loss: np.ndarray, start: dict[str, float] | None = None
) -> dict[str, float]:
    return _fit_saturating_point(compute, loss, start, offset=False)


_POINT_FITS: dict[str, tuple[Callable[..., dict[str, float]], int]] = {
    # law -> (fit of one sample, number of parameters)
    'power': (_fit_power_point, 2),
    'log_linear': (_fit_log_linear_point, 2),
    'saturating': (_fit_saturating_point, 4),
    'saturating_power': (_fit_saturating_power_point, 3),
}
# Laws whose fits start from a previous fit (the full-data one) in bootstrap refits.
_SEEDED = ('saturating', 'saturating_power')


def fit_params(
    law: str, x: np.ndarray, y: np.ndarray, start: dict[str, float] | None = None
) -> dict[str, float]:
    """The parameters of `law` fitted to (x, y), without intervals; `start` seeds the
    saturating laws' fits."""
    if law not in _POINT_FITS:
        raise ValueError(f'unknown law {law!r}; valid: {sorted(_POINT_FITS)}')
    fit_point = _POINT_FITS[law][0]
    if law in _SEEDED:
        return fit_point(np.asarray(x, np.float64), np.asarray(y, np.float64), start)
    return fit_point(np.asarray(x, np.float64), np.asarray(y, np.float64))


def min_points(law: str) -> int:
    """Distinct points a law needs before it is fitted: its parameters plus one, so that the
    fit has a residual to show."""
    return _POINT_FITS[law][1] + 1


def bootstrap(
    law: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    start: dict[str, float] | None = None,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Percentile intervals of every parameter of `law` over refits on points drawn with
    replacement; resamples with too few distinct points, or whose fit fails, are skipped.
    `start` (the full-data fit) seeds the saturating refits. Returns (intervals, number of
    resamples that gave a fit)."""
    num_params = _POINT_FITS[law][1]
    rng = np.random.default_rng(seed)
    samples: list[dict[str, float]] = []
    n = len(x)
    for _ in range(num_resamples):
        index = rng.integers(0, n, n)
        if len(np.unique(x[index])) < num_params:  # the law is not determined by the sample
            continue
        try:
            samples.append(fit_params(law, x[index], y[index], start))
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
    if not samples:
        return {}, 0
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name in samples[0]:
        values = np.array([s[name] for s in samples])
        intervals[name] = (
            float(np.percentile(values, tail)),
            float(np.percentile(values, 100 - tail)),
        )
    return intervals, len(samples)


def _fit(law: str, x: Sequence[float], y: Sequence[float], num_resamples: int, seed: int) -> Fit:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    needed = min_points(law)
    if len(np.unique(x)) < needed:
        raise ValueError(
            f'the {law} law has {needed - 1} parameters and needs at least {needed} '
            f'points of distinct x; there are {len(np.unique(x))}'
        )
    params = fit_params(law, x, y)
    intervals, resamples = bootstrap(
        law, x, y, num_resamples=num_resamples, seed=seed, start=params
    )
    fit = Fit(law, params, intervals, len(x), resamples, 0.0)
    fit.residual_rms = float(np.sqrt(np.mean((np.log(fit.predict(x)) - np.log(y)) ** 2)))
    return fit


def fit_power_law(
    compute: Sequence[float], loss: Sequence[float], *, num_resamples: int = 1000, seed: int = 0
) -> Fit:
    """L = a·C^(-b) by least squares on log-log axes, with bootstrap intervals."""
    return _fit('power', compute, loss, num_resamples, seed)


def fit_saturating(
    compute: Sequence[float], loss: Sequence[float], *, num_resamples: int = 1000, seed: int = 0
) -> Fit:
    """L = c + a·(C + d)^(-b) (Zhai et al. 2022), with bootstrap intervals."""
    return _fit('saturating', compute, loss, num_resamples, seed)


def fit_saturating_power(
    compute: Sequence[float], loss: Sequence[float], *, num_resamples: int = 1000, seed: int = 0
) -> Fit:
    """L = a·C^(-b) + c (an irreducible loss c, no offset), with bootstrap intervals."""
    return _fit('saturating_power', compute, loss, num_resamples, seed)


def fit_log_linear(
    x: Sequence[float], y: Sequence[float], *, num_resamples: int = 1000, seed: int = 0
) -> Fit:
    """y = k·x^p (e.g. N_opt = k·C^p) on log-log axes, with bootstrap intervals."""
    return _fit('log_linear', x, y, num_resamples, seed)


# --- Compute-optimal size and budget -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimalPoint:
    """The best choice of model size and epoch budget at one compute level."""

    compute: float  # the level
    spent: float  # the compute the choice spends: the level, or less for a cheaper finished run
    size: str
    params: float
    epochs: float
    loss: float
    candidates: int  # sizes compared at this level


def compute_optimal(
    sizes: Sequence[str],
    params: Sequence[float],
    compute: Sequence[float],
    loss: Sequence[float],
    epochs: Sequence[float],
    *,
    num_levels: int = 16,
) -> list[OptimalPoint]:
    """The compute-optimal size and epoch budget at `num_levels` log-spaced compute levels.

    Each row is one LR-tuned (size, epoch budget) run. A size's loss is interpolated between its
    budgets linearly on log-log axes (its epochs the same way, exactly proportional to compute
    for one size), and sizes are compared only within the compute range they were run over,
    never extrapolated. A finished run that spent less than the level competes too (nothing
    forces a budget to be spent), so the optimal loss never rises with compute and agrees with
    the Pareto frontier at its points.
    """
    rows = [
        (float(c), float(run_loss), float(e), float(n), name)
        for name, n, c, run_loss, e in zip(sizes, params, compute, loss, epochs)
        if np.isfinite(run_loss) and c > 0 and run_loss > 0
    ]
    if not rows:
        return []
    curves: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for row in sorted(rows):
        curves.setdefault(row[4], []).append(row)
    points = []
    for level in np.geomspace(min(r[0] for r in rows), max(r[0] for r in rows), num_levels):
        level = float(level)
        # (loss, size, epochs, params, compute spent)
        choices: list[tuple[float, str, float, float, float]] = []
        for name, curve in curves.items():
            c = np.log([r[0] for r in curve])
            if not c[0] - 1e-9 <= math.log(level) <= c[-1] + 1e-9:
                continue
            at = min(max(math.log(level), c[0]), c[-1])
            choices.append(
                (
                    math.exp(np.interp(at, c, np.log([r[1] for r in curve]))),
                    name,
                    math.exp(np.interp(at, c, np.log([r[2] for r in curve]))),
                    curve[0][3],
                    level,
                )
            )
        cheaper = [r for r in rows if r[0] <= level * (1 + 1e-9)]
        if cheaper:
            c, run_loss, e, n, name = min(cheaper, key=lambda r: r[1])
            choices.append((run_loss, name, e, n, c))
        best = min(choices)
        points.append(
            OptimalPoint(
                level,
                best[4],
                best[1],
                best[3],
                best[2],
                best[0],
                len({choice[1] for choice in choices}),
            )
        )
    return points


# --- Learning rate -----------------------------------------------------------------------------


def best_learning_rate(
    learning_rates: Sequence[float], losses: Sequence[float]
) -> tuple[float, bool]:
    """(best rate, whether it lies on the edge of the grid). Diverged runs (non-finite loss)
    count as worst. With a best rate inside the grid, the parabola through it and its two
    neighbours in log2(rate) gives a rate between grid points."""
    rates = np.asarray(learning_rates, np.float64)
    values = np.where(np.isfinite(losses), np.asarray(losses, np.float64), np.inf)
    order = np.argsort(rates)
    rates, values = rates[order], values[order]
    best = int(np.argmin(values))
    if not np.isfinite(values[best]):
        return float('nan'), True
    if len(rates) < 3 or best in (0, len(rates) - 1):
        return float(rates[best]), len(rates) > 1 and best in (0, len(rates) - 1)
    x = np.log2(rates[best - 1 : best + 2])
    y = values[best - 1 : best + 2]
    if not np.all(np.isfinite(y)):
        return float(rates[best]), False
    curvature, slope, _ = np.polyfit(x, y, 2)
    if curvature <= 0:
        return float(rates[best]), False
    vertex = float(np.clip(-slope / (2 * curvature), x[0], x[-1]))
    return float(2.0**vertex), False


def summarize_fit(fit: Fit) -> dict[str, Any]:
    """A JSON-ready dict of a fit."""
    return {
        'law': fit.law,
        'formula': fit.formula(),
        'params': fit.params,
        'intervals_95': {k: list(v) for k, v in fit.intervals.items()},
        'num_points': fit.num_points,
        'num_bootstrap': fit.num_bootstrap,
        'residual_rms_log': fit.residual_rms,
    }
