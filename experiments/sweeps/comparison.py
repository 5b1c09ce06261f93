"""What the comparison sweeps share: the models asked for, checked against the valid ones; runs
one after another with the results table rewritten after each (a partial table survives an
interruption; the trainer resumes the interrupted run); a finished run's training speed."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

from absl import app, logging


def selected(requested: list[str] | None, valid: Iterable[str]) -> list[str]:
    """`requested` (all of `valid` when empty), or a usage error naming the unknown ones."""
    valid = list(valid)
    names = list(requested) if requested else valid
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise app.UsageError(f'unknown model(s) {unknown}; valid: {valid}')
    return names


def run_all(
    jobs: Iterable[tuple[str, Callable[[], dict]]],
    workdir: Path,
    write_table: Callable[[list[dict], Path], None],
) -> list[dict]:
    """Runs each (label, job) in turn, each job returning its row, and writes the table after
    every one; prints `<workdir>/results.md` at the end."""
    rows: list[dict] = []
    for label, job in jobs:
        logging.info('=== %s', label)
        rows.append(job())
        write_table(rows, workdir)
    print((workdir / 'results.md').read_text())
    return rows


def median_train_speed(run_dir: Path) -> float:
    """Median examples/s of a run's logged train records, the first (which includes the
    compilation) left out when there are others."""
    from train.pictures import read_metrics

    records = read_metrics(run_dir / 'metrics.jsonl').get('train', [])
    speeds = [r['examples_per_second'] for r in records[1:]] or [
        r['examples_per_second'] for r in records
    ]
    return statistics.median(speeds)
