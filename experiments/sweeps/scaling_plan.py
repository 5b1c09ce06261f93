"""Optima that are found, not assumed: which runs a scaling study needs next, from the runs it has.

`plan` is a pure function of the preset, its base grid and the records of finished or diverged
runs (experiments/sweeps/scaling_study.py's results lines). It proposes:

1. every run of the base grid not done yet;
2. for each (family, size, epoch budget) cell whose base learning rates are all done, the rate a
   factor 2 beyond the edge of the rates tried when the cell's best rate sits at that edge
   (diverged runs count as the worst), as long as it stays within `preset.max_lr_steps` factor-2
   steps of the family's base grid;
3. for each family whose cells are all settled (no rate to add), a budget twice its longest
   (capped at `preset.max_epochs`), every size at the family's base rates, while the
   compute-optimal choice at most compute levels where sizes compete trains for the longest
   budget.

The driver runs what `plan` proposes and plans again until nothing is left; since the plan is
recomputed from the run folders, an interrupted sweep picks up where it stopped. Optima still at
an edge when no more runs are allowed are listed (`Plan.lr_capped`, `Plan.epochs_capped`), for
the report to mark.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from experiments.analysis import scaling_laws as laws
from experiments.sweeps.scaling_grid import FINISHED, Preset, RunSpec, get_preset

_TOLERANCE = 1e-6


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_TOLERANCE)


def _has(values: Sequence[float], value: float) -> bool:
    return any(_same(v, value) for v in values)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (family, size, epoch budget) of a study with the learning rates tried there."""

    family: str
    size: str
    epochs: float
    rates: tuple[float, ...]  # tried (finished or diverged), ascending
    losses: tuple[float, ...]  # held-out loss of each rate; inf for a diverged run


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a study needs next and which optima the caps leave at an edge."""

    runs: tuple[RunSpec, ...]  # to train next; empty when the study is complete
    lr_capped: tuple[tuple[str, str, float], ...]  # (family, size, epochs): best rate at the cap
    epochs_capped: tuple[str, ...]  # families whose optimal budget is the longest allowed
    reasons: tuple[str, ...]  # one line per extension proposed

    def as_dict(self) -> dict[str, Any]:
        return {
            'runs': [r.run_id for r in self.runs],
            'lr_capped': [list(c) for c in self.lr_capped],
            'epochs_capped': list(self.epochs_capped),
            'reasons': list(self.reasons),
        }


def cells(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], Cell]:
    """The records grouped by (family, size, epochs), with their rates and losses."""
    grouped: dict[tuple[str, str, float], dict[float, float]] = {}
    for r in records:
        loss = r['eval_loss'] if r['status'] == FINISHED else math.inf
        key = (r['family'], r['size'], float(r['epochs']))
        grouped.setdefault(key, {})[float(r['learning_rate'])] = loss
    out = {}
    for key, by_rate in grouped.items():
        rates = tuple(sorted(by_rate))
        out[key] = Cell(*key, rates, tuple(by_rate[r] for r in rates))
    return out


def rate_bounds(preset: Preset, family: str) -> tuple[float, float]:
    """The lowest and highest learning rate a family's cells may reach: its base grid widened by
    `preset.max_lr_steps` factors of 2 on each side."""
    rates = preset.families[family].learning_rates
    spread = 2.0**preset.max_lr_steps
    return min(rates) / spread, max(rates) * spread


def next_rate(preset: Preset, cell: Cell) -> tuple[float | None, bool]:
    """(the rate to try next in `cell` or None, whether its best rate is at an edge the caps
    forbid extending). Diverged runs count as the worst rate."""
    if len(cell.rates) < 2:
        return None, False
    rate, at_edge = laws.best_learning_rate(cell.rates, cell.losses)
    if not at_edge:
        return None, False
    low, high = rate_bounds(preset, cell.family)
    finite = [loss for loss in cell.losses if math.isfinite(loss)]
    # Every rate diverged, or the lowest is best: go lower; the highest is best: go higher.
    go_lower = not finite or cell.losses[0] == min(finite)
    candidate = cell.rates[0] / 2 if go_lower else cell.rates[-1] * 2
    if candidate < low * (1 - _TOLERANCE) or candidate > high * (1 + _TOLERANCE):
        return None, True
    return candidate, False


def optimum_at_longest_budget(points: Sequence[dict[str, Any]]) -> tuple[int, int, float]:
    """(levels whose compute-optimal choice trains for the longest budget, levels where two or
    more sizes compete, the longest budget) of one family's LR-tuned points (dicts with 'size',
    'params', 'compute', 'loss', 'epochs')."""
    if not points:
        return 0, 0, 0.0
    optimal = laws.compute_optimal(
        [p['size'] for p in points],
        [p['params'] for p in points],
        [p['compute'] for p in points],
        [p['loss'] for p in points],
        [p['epochs'] for p in points],
    )
    contested = [o for o in optimal if o.candidates >= 2]
    longest = max(p['epochs'] for p in points)
    at_longest = sum(_same(o.epochs, longest) for o in contested)
    return at_longest, len(contested), longest


def _tuned(records: Sequence[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The best finished run of each (size, budget) of a family."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for r in records:
        if r['family'] != family or r['status'] != FINISHED:
            continue
        key = (r['size'], float(r['epochs']))
        if key not in best or r['eval_loss'] < best[key]['eval_loss']:
            best[key] = r
    return [
        {
            'size': r['size'],
            'params': r['params'],
            'compute': r['train_flops'],
            'loss': r['eval_loss'],
            'epochs': float(r['epochs']),
        }
        for r in best.values()
    ]


def plan(preset: Preset, base: Sequence[RunSpec], records: Sequence[dict[str, Any]]) -> Plan:
    """The runs to train next (see the module docstring) given the base grid `base` and the
    records of the runs done so far; no runs when the study is complete."""
    done = {
        (r['family'], r['size'], float(r['epochs']), float(r['learning_rate'])) for r in records
    }

    def is_done(spec: RunSpec) -> bool:
        return (spec.family, spec.size, spec.epochs, spec.learning_rate) in done

    runs = [s for s in base if not is_done(s)]
    lr_capped, epochs_capped, reasons = [], [], []
    by_cell = cells(records)
    families = list(dict.fromkeys(s.family for s in base))
    for family_name in families:
        family = preset.families[family_name]
        budgets = sorted(
            {s.epochs for s in base if s.family == family_name}
            | {key[2] for key in by_cell if key[0] == family_name}
        )
        settled = True
        for epochs in budgets:
            for size in family.sizes:
                cell = by_cell.get((family_name, size, epochs))
                if cell is None or not all(_has(cell.rates, lr) for lr in family.learning_rates):
                    settled = False
                    continue
                rate, capped = next_rate(preset, cell)
                if capped:
                    lr_capped.append((family_name, size, epochs))
                if rate is not None:
                    settled = False
                    runs.append(RunSpec(preset.name, family_name, size, epochs, rate))
                    reasons.append(
                        f'{family_name} {size} at {epochs:g} epochs: best rate at the edge of '
                        f'{[f"{r:g}" for r in cell.rates]}; trying {rate:g}'
                    )
        if not settled:
            continue
        at_longest, contested, longest = optimum_at_longest_budget(_tuned(records, family_name))
        if not contested or 2 * at_longest < contested:
            continue
        if longest >= preset.max_epochs * (1 - _TOLERANCE):
            epochs_capped.append(family_name)
            continue
        extended = min(2 * longest, preset.max_epochs)
        reasons.append(
            f'{family_name}: the compute-optimal choice trains for the longest budget '
            f'({longest:g} epochs) at {at_longest} of {contested} compute levels; adding '
            f'{extended:g} epochs'
        )
        runs += [
            RunSpec(preset.name, family_name, size, float(extended), lr)
            for size in family.sizes
            for lr in family.learning_rates
        ]
    runs = [s for s in dict.fromkeys(runs) if not is_done(s)]
    return Plan(tuple(runs), tuple(lr_capped), tuple(epochs_capped), tuple(reasons))


def smoke_preset(
    preset: str | Preset, train_examples: int = 512, batch_size: int = 64, rates: int = 2
) -> Preset:
    """`preset` at a drastically reduced size, to run a whole study end to end in seconds: each
    family's two smallest sizes and `rates` lowest rates, the two shortest budgets, `train_examples`
    training images in batches of `batch_size` (a handful of steps a run) and no extensions."""
    preset = get_preset(preset)
    families = {
        name: dataclasses.replace(
            family,
            sizes=dict(list(family.sizes.items())[:2]),
            learning_rates=family.learning_rates[:rates],
        )
        for name, family in preset.families.items()
    }
    return dataclasses.replace(
        preset,
        name=f'{preset.name}_smoke',
        train_split=f'{preset.train_split.split("[")[0]}[:{train_examples}]',
        eval_split=f'{preset.eval_split.split("[")[0]}[:{train_examples}]',
        batch_size=batch_size,
        eval_batch_size=train_examples,
        epochs=tuple(sorted(preset.epochs)[:2]),
        families=families,
        log_every_steps=1,
        checkpoint_every_steps=1_000_000,
        max_lr_steps=0,
        max_epochs=0.0,
    )
