"""How the train-step benchmark copes with a shared machine whose speed moves within a run:
rows measured in several rounds reduced to their fastest, and the drift of the matmul peak
between the start of a run and its end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DRIFT_TOLERANCE = 0.1  # a larger change of the peak between the start and the end flags the run


def peak_drift(start: Sequence[dict[str, Any]], end: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Relative change of each dtype's matmul peak from the start of the run to its end."""
    at_end = {row['dtype']: row['gflops'] for row in end}
    return {
        row['dtype']: at_end[row['dtype']] / row['gflops'] - 1
        for row in start
        if row['dtype'] in at_end and row['gflops']
    }


FLOP_COUNT_KEYS = ('step_flops', 'uncorrected_loops', 'flop_count_s')


def fastest_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, dtype, framework and device count or mode, in first-seen order: of a
    row measured in several rounds the fastest that did not fail, with every round's step time
    (`round_step_s`, None for a failed one) and the FLOP count of the round that took it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row['model'], row['dtype'], row['framework'], row.get('devices'), row.get('mode'))
        groups.setdefault(key, []).append(row)
    merged = []
    for group in groups.values():
        measured = [r for r in group if 'error' not in r]
        if len(group) == 1 or not measured:
            merged.append(group[0])
            continue
        best = dict(min(measured, key=lambda r: r['step_s']))
        for row in measured:
            if row.get('step_flops'):
                best.update({k: row[k] for k in FLOP_COUNT_KEYS if k in row})
        best['round_step_s'] = [r.get('step_s') for r in group]
        merged.append(best)
    return merged


def rounds_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """The report's note on rows measured in several rounds (None when none were): each such
    row's step time in every round, the fastest of which the table shows."""
    repeated = [r for r in rows if r.get('round_step_s')]
    if not repeated:
        return None
    times = '; '.join(
        f'{r["model"]} {r["dtype"]} {r["framework"]} {_where(r)}: '
        + ' / '.join('failed' if t is None else f'{t * 1e3:.0f}' for t in r['round_step_s'])
        for r in repeated
    )
    return (
        f'Each row ran in {len(repeated[0]["round_step_s"])} rounds, the JAX rows and the '
        "PyTorch rows of a model and dtype first in turn; the table shows each row's fastest "
        f'round. Step ms per round: {times}.'
    )


def _where(row: dict[str, Any]) -> str:
    return f'{row["devices"]} dev' if row['framework'] == 'jax' else str(row.get('mode'))
