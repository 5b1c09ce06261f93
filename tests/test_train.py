"""The trainer end to end on real (tiny) data: training, sharding, resume, stops, outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import data
from tests import nan_model
from tests.conftest import FAST_COMPILE
from train import loop
from train.checkpointing import load_checkpoint
from train.config import ConfigError, default_config, model_config
from train.progress import NonFiniteError
from train.sharding import host_to_global, make_mesh
from train.steps import init_train_state, make_train_step
from train.tasks import create_task

REPO = Path(__file__).resolve().parents[1]


def tiny_config(data_dir, **changes):
    config = default_config()
    config.dataset.name = 'digits'
    config.dataset.data_dir = data_dir
    config.model = model_config('mlp', depth=1, width=32, dropout_rate=0.1, batch_norm=True)
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_steps = 12
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = 'constant'
    config.log_every_steps = 4
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 4
    for key, value in changes.items():
        block, _, leaf = key.rpartition('.')
        (config[block] if block else config)[leaf] = value
    return config


def final_params(workdir):
    return load_checkpoint(Path(workdir) / 'checkpoints')['params']


def test_training_writes_every_output_and_learns(digits_dir, tmp_path):
    config = tiny_config(digits_dir, num_steps=60, eval_every_steps=30)
    summary = loop.train_and_evaluate(config, tmp_path)
    assert summary['stop_reason'] == 'finished' and summary['step'] == 60
    assert summary['devices'] == 8  # conftest simulates 8 CPU devices
    assert summary['eval']['accuracy'] > 0.6  # 10 classes: chance is 0.1
    assert summary['eval']['examples'] == data.dataset_info('digits', digits_dir).splits['test']
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    train_records = [r for r in records if r['kind'] == 'train']
    assert [r['step'] for r in train_records] == list(range(4, 61, 4))
    assert {'loss', 'accuracy', 'learning_rate', 'examples_per_second'} <= set(train_records[0])
    assert [r['step'] for r in records if r['kind'] == 'eval'] == [30, 60]
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    for picture in ('training_curves.png', 'confusion_matrix.png'):
        assert (tmp_path / 'pictures' / picture).read_bytes()[:4] == b'\x89PNG'
    assert json.loads((tmp_path / 'summary.json').read_text())['step'] == 60
    assert json.loads((tmp_path / 'config.json').read_text())['model']['name'] == 'mlp'
    # Rerunning a finished run only re-evaluates, and logs nothing twice.
    again = loop.train_and_evaluate(config, tmp_path)
    assert again['step'] == 60 and again['eval'] == summary['eval']
    assert (tmp_path / 'metrics.jsonl').read_text().splitlines() == [json.dumps(r) for r in records]


def test_sharded_step_equals_single_device_step(digits_dir):
    """The same batch on a 1-device mesh and on the 8-device mesh: same loss and parameters.
    (SGD with momentum: Adam divides by |g|, which turns float reassociation noise in near-zero
    gradients into O(1) differences.)"""
    config = tiny_config(
        digits_dir, **{'optimizer.name': 'momentum', 'optimizer.learning_rate': 0.1}
    )
    info = data.dataset_info('digits', digits_dir)
    model = loop.create_model(config, info)
    task = create_task('classify', model=model, info=info)
    from train.optim import build_optimizer

    tx, _ = build_optimizer(config.optimizer, config.schedule, steps_per_epoch=10, total_steps=20)
    source = data.load_source('digits', 'train', digits_dir)
    batch = next(iter(data.train_loader(source, global_batch_size=32, seed=0)))
    results = []
    for mesh in (make_mesh(jax.devices()[:1]), make_mesh()):
        state = init_train_state(task, tx, seed=0, mesh=mesh)
        step = make_train_step(task, tx, mesh, skip_nonfinite=False)
        for _ in range(3):
            state, metrics = step(state, host_to_global(batch, mesh))
        results.append(
            (
                float(metrics['loss']),
                jax.device_get(state.params),
                jax.device_get(state.model_state),
            )
        )
    (loss1, params1, bn1), (loss8, params8, bn8) = results
    assert loss1 == pytest.approx(loss8, rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (params1, bn1),
        (params8, bn8),
    )


def test_resume_continues_with_identical_state(digits_dir, tmp_path):
    straight = tmp_path / 'straight'
    loop.train_and_evaluate(tiny_config(digits_dir), straight)
    interrupted = tmp_path / 'interrupted'
    loop.train_and_evaluate(tiny_config(digits_dir, num_steps=8), interrupted)
    # Same command with the full length: restores step 8, its optimiser state, rng and data order.
    summary = loop.train_and_evaluate(tiny_config(digits_dir), interrupted)
    assert summary['step'] == 12
    jax.tree.map(np.testing.assert_array_equal, final_params(straight), final_params(interrupted))
    steps = [
        json.loads(line)['step']
        for line in (interrupted / 'metrics.jsonl').read_text().splitlines()
        if json.loads(line)['kind'] == 'train'
    ]
    assert steps == sorted(set(steps))  # each step logged once


def test_killed_run_resumes_from_last_checkpoint(digits_dir, tmp_path):
    """SIGKILL a real training process after its first checkpoint, while it writes a later one
    when the poll catches the write in flight; rerun the same command."""
    overrides = [
        f'--config.dataset.data_dir={digits_dir}',
        '--config.num_steps=400',
        '--config.checkpoint_every_steps=50',
        '--config.log_every_steps=50',
        '--config.eval_every_steps=400',
        '--config.schedule.name=constant',
    ]
    command = [
        sys.executable,
        '-m',
        'train.main',
        f'--config={REPO}/tests/tiny_digits_config.py',
        f'--workdir={tmp_path / "run"}',
        *overrides,
    ]
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_COMPILE}')
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = tmp_path / 'run' / 'checkpoints'
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints / '50').exists():
        time.sleep(0.2)
    # Orbax writes a step into '<step>.orbax-checkpoint-tmp-*' and renames it when complete.
    writing_deadline = time.time() + 20
    while time.time() < writing_deadline and process.poll() is None:
        if any('tmp' in p.name and not p.name.startswith('50.') for p in checkpoints.iterdir()):
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = ocp.CheckpointManager(checkpoints).all_steps()
    assert done and max(done) < 400, done
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'Restored checkpoint of step {max(done)}' in rerun.stderr
    assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['step'] == 400


def test_sigterm_checkpoints_exits_cleanly_and_the_same_command_continues(digits_dir, tmp_path):
    """A preemption notice mid-run: a checkpoint at the current step (none was due), exit code
    75 (preempted, rerun me), and the rerun restores it and finishes."""
    overrides = [
        f'--config.dataset.data_dir={digits_dir}',
        '--config.num_steps=1000',
        '--config.checkpoint_every_steps=5000',
        '--config.log_every_steps=20',
        '--config.eval_every_steps=5000',
    ]
    command = [
        sys.executable,
        '-m',
        'train.main',
        f'--config={REPO}/tests/tiny_digits_config.py',
        f'--workdir={tmp_path / "run"}',
        *overrides,
    ]
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / 'run' / 'metrics.jsonl'
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]
    assert 'preempted (SIGTERM)' in stdout
    saved = ocp.CheckpointManager(tmp_path / 'run' / 'checkpoints').all_steps()
    assert len(saved) == 1 and 20 <= saved[0] < 1000, saved
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'Restored checkpoint of step {saved[0]}' in rerun.stderr
    assert json.loads((tmp_path / 'run' / 'summary.json').read_text())['step'] == 1000


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(digits_dir, tmp_path):
    with nan_model.registered() as name:
        config = tiny_config(digits_dir, num_steps=40)
        config.model = model_config(name, nan_from_step=10)
        with pytest.raises(NonFiniteError, match=r'non-finite loss .* at step 10'):
            loop.train_and_evaluate(config, tmp_path)
    steps = ocp.CheckpointManager(tmp_path / 'checkpoints').all_steps()
    assert steps == [4, 8]
    for step in steps:
        params = load_checkpoint(tmp_path / 'checkpoints', step)['params']
        assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_nan_skip_policy_keeps_parameters_finite(digits_dir, tmp_path):
    with nan_model.registered() as name:
        config = tiny_config(digits_dir, num_steps=8, nonfinite='skip')
        config.model = model_config(name, nan_from_step=5)
        summary = loop.train_and_evaluate(config, tmp_path)
    assert summary['step'] == 8
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(final_params(tmp_path)))


def test_early_stopping_stops_when_metric_stalls(digits_dir, tmp_path):
    config = tiny_config(digits_dir, num_steps=200, eval_every_steps=2)
    config.optimizer.learning_rate = 1e-9  # nothing improves...
    config.model = model_config('mlp', depth=1, width=32)  # ...not even batch-norm statistics
    config.early_stopping.metric = 'accuracy'
    config.early_stopping.mode = 'max'
    config.early_stopping.patience = 2
    summary = loop.train_and_evaluate(config, tmp_path)
    assert summary['stop_reason'].startswith('early stopping')
    assert summary['step'] < 20
    assert summary['early_stopping']['best_step'] == 2


def test_bad_input_fails_before_compiling(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match='optimizer.name'):
        loop.train_and_evaluate(tiny_config(digits_dir, **{'optimizer.name': 'adagrad'}), tmp_path)
    with pytest.raises(ValueError, match='does not divide over 8 devices'):
        loop.train_and_evaluate(tiny_config(digits_dir, batch_size=12), tmp_path / 'b')
    unwritable = tmp_path / 'file'
    unwritable.write_text('not a folder')
    with pytest.raises(ConfigError, match='not writable'):
        loop.train_and_evaluate(tiny_config(digits_dir), unwritable / 'run')
    started = time.time()
    with pytest.raises(data.DatasetNotPreparedError, match='data.prepare'):
        loop.train_and_evaluate(tiny_config(str(tmp_path / 'empty')), tmp_path / 'c')
    assert time.time() - started < 5


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(digits_dir, tmp_path):
    """Two JAX processes over loopback (jax.distributed, CPU collectives), one device each,
    against one process with two devices: same global batches, same parameters; only process 0
    writes metrics and pictures; both write the shared checkpoint at step 10 and both restore
    it when the two are started again for 20 steps."""
    common = [
        f'--config={REPO}/tests/tiny_digits_config.py',
        f'--config.dataset.data_dir={digits_dir}',
        '--config.optimizer.name=momentum',
        '--config.optimizer.learning_rate=0.05',
        '--config.log_every_steps=10',
        '--config.schedule.name=constant',
    ]
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)

    def run_two(steps: int) -> list[str]:
        port = _free_port()
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    '-m',
                    'train.main',
                    *common,
                    f'--config.num_steps={steps}',
                    f'--workdir={tmp_path / "two"}',
                    '--multihost',
                    f'--coordinator_address=127.0.0.1:{port}',
                    '--num_processes=2',
                    f'--process_id={i}',
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [w.communicate(timeout=240)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        return outputs

    run_two(10)
    outputs = run_two(20)
    # Process 1 logs warnings only; had it not restored too, the two would disagree on the
    # step and the parameters would not match the one-process run below.
    assert 'Restored checkpoint of step 10' in outputs[0]
    single = subprocess.run(
        [
            sys.executable,
            '-m',
            'train.main',
            *common,
            '--config.num_steps=20',
            f'--workdir={tmp_path / "one"}',
            '--config.runtime.cpu_devices=2',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two = json.loads((tmp_path / 'two' / 'summary.json').read_text())
    one = json.loads((tmp_path / 'one' / 'summary.json').read_text())
    assert two['processes'] == 2 and one['processes'] == 1
    assert two['eval']['loss'] == pytest.approx(one['eval']['loss'], rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        final_params(tmp_path / 'two'),
        final_params(tmp_path / 'one'),
    )
    assert 'metrics:' in outputs[0] and 'metrics:' not in outputs[1]  # process 0 reports
    # One event file per session of process 0 (two sessions), none from process 1.
    assert len(list((tmp_path / 'two' / 'tensorboard').glob('events.*'))) == 2


class _AuxNet(nn.Module):
    """A linear classifier with one auxiliary head that only runs in training, like GoogLeNet's."""

    num_classes: int = 10
    aux_loss_weight: float = 0.3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = x.reshape(x.shape[0], -1)
        if train:
            self.sow('aux_logits', 'aux1', nn.Dense(self.num_classes, name='aux')(h))
        return nn.Dense(self.num_classes, name='head')(h)


def test_auxiliary_logits_add_weighted_loss_in_training_only(digits_dir):
    import optax

    info = data.dataset_info('digits', digits_dir)
    task = create_task('classify', model=_AuxNet(), info=info)
    variables = task.init_variables(jax.random.key(0))
    assert 'aux' in variables['params']  # created at init although eval never runs it
    batch = next(
        iter(
            data.train_loader(
                data.load_source('digits', 'train', digits_dir), global_batch_size=16, seed=0
            )
        )
    )
    loss, (_, metrics) = task.train_loss(variables['params'], {}, batch, jax.random.key(1))
    images = task.normalise(batch['image']).reshape(16, -1)

    def ce(name):
        return optax.softmax_cross_entropy_with_integer_labels(
            images @ variables['params'][name]['kernel'] + variables['params'][name]['bias'],
            batch['label'],
        ).mean()

    assert float(metrics['aux_loss']) == pytest.approx(float(ce('aux')), rel=1e-5)
    assert float(loss) == pytest.approx(float(ce('head') + 0.3 * ce('aux')), rel=1e-5)
    sums = task.eval_sums(variables['params'], {}, dict(batch, mask=np.ones(16, bool)))
    assert float(sums['loss_sum']) / 16 == pytest.approx(float(ce('head')), rel=1e-5)


def test_training_with_on_device_augmentation_and_mixing(digits_dir, tmp_path):
    """An augmentation pipeline runs inside the jitted, sharded step; mixup gives soft labels."""
    config = tiny_config(digits_dir, num_steps=6, eval_every_steps=6)
    config.augment = (
        {'op': 'translate', 'max_pixels': 1.0},
        {'op': 'flip_lr'},
        {'op': 'gaussian_noise', 'stddev': 0.02},
        {'op': 'mixup', 'alpha': 0.4},
    )
    summary = loop.train_and_evaluate(config, tmp_path)
    assert summary['step'] == 6 and np.isfinite(summary['eval']['loss'])
    bad = tiny_config(digits_dir)
    bad.augment = ({'op': 'rotat'},)
    with pytest.raises(ConfigError, match="config.augment.*'rotat'.*'rotate'"):
        loop.train_and_evaluate(bad, tmp_path / 'bad')


def test_profile_steps_trace_the_window_and_training_is_unchanged(digits_dir, tmp_path):
    profiled = loop.train_and_evaluate(
        tiny_config(digits_dir, num_steps=6, profile_steps=(2, 4)), tmp_path / 'profiled'
    )
    plain = loop.train_and_evaluate(tiny_config(digits_dir, num_steps=6), tmp_path / 'plain')
    assert len(list((tmp_path / 'profiled' / 'profile').rglob('*.xplane.pb'))) == 1
    assert not (tmp_path / 'plain' / 'profile').exists()
    assert profiled['eval'] == plain['eval']
    jax.tree.map(
        np.testing.assert_array_equal,
        final_params(tmp_path / 'profiled'),
        final_params(tmp_path / 'plain'),
    )
