"""What the training loop keeps track of between steps: the open window of train metrics (part of
every checkpoint, so a resumed run logs exactly what an uninterrupted one would), the watch
for non-finite losses and gradients, and the preemption notice (SIGTERM) that every process
of a multi-host run acts on at the same step.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

# Batch column that carries each process's preemption flag into the train step, which reduces
# it over all devices: every process then reads the same agreed flag from the step's metrics.
PREEMPT_KEY = 'preempt'
# In a multi-process run the agreed flag is read every this many steps (the metrics are fetched
# then); a process that got SIGTERM keeps training until that step, and all stop there.
PREEMPTION_SYNC_EVERY_STEPS = 10


class NonFiniteError(FloatingPointError):
    """A NaN or Inf stopped training; the message names the step, the quantity and which
    checkpoint the run can resume from."""


@dataclasses.dataclass
class TrainWindow:
    """Running sums of the train metrics since the last logged record, and the time they took.

    Sums are float64 and added step by step in order, so a window restored from a checkpoint
    and continued gives the same record, bit for bit, as one that was never interrupted."""

    steps: int = 0
    skipped: int = 0  # updates dropped by the non-finite 'skip' policy (not in the sums)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds_before: float = 0.0  # time spent in this window before the current session
    started: float = dataclasses.field(default_factory=time.time)

    def add(self, step_metrics: Sequence[dict[str, Any]], keys: Sequence[str]) -> None:
        for metrics in step_metrics:
            if not (bool(metrics['loss_finite']) and bool(metrics['grads_finite'])):
                self.skipped += 1
                continue
            self.steps += 1
            for key in keys:
                if key in metrics:
                    self.sums[key] = self.sums.get(key, 0.0) + float(metrics[key])

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.started

    def means(self) -> dict[str, float]:
        return {key: total / self.steps for key, total in self.sums.items()} if self.steps else {}

    def reset(self) -> None:
        self.steps, self.skipped, self.sums = 0, 0, {}
        self.seconds_before, self.started = 0.0, time.time()

    def to_json(self) -> dict[str, Any]:
        return {
            'steps': self.steps,
            'skipped': self.skipped,
            'sums': dict(self.sums),
            'seconds': self.seconds(),
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainWindow:
        if not saved:
            return cls()
        return cls(
            steps=int(saved['steps']),
            skipped=int(saved.get('skipped', 0)),
            sums={k: float(v) for k, v in saved['sums'].items()},
            seconds_before=float(saved['seconds']),
        )


class NonFiniteWatch:
    """Checks fetched step metrics for a non-finite loss or gradient: stops ('stop'), or lets
    the step's update be dropped ('skip') until `max_consecutive` updates in a row were."""

    def __init__(self, skip: bool, max_consecutive: int):
        self.skip = skip
        self.max_consecutive = max_consecutive
        self.consecutive = 0

    def check(self, step_metrics: Sequence[dict[str, Any]], first_step: int) -> None:
        for offset, metrics in enumerate(step_metrics):
            step = first_step + offset
            bad = [
                (flag, quantity, metrics[key])
                for flag, quantity, key in (
                    ('loss_finite', 'loss', 'loss'),
                    ('grads_finite', 'gradient norm', 'grad_norm'),
                )
                if not bool(metrics[flag])
            ]
            if not bad:
                self.consecutive = 0
                continue
            _, quantity, value = bad[0]
            if not self.skip:
                raise NonFiniteError(
                    f'non-finite {quantity} ({value}) at step {step}; training stopped. Lower '
                    'the learning rate, clip gradients (optimizer.grad_clip_norm) or set '
                    "config.nonfinite='skip'"
                )
            self.consecutive += 1
            logging.warning('step %d: non-finite %s (%s); update skipped', step, quantity, value)
            if self.consecutive >= self.max_consecutive:
                raise NonFiniteError(
                    f'{self.consecutive} consecutive updates skipped for a non-finite loss or '
                    f'gradient (the last at step {step}; config.nonfinite_max_skips='
                    f'{self.max_consecutive}): the run is not learning. Lower the learning rate '
                    'or clip gradients (optimizer.grad_clip_norm)'
                )


class Preemption:
    """SIGTERM (a preemption notice) as a flag the loop reads between steps.

    One process: the run stops after the step during which the signal came. Several processes:
    each one's flag rides in its rows of every batch (`mark`), the step reduces it over all
    devices, and the loop reads the reduced flag from the fetched metrics (`agreed_in`) at
    fixed steps, so every process stops, checkpoints and exits at the same step whichever of
    them was signalled and when."""

    def __init__(self, processes: int):
        self.multi = processes > 1
        self.local = False  # this process was signalled
        self.agreed = False  # the run stops (every process knows)
        self._previous = None

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning(
            'SIGTERM received: checkpointing and exiting %s',
            'at the next agreed step' if self.multi else 'after this step',
        )
        self.local = True
        if not self.multi:
            self.agreed = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def mark(self, host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch with this process's flag as a column (multi-process runs only)."""
        if not self.multi:
            return host_batch
        rows = len(next(iter(host_batch.values())))
        return {**host_batch, PREEMPT_KEY: np.full((rows,), self.local, bool)}

    def sync_due(self, step: int) -> bool:
        """Whether the loop must fetch the metrics at `step` to read the agreed flag."""
        return self.multi and step % PREEMPTION_SYNC_EVERY_STEPS == 0

    def agreed_in(self, step_metrics: Sequence[dict[str, Any]]) -> None:
        """Reads the reduced flag from fetched step metrics (the same values in every process)."""
        if self.multi and any(bool(m.get(PREEMPT_KEY, False)) for m in step_metrics):
            self.agreed = True


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so it is valid (strict) JSON."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value
