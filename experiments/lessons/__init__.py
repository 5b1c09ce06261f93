"""The course's claims, each measured by one small experiment.

Every lesson is a module `experiments/lessons/cNN_<name>.py` with:

    NUMBER: int          # the claim's number in the report
    TITLE: str           # a few words, e.g. 'Batch normalisation'
    CLAIM: str           # the course's claim, as the course states it
    def run(workdir: Path, scale: str, data_dir: str | None) -> Finding
        # trains / measures at `scale` ('tiny' for tests, 'full' for the report: <= ~5 min on
        # the 2-core CPU), writes its plot(s) as PNG under `workdir`, returns the numbers
    def judge(numbers: dict) -> Verdict
        # the verdict, computed from the measured numbers only (tests feed it both ways)

`run` calls `judge(numbers)` on what it measured; nothing is pre-written. Lessons train
through the project's trainer (`train_run`) wherever the data is a prepared data set, and
otherwise through the trainer's own pieces (train.steps, train.optim) — never a second loop
with its own update rule.

    python -m experiments.lessons.report --workdir=workdirs/lessons [--lessons=4,9] [--scale=full]
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import Any

SCALES = ('tiny', 'full')
SUPPORTED = 'supported'
PARTLY = 'partly supported'
NOT_SUPPORTED = 'not supported at this scale'
VERDICTS = (SUPPORTED, PARTLY, NOT_SUPPORTED)

# Claim number -> module under experiments/lessons/.
LESSONS = {
    1: 'c01_backprop',
    2: 'c02_optimisers',
    3: 'c03_regularisation',
    4: 'c04_batch_norm',
    5: 'c05_hyperparameters',
    6: 'c06_relu_vs_tanh',
    7: 'c07_receptive_fields',
    8: 'c08_residual',
    9: 'c09_cnn_vs_mlp',
    10: 'c10_long_lags',
    11: 'c11_position_encodings',
    12: 'c12_invariance',
    13: 'c13_local_minima',
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One of VERDICTS and the one-line reason, quoting the numbers it was drawn from."""

    verdict: str
    reason: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f'verdict {self.verdict!r} is not one of {VERDICTS}')


def verdict_of_parts(parts: dict[str, bool], details: str) -> Verdict:
    """A claim made of several sub-claims: supported when all hold, partly when some do."""
    held = [name for name, ok in parts.items() if ok]
    if len(held) == len(parts):
        verdict = SUPPORTED
    elif held:
        verdict = PARTLY
    else:
        verdict = NOT_SUPPORTED
    failed = [name for name, ok in parts.items() if not ok]
    suffix = f' (does not hold: {", ".join(failed)})' if failed else ''
    return Verdict(verdict, details + suffix)


@dataclasses.dataclass
class Finding:
    """What one lesson measured: its numbers (JSON-able), a markdown table, its plots (paths
    relative to the lesson's workdir) and the verdict judged from the numbers."""

    number: int
    title: str
    claim: str
    numbers: dict[str, Any]
    table: str
    plots: list[str]
    verdict: Verdict
    scale: str = 'full'
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Finding:
        record = dict(record)
        record['verdict'] = Verdict(**record['verdict'])
        return cls(**record)


def load_lesson(number: int):
    """The lesson module of claim `number`."""
    if number not in LESSONS:
        raise ValueError(f'no lesson {number}; valid: {sorted(LESSONS)}')
    return importlib.import_module(f'experiments.lessons.{LESSONS[number]}')


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f'scale={scale!r} is not valid; choose one of {list(SCALES)}')


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'{value:.4g}'
        return str(value)

    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


@dataclasses.dataclass
class RunResult:
    """One trainer run: its summary.json and its metrics records by kind ('train', 'eval')."""

    summary: dict[str, Any]
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]


def train_run(config, workdir: Path) -> RunResult:
    """Trains `config` in `workdir` through the project's trainer (resuming a finished run costs
    only its final evaluation) and returns what it recorded."""
    from train.loop import train_and_evaluate
    from train.pictures import read_metrics

    config.pictures = False
    summary = train_and_evaluate(config, workdir)
    records = read_metrics(Path(workdir) / 'metrics.jsonl')
    return RunResult(summary, records.get('train', []), records.get('eval', []))


def trailing_means(values: list[float], window: int = 3) -> list[float]:
    """Each value averaged with the `window - 1` before it: logged batch losses without the
    batch-to-batch noise, still causal (a run "reached" a level when its recent mean did)."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
        for i in range(len(values))
    ]


def steps_to_reach(curve: list[list[float]], target: float, window: int = 3) -> int | None:
    """The first step of a [[step, value], ...] curve whose trailing mean is at or below
    `target` (None: never)."""
    means = trailing_means([value for _, value in curve], window)
    return next(
        (int(step) for (step, _), mean in zip(curve, means) if mean <= target * (1 + 1e-6)), None
    )


def evaluate_on(workdir: Path, split: str, batch_size: int = 1000) -> dict[str, float]:
    """The task's eval metrics of the newest checkpoint in a trainer `workdir` on another split
    of its data set (e.g. the training subset in eval mode: no dropout, batch-norm running
    statistics), with the task's own `eval_sums`/`summarize`."""
    import jax
    import numpy as np

    import data
    from experiments.analysis.runs import load_run

    run = load_run(workdir)
    source = data.load_source(run.config.dataset.name, split, run.config.dataset.data_dir or None)
    model_state = {k: v for k, v in run.variables.items() if k != 'params'}
    sums_of = jax.jit(lambda params, state, batch: run.task.eval_sums(params, state, batch))
    totals = None
    for batch in data.eval_batches(source, global_batch_size=batch_size):
        sums = jax.device_get(sums_of(run.variables['params'], model_state, batch))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return run.task.summarize(totals)


def run_lesson(
    number: int, workdir: Path, scale: str = 'full', data_dir: str | None = None
) -> Finding:
    """Runs lesson `number` in `<workdir>/cNN_<name>/` and writes finding.json there."""
    check_scale(scale)
    module = load_lesson(number)
    lesson_dir = Path(workdir) / LESSONS[number]
    lesson_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    finding = module.run(lesson_dir, scale, data_dir)
    finding.seconds = time.time() - started
    finding.scale = scale
    (lesson_dir / 'finding.json').write_text(json.dumps(finding.to_json(), indent=2))
    return finding


def fresh_runs_dir(workdir: Path) -> Path:
    """`<workdir>/runs`, emptied: a rerun of a lesson measures afresh, never resumes."""
    import shutil

    runs = Path(workdir) / 'runs'
    shutil.rmtree(runs, ignore_errors=True)
    return runs


def save_figure(fig, out: Path, axes_with_legend=(), legend_fontsize: int = 8) -> Path:
    """The lessons' plot finish: grid and legend on `axes_with_legend`, tight layout, PNG."""
    import matplotlib.pyplot as plt

    for ax in axes_with_legend:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
