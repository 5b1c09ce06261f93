"""Runs that survive what happens on a pod: preemption of one host or all, starting many
processes at once, killed writes and damaged seals, non-finite losses, bad input — each ends
with a checkpoint a rerun can trust, valid metric files and a documented exit code."""

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import data
from tests import nan_model
from tests.conftest import FAST_COMPILE
from tests.test_train import REPO, _free_port, final_params, tiny_config
from train import cli, loop
from train.checkpointing import INTEGRITY_FILE, Checkpointer
from train.config import ConfigError, model_config
from train.metrics_writer import MetricWriter
from train.pictures import read_metrics
from train.progress import NonFiniteError

ENV = dict(os.environ, XLA_FLAGS=FAST_COMPILE)


def _command(workdir: Path, *overrides: str, config: str = 'tiny_digits_config.py') -> list[str]:
    return [
        sys.executable,
        '-m',
        'train.main',
        f'--config={REPO}/tests/{config}',
        f'--workdir={workdir}',
        *overrides,
    ]


def _strict_json_lines(path: Path) -> list[dict]:
    """Parses a .jsonl file rejecting NaN/Infinity, as strict JSON parsers do."""

    def reject(constant):
        raise ValueError(f'{path.name} holds a bare {constant}')

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def _wait_for(predicate, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not predicate():
        time.sleep(0.005)


# ------------------------------------------------------------------ preemption on two hosts


@pytest.mark.parametrize('signalled', ['one', 'both'])
def test_sigterm_to_one_or_both_of_two_processes_stops_both_at_one_checkpoint(
    digits_dir, tmp_path, signalled
):
    """Two processes over loopback; SIGTERM to process 1 only (or to both, a step apart): both
    stop at the same agreed step, write one checkpoint together and exit 75; the same commands
    then resume (and, signalled once, end with the parameters and train records of an
    uninterrupted run, bit for bit)."""
    overrides = [
        f'--config.dataset.data_dir={digits_dir}',
        '--config.num_steps=400',
        '--config.log_every_steps=10',
        '--config.eval_every_steps=400',
        '--config.checkpoint_every_steps=1000',
        '--config.schedule.name=constant',
    ]

    def start_two(workdir: Path) -> list[subprocess.Popen]:
        port = _free_port()
        return [
            subprocess.Popen(
                _command(
                    workdir,
                    *overrides,
                    '--multihost',
                    f'--coordinator_address=127.0.0.1:{port}',
                    '--num_processes=2',
                    f'--process_id={i}',
                ),
                cwd=REPO,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]

    workdir = tmp_path / 'preempted'
    workers = start_two(workdir)
    metrics = workdir / 'metrics.jsonl'
    _wait_for(lambda: metrics.exists() and metrics.read_text().strip(), 180)
    workers[1].send_signal(signal.SIGTERM)
    if signalled == 'both':
        time.sleep(0.01)
        workers[0].send_signal(signal.SIGTERM)
    outputs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [cli.EXIT_PREEMPTED] * 2, outputs[0][-3000:]
    saved = ocp.CheckpointManager(workdir / 'checkpoints').all_steps()
    assert len(saved) == 1 and 0 < saved[0] < 400 and saved[0] % 10 == 0, saved
    assert (workdir / 'checkpoints' / str(saved[0]) / INTEGRITY_FILE).exists()
    records = read_metrics(metrics)['train']
    assert all(r['step'] % 10 == 0 for r in records)  # no off-grid record at the stop

    resumed = start_two(workdir)
    outputs = [w.communicate(timeout=240)[0] for w in resumed]
    assert [w.returncode for w in resumed] == [0, 0], outputs[0][-3000:]
    assert f'Restored checkpoint of step {saved[0]}' in outputs[0]

    if signalled == 'both':
        return  # the comparison with an uninterrupted run is the same as for 'one'
    port = _free_port()
    straight = [
        subprocess.Popen(
            _command(
                tmp_path / 'straight',
                *overrides,
                '--multihost',
                f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2',
                f'--process_id={i}',
            ),
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    assert [w.wait(timeout=240) for w in straight] == [0, 0]
    jax.tree.map(
        np.testing.assert_array_equal,
        final_params(workdir),
        final_params(tmp_path / 'straight'),
    )
    # The train records of the interrupted run are those of the uninterrupted one.
    losses = [r['loss'] for r in read_metrics(metrics)['train']]
    straight_losses = [
        r['loss'] for r in read_metrics(tmp_path / 'straight' / 'metrics.jsonl')['train']
    ]
    assert losses == straight_losses


# ------------------------------------------------------------------ start-up


def test_workdir_probes_of_many_processes_at_once_never_collide(tmp_path):
    """Many processes checking one shared workdir at the same moment (every host of a pod at
    start-up): every check passes."""
    script = (
        'import sys, pathlib\n'
        'from train.workdir import check_workdir\n'
        'for _ in range(100):\n'
        '    check_workdir(pathlib.Path(sys.argv[1]))\n'
    )
    starts = [
        subprocess.Popen(
            [sys.executable, '-c', script, str(tmp_path / 'shared')],
            cwd=REPO,
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=240)[1] for p in starts]
    assert [p.returncode for p in starts] == [0] * 6, errors
    assert not list((tmp_path / 'shared').iterdir())  # every probe removed


# ------------------------------------------------------------------ seals


def test_each_step_is_sealed_as_soon_as_its_save_completes(digits_dir, tmp_path):
    """No later save or clean exit is needed: a run that dies right after a save finishes
    leaves that step sealed."""
    task_state = {'w': np.arange(4.0, dtype=np.float32)}
    checkpointer = Checkpointer(tmp_path / 'checkpoints', keep=3)
    source = data.load_source('digits', 'train', digits_dir)
    iterator = iter(data.train_loader(source, global_batch_size=32, seed=0))
    checkpointer.save(3, task_state, iterator, window={'steps': 1, 'sums': {'loss': 0.5}})
    checkpointer._manager.wait_until_finished()  # finalised; neither close() nor wait() called
    seal = tmp_path / 'checkpoints' / '3' / INTEGRITY_FILE
    assert seal.exists() and json.loads(seal.read_text())
    checkpointer.close()


@pytest.mark.parametrize('damage', ['empty_seal', 'truncated_seal', 'no_seal', 'flipped_byte'])
def test_damaged_newest_step_is_moved_aside_and_the_older_one_resumed(
    digits_dir, tmp_path, damage, caplog
):
    caplog.set_level(logging.INFO)
    config = tiny_config(digits_dir, num_steps=8, checkpoint_every_steps=4)
    loop.train_and_evaluate(config, tmp_path)
    newest = tmp_path / 'checkpoints' / '8'
    seal = newest / INTEGRITY_FILE
    if damage == 'empty_seal':
        seal.write_text('')
    elif damage == 'truncated_seal':
        seal.write_text(seal.read_text()[: len(seal.read_text()) // 2])
    elif damage == 'no_seal':
        seal.unlink()
    else:
        victim = max((p for p in newest.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        victim.write_bytes(bytes(raw))
    summary = loop.train_and_evaluate(tiny_config(digits_dir, num_steps=8), tmp_path)
    assert summary['step'] == 8
    assert any(p.name.startswith('corrupt-8-') for p in (tmp_path / 'checkpoints').iterdir())
    assert 'cannot be trusted' in caplog.text
    assert 'Restored checkpoint of step 4' in caplog.text


# ------------------------------------------------------------------ non-finite stops


def test_nan_stop_waits_for_the_save_in_flight_and_names_it(digits_dir, tmp_path):
    """The loss turns NaN at step 6, right after the save of step 4 started: that save
    completes and is sealed, the message names it, exit code 70, and the rerun resumes it."""
    command = _command(
        tmp_path / 'run', f'--config.dataset.data_dir={digits_dir}', config='nan_digits_config.py'
    )
    first = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert first.returncode == cli.EXIT_NONFINITE, first.stderr[-3000:]
    error_lines = [line for line in first.stderr.splitlines() if line.startswith('error:')]
    assert len(error_lines) == 1 and 'at step 6' in error_lines[0], first.stderr[-2000:]
    assert 'the newest checkpoint is step 4' in error_lines[0]
    checkpoints = tmp_path / 'run' / 'checkpoints'
    assert sorted(p.name for p in checkpoints.iterdir()) == ['4']
    assert (checkpoints / '4' / INTEGRITY_FILE).exists()
    assert 'Traceback' not in first.stderr
    rerun = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == cli.EXIT_NONFINITE
    assert 'Restored checkpoint of step 4' in rerun.stderr


def test_skip_policy_stops_after_the_configured_consecutive_skips(digits_dir, tmp_path):
    with nan_model.registered() as name:
        config = tiny_config(digits_dir, num_steps=40, nonfinite='skip', nonfinite_max_skips=5)
        config.model = model_config(name, nan_from_step=3)
        config.log_every_steps = 1
        with pytest.raises(NonFiniteError, match='5 consecutive updates skipped'):
            loop.train_and_evaluate(config, tmp_path)
    records = _strict_json_lines(tmp_path / 'metrics.jsonl')
    train = [r for r in records if r['kind'] == 'train']
    # Steps 3-7 are skipped (no finite step to average: no record), the fifth stops the run.
    assert [r['step'] for r in train] == [1, 2]
    assert all(np.isfinite(r['loss']) for r in train)


def test_metric_files_stay_strict_json_with_non_finite_values(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write(3, 'eval', {'loss': float('nan'), 'accuracy': float('inf'), 'examples': 9})
    writer.close()
    (record,) = _strict_json_lines(tmp_path / 'metrics.jsonl')
    assert record['loss'] is None and record['accuracy'] is None and record['examples'] == 9
    (read,) = read_metrics(tmp_path / 'metrics.jsonl')['eval']
    assert np.isnan(read['loss'])


def test_nan_eval_is_written_as_null_in_summary_json(digits_dir, tmp_path):
    with nan_model.registered() as name:
        config = tiny_config(digits_dir, num_steps=4)
        config.model = model_config(name, nan_from_step=100, nan_in_eval=True)
        summary = loop.train_and_evaluate(config, tmp_path)
    assert np.isnan(summary['eval']['loss'])  # the returned summary keeps the float

    def reject(constant):
        raise ValueError(f'bare {constant}')

    written = json.loads((tmp_path / 'summary.json').read_text(), parse_constant=reject)
    assert written['eval']['loss'] is None
    evals = [r for r in _strict_json_lines(tmp_path / 'metrics.jsonl') if r['kind'] == 'eval']
    assert evals and all(r['loss'] is None for r in evals)


# ------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    'override, expected',
    [
        ('--config.num_steps=0', 'config.num_steps=0 is not valid'),
        ('--config.eval_every_steps=-5', 'config.eval_every_steps=-5 is not valid'),
        ('--config.checkpoint_every_steps=0', 'config.checkpoint_every_steps=0'),
        ('--config.optimizer.learning_rate=1e6', 'valid (0, 1]'),
        ('--config.optimizer.learnin_rate=0.1', "valid keys of config.optimizer: ['agc_clip'"),
        ('--config.dataset.name=imagenet', 'imagenet'),
    ],
)
def test_bad_input_prints_one_line_and_exits_64(digits_dir, tmp_path, override, expected):
    run = subprocess.run(
        _command(tmp_path / 'run', f'--config.dataset.data_dir={digits_dir}', override),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == cli.EXIT_USAGE, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1 and expected in errors[0], run.stderr[-2000:]
    assert 'Traceback' not in run.stderr


def test_changed_config_in_a_used_workdir_names_the_differing_keys(digits_dir, tmp_path):
    loop.train_and_evaluate(tiny_config(digits_dir, num_steps=4), tmp_path)
    wider = tiny_config(digits_dir, num_steps=8)
    wider.model.width = 48
    with pytest.raises(ConfigError, match=r'different config \(model\.width: 32 -> 48'):
        loop.train_and_evaluate(wider, tmp_path)
    assert (tmp_path / 'checkpoints' / '4').is_dir()


# ------------------------------------------------------------------ metrics continuity


def _tensorboard_steps(event_file: Path, tag: str) -> list[int]:
    """Steps of scalar `tag` in a TensorBoard event file (TFRecord framing of Event protos)."""
    from tensorboardX.proto import event_pb2

    steps, raw, at = [], event_file.read_bytes(), 0
    while at + 12 <= len(raw):
        (length,) = struct.unpack('<Q', raw[at : at + 8])
        body = raw[at + 12 : at + 12 + length]
        at += 12 + length + 4
        if len(body) < length:
            break  # a record cut by the kill
        event = event_pb2.Event.FromString(body)
        steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_killed_run_keeps_every_tensorboard_point_its_checkpoint_covers(digits_dir, tmp_path):
    command = _command(
        tmp_path / 'run',
        f'--config.dataset.data_dir={digits_dir}',
        '--config.num_steps=100000',
        '--config.log_every_steps=5',
        '--config.checkpoint_every_steps=50',
        '--config.eval_every_steps=100000',
    )
    process = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = tmp_path / 'run' / 'checkpoints'
    _wait_for(lambda: (checkpoints / '100' / INTEGRITY_FILE).exists(), 180)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    (event_file,) = (tmp_path / 'run' / 'tensorboard').glob('events.*')
    steps = _tensorboard_steps(event_file, 'train/loss')
    assert set(range(5, newest + 1, 5)) <= set(steps), (newest, steps[-5:])
