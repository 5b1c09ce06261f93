"""train.profiling.StepProfiler on a stand-in step loop: the trace covers the chosen window and
lands under <workdir>/profile; bad windows fail naming the value."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from train import profiling


def _trace_files(workdir, pattern='*.xplane.pb'):
    return sorted((workdir / profiling.PROFILE_DIR).rglob(pattern))


def test_profiler_traces_the_window_and_only_it(tmp_path):
    step_fn = jax.jit(lambda x: jnp.tanh(x @ x.T) + 1.0)
    state = jnp.ones((64, 64))
    profiler = profiling.StepProfiler(tmp_path, 2, 4)
    seen = []
    for step in range(6):
        profiler.before_step(step)
        seen.append(profiler.tracing)
        state = step_fn(state)
        profiler.after_step(step, state)
    profiler.close()
    assert seen == [False, False, True, True, False, False]
    traces = _trace_files(tmp_path)
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert traces[0].parent.parent.name == 'profile'  # <workdir>/profile/plugins/profile/<time>
    (timeline,) = _trace_files(tmp_path, '*.trace.json.gz')
    events = json.loads(gzip.open(timeline).read())['traceEvents']
    marked = [e['args']['step_num'] for e in events if e.get('name') == 'train']
    assert marked == ['2', '3']  # the window's steps, each marked for the step view
    assert any('PjitFunction' in str(e.get('name')) for e in events)  # the steps' own work


def test_resumed_run_profiles_the_rest_and_close_ends_an_open_trace(tmp_path):
    profiler = profiling.StepProfiler(tmp_path, 0, 10)
    state = jnp.zeros(3)
    for step in (7, 8):  # resumed at step 7, stopped before the window ends
        profiler.before_step(step)
        assert profiler.tracing
        state = state + 1
        profiler.after_step(step, state)
    profiler.close(state)
    assert not profiler.tracing and len(_trace_files(tmp_path)) == 1
    profiling.StepProfiler(tmp_path / 'again', 0, 1).close()  # never started: nothing to stop


def test_off_by_default_and_bad_windows_fail(tmp_path):
    with profiling.StepProfiler(tmp_path) as profiler:
        for step in range(3):
            profiler.before_step(step)
            profiler.after_step(step)
        assert not profiler.enabled and not profiler.tracing
    assert not (tmp_path / profiling.PROFILE_DIR).exists()
    assert profiling.check_profile_steps([3, 5]) == (3, 5)  # as config.json gives it back
    for bad in ((5, 5), (-1, 4), (4, 2), (1, 2, 3), (1.0, 2), 'ab'):
        with pytest.raises(ValueError, match='profile_steps'):
            profiling.check_profile_steps(bad)
