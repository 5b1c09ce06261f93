"""A profiler trace of a window of training steps: `config.profile_steps = (start, stop)`.

The trace (jax.profiler: XLA's ops on every device, host threads, the input pipeline) covers
the steps start, ..., stop - 1 and is written under `<workdir>/profile/plugins/profile/<time>/`:
`<host>.xplane.pb`, for XProf (not a dependency: `pip install xprof`, then
`xprof server --logdir=<workdir>/profile`: step times, op statistics, memory, the timeline),
and `<host>.trace.json.gz`, the timeline alone, which https://ui.perfetto.dev opens with
nothing installed. (-1, -1), the default, profiles nothing. Start after the first steps,
which compile.

    profiler = StepProfiler(workdir, *config.profile_steps)
    # around each step, `step` being the number of steps done before it:
    profiler.before_step(step)
    state, metrics = train_step(state, batch)
    profiler.after_step(step, state)
    # when the loop ends (inside the window or not):
    profiler.close(state)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

OFF = (-1, -1)
PROFILE_DIR = 'profile'


def check_profile_steps(steps: Sequence[int]) -> tuple[int, int]:
    """(start, stop) as ints; ValueError naming the value unless it is (-1, -1) or
    0 <= start < stop."""
    if (
        not isinstance(steps, (tuple, list))
        or len(steps) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
    ):
        raise ValueError(f'config.profile_steps must be two integers (start, stop), got {steps!r}')
    start, stop = int(steps[0]), int(steps[1])
    if (start, stop) != OFF and not 0 <= start < stop:
        raise ValueError(
            f'config.profile_steps={(start, stop)} is not valid: profile steps start..stop-1 with '
            f'0 <= start < stop, or {OFF} for none'
        )
    return start, stop


class StepProfiler:
    """Traces the steps [start, stop) of a run into `<workdir>/profile`; does nothing for
    (-1, -1). `step` is the number of steps done before the one about to run (the state's
    step), so a resumed run profiles what is left of the window."""

    def __init__(self, workdir: str | Path, start_step: int = -1, stop_step: int = -1):
        self.start_step, self.stop_step = check_profile_steps((start_step, stop_step))
        self.directory = Path(workdir) / PROFILE_DIR
        self.tracing = False
        self._annotation: Any = None

    @property
    def enabled(self) -> bool:
        return (self.start_step, self.stop_step) != OFF

    def before_step(self, step: int) -> None:
        """Starts the trace before the window's first step (or the first one this run reaches
        inside it), and marks each traced step for the profile's step view."""
        if not self.enabled or not self.start_step <= step < self.stop_step:
            return
        if not self.tracing:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True
            logging.info('profiling steps %d..%d into %s', step, self.stop_step - 1, self.directory)
        self._annotation = jax.profiler.StepTraceAnnotation('train', step_num=step)
        self._annotation.__enter__()

    def after_step(self, step: int, state: Any = None) -> None:
        """After the window's last step: waits for `state` (the step's outputs: the work
        dispatched asynchronously finishes inside the trace) and stops the trace."""
        if not self.tracing:
            return
        self._end_annotation()
        if step >= self.stop_step - 1:
            self._stop(state)

    def close(self, state: Any = None) -> None:
        """Stops a trace still open (the run ended inside the window)."""
        if self.tracing:
            self._end_annotation()
            self._stop(state)

    def _end_annotation(self) -> None:
        if self._annotation is not None:
            self._annotation.__exit__(None, None, None)
            self._annotation = None

    def _stop(self, state: Any) -> None:
        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.tracing = False
        logging.info(
            'profile written to %s: `xprof server --logdir=%s` (pip install xprof), or its '
            '*.trace.json.gz in https://ui.perfetto.dev',
            self.directory,
            self.directory,
        )

    def __enter__(self) -> StepProfiler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
