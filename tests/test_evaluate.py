"""train.evaluate on a tiny trained run: the same metrics as the run's own evaluations, from any
kept step or from another folder's checkpoints; bad input is one line and exit code 64."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST_COMPILE
from tests.test_train import REPO, tiny_config
from train import evaluate, loop
from train.checkpointing import CheckpointMismatch, find_checkpoints
from train.config import ConfigError


@pytest.fixture(scope='module')
def run_dir(digits_dir, tmp_path_factory):
    """12 steps with a parameter EMA; checkpoints (and evaluations) at steps 6 and 12."""
    workdir = tmp_path_factory.mktemp('evaluate') / 'run'
    config = tiny_config(
        digits_dir, num_steps=12, checkpoint_every_steps=6, ema_decay=0.9, pictures=False
    )
    loop.train_and_evaluate(config, workdir)
    return workdir


def _eval_records(workdir):
    """step -> the metrics of the run's evaluation at that step, from metrics.jsonl."""
    lines = (workdir / 'metrics.jsonl').read_text().splitlines()
    bookkeeping = ('step', 'kind', 'time')
    return {
        r['step']: {k: v for k, v in r.items() if k not in bookkeeping}
        for r in map(json.loads, lines)
        if r['kind'] == 'eval'
    }


def _assert_same_metrics(found, expected, rel=1e-6):
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=rel, abs=1e-7), key


def test_evaluation_equals_the_runs_final_eval(run_dir):
    record = evaluate.evaluate_run(run_dir)
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert 'ema_accuracy' in summary['eval']  # the moving average is evaluated too
    _assert_same_metrics(record['eval'], summary['eval'])
    assert record['split'] == 'test' and record['step'] == 12
    assert json.loads((run_dir / 'eval_test.json').read_text()) == record


def test_an_earlier_step_and_weights_from_another_folder(run_dir, tmp_path):
    at_six = evaluate.evaluate_run(run_dir, step=6)
    _assert_same_metrics(at_six['eval'], _eval_records(run_dir)[6])
    # The same weights copied elsewhere, evaluated under the run's config.
    shutil.copytree(run_dir / 'checkpoints', tmp_path / 'copied')
    copied = evaluate.evaluate_run(run_dir, init_from=tmp_path / 'copied')
    assert copied['checkpoints'] == str(tmp_path / 'copied')
    _assert_same_metrics(copied['eval'], _eval_records(run_dir)[12])
    # Another split, sliced as TFDS slices: its own file.
    sliced = evaluate.evaluate_run(run_dir, 'train[:100]')
    assert sliced['eval']['examples'] == 100 and (run_dir / 'eval_train_100.json').exists()


def test_weights_that_do_not_fit_and_bad_names(run_dir, digits_dir, tmp_path):
    other = tmp_path / 'wider'
    config = tiny_config(digits_dir, num_steps=1, pictures=False)
    config.model.width = 16
    loop.train_and_evaluate(config, other)
    with pytest.raises(CheckpointMismatch, match='do not fit'):
        evaluate.evaluate_run(run_dir, init_from=other)
    with pytest.raises(ConfigError, match="Unknown split 'validation'"):
        evaluate.evaluate_run(run_dir, 'validation')
    with pytest.raises(FileNotFoundError, match='no checkpoint of step 5.*saved: \\[6, 12\\]'):
        evaluate.evaluate_run(run_dir, step=5)
    with pytest.raises(FileNotFoundError, match='no checkpoints in'):
        find_checkpoints(tmp_path)


def _command(*args):
    return subprocess.run(
        [sys.executable, '-m', 'train.evaluate', *args],
        cwd=REPO,
        env=dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_COMPILE}'),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line(run_dir, tmp_path):
    done = _command(f'--workdir={run_dir}')
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.splitlines()[0])
    summary = json.loads((run_dir / 'summary.json').read_text())
    _assert_same_metrics(printed['eval'], summary['eval'], rel=1e-5)  # over 2 devices, not 8
    for args, message in (
        ([f'--workdir={tmp_path / "missing"}'], 'is not a training workdir'),
        ([], '--workdir'),
        ([f'--workdir={run_dir}', '--split=validation'], "Unknown split 'validation'"),
    ):
        failed = _command(*args)
        assert failed.returncode == 64, failed.stderr[-3000:]
        lines = [line for line in failed.stderr.splitlines() if line.startswith('error: ')]
        assert len(lines) == 1 and message in lines[0], failed.stderr[-3000:]
        assert 'Traceback' not in failed.stderr
