"""Runs that survive and scale: corrupt checkpoints skipped, gradient accumulation,
mixed precision, FSDP rules, the parameters' EMA, and property tests over config values."""

import json
import logging as python_logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data
import nets
from experiments import fashion_mnist_quickstart
from tests.test_train import final_params, tiny_config
from train import config as config_lib
from train import loop
from train.checkpointing import INTEGRITY_FILE, load_checkpoint
from train.config import ConfigError, default_config, model_config
from train.ema import ema_decay_at
from train.optim import build_optimizer
from train.sharding import host_to_global, make_mesh
from train.steps import init_train_state, make_train_step
from train.tasks import create_task

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _array_files(checkpoints: Path, step: int) -> list[Path]:
    """The files holding a step's array data (orbax's OCDBT chunks)."""
    return [
        p
        for p in (checkpoints / str(step) / 'state').rglob('*')
        if p.is_file() and p.parent.name == 'd'
    ]


def _damage(checkpoints: Path, step: int, how: str) -> None:
    victims = _array_files(checkpoints, step)
    if how == 'flipped_bytes_sealed':
        victim = max(victims, key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one silent bit-rot byte: only the seal can tell
        victim.write_bytes(bytes(raw))
    else:  # killed after orbax's rename, before the seal: the data files half written
        (checkpoints / str(step) / INTEGRITY_FILE).unlink()
        for victim in victims:
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(digits_dir, tmp_path, caplog):
    """Two damages in turn — one flipped byte in a sealed step, half-written files in an
    unsealed one — each skipped with a warning; the run ends as the one never damaged."""
    config = tiny_config(digits_dir, num_steps=12)
    straight = tmp_path / 'straight'
    loop.train_and_evaluate(_with(config, num_steps=20), straight)
    run = tmp_path / 'run'
    loop.train_and_evaluate(config, run)  # checkpoints at 4, 8, 12
    checkpoints = run / 'checkpoints'
    for bad_step, damage, steps in (
        (12, 'flipped_bytes_sealed', 16),
        (16, 'truncated_unsealed', 20),
    ):
        assert (checkpoints / str(bad_step) / INTEGRITY_FILE).exists()  # sealed at close
        _damage(checkpoints, bad_step, damage)
        caplog.clear()
        with caplog.at_level(python_logging.WARNING):
            summary = loop.train_and_evaluate(_with(config, num_steps=steps), run)
        assert any(
            f'step {bad_step}' in r.getMessage() and 'corrupt' in r.getMessage()
            for r in caplog.records
        ), damage
        assert summary['step'] == steps
        assert list(checkpoints.glob(f'corrupt-{bad_step}-*'))  # moved aside, not deleted
    # Resumed from the step before each damage: the parameters of the run never interrupted.
    jax.tree.map(np.testing.assert_array_equal, final_params(straight), final_params(run))


def _with(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in changes.items():
        block, _, leaf = key.rpartition('.')
        (config[block] if block else config)[leaf] = value
    return config


@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
def test_gradient_accumulation_equals_the_large_batch_step(digits_dir, tmp_path, optimizer):
    config = tiny_config(digits_dir, num_steps=6)
    config.model = model_config('mlp', depth=1, width=32)  # no batch norm: per-example loss
    config.optimizer.name = optimizer
    config.optimizer.learning_rate = 0.05 if optimizer == 'momentum' else 3e-3
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.05
    large = loop.train_and_evaluate(config, tmp_path / 'large')
    accumulated = loop.train_and_evaluate(
        _with(config, grad_accum_steps=4), tmp_path / 'accumulated'
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
        final_params(tmp_path / 'large'),
        final_params(tmp_path / 'accumulated'),
    )
    assert accumulated['eval']['loss'] == pytest.approx(large['eval']['loss'], rel=1e-4)
    records = [
        json.loads(line)
        for line in (tmp_path / 'accumulated' / 'metrics.jsonl').read_text().splitlines()
    ]
    train = [r for r in records if r['kind'] == 'train']
    assert train[-1]['step'] == 6  # a loop step is one optimiser update


def test_gradient_accumulation_rejects_batches_that_do_not_split(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match='grad_accum_steps=3'):
        loop.train_and_evaluate(tiny_config(digits_dir, grad_accum_steps=3), tmp_path / 'a')
    with pytest.raises(ValueError, match='micro-batch'):  # 32 / 8 = 4 rows over 8 devices
        loop.train_and_evaluate(tiny_config(digits_dir, grad_accum_steps=8), tmp_path / 'b')


def test_bfloat16_compute_keeps_float32_state_and_matches_float32_loss(digits_dir, tmp_path):
    """The quickstart's model and optimiser on the digits: bfloat16 activations, float32
    parameters and optimiser state, and an evaluation loss as close to the float32 run's as
    two float32 runs with different seeds are to each other (with margin). bfloat16 kernels
    differ by instruction set (AVX512-BF16, AMX), so only such a spread-relative bound holds on
    every x86-64 host; no trajectory or accuracy gap is compared."""
    base = fashion_mnist_quickstart.get_config()
    base.dataset.name, base.dataset.data_dir = 'digits', digits_dir
    base.num_epochs, base.num_steps = 1.0, 60
    base.batch_size, base.eval_batch_size = 32, 360
    base.log_every_steps = base.eval_every_steps = base.checkpoint_every_steps = 60
    runs = {
        'float32': _with(base, dtype='float32'),
        'float32_seed1': _with(base, dtype='float32', seed=1),
        'bfloat16': _with(base, dtype='bfloat16'),
    }
    losses = {
        name: loop.train_and_evaluate(config, tmp_path / name)['eval']['loss']
        for name, config in runs.items()
    }
    state = load_checkpoint(tmp_path / 'bfloat16' / 'checkpoints')
    dtypes = {
        x.dtype
        for x in jax.tree.leaves((state['params'], state['opt_state']))
        if jnp.issubdtype(x.dtype, jnp.floating)
    }
    assert dtypes == {jnp.dtype('float32')}
    seed_spread = abs(losses['float32'] - losses['float32_seed1'])
    # One pair of seeds estimates the spread poorly, hence the relative floor; a broken
    # bfloat16 path (a loss near log 10 = 2.3) is far outside either.
    tolerance = max(3 * seed_spread, 0.2 * losses['float32'])
    assert abs(losses['bfloat16'] - losses['float32']) <= tolerance, (losses, tolerance)
    # The model really computes in bfloat16: its logits (returned as float32 for the loss)
    # carry bfloat16's 8-bit mantissa.
    model = loop.create_model(
        _with(base, dtype='bfloat16'), data.dataset_info('digits', digits_dir)
    )
    variables = jax.tree.map(jnp.asarray, {'params': state['params'], **state['model_state']})
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    logits = np.asarray(model.apply(variables, images, train=False), np.float32)
    np.testing.assert_array_equal(logits, logits.astype(jnp.bfloat16).astype(np.float32))
    f32_model = loop.create_model(base, data.dataset_info('digits', digits_dir))
    f32_logits = np.asarray(f32_model.apply(variables, images, train=False))
    assert not np.array_equal(f32_logits, f32_logits.astype(jnp.bfloat16).astype(np.float32))


def test_fsdp_rules_shard_state_and_give_the_replicated_step(digits_dir):
    info = data.dataset_info('digits', digits_dir)
    model = nets.create('mlp', num_classes=info.num_classes, depth=2, width=64)
    task = create_task('classify', model=model, info=info)
    tx, _ = build_optimizer(
        default_config().optimizer, default_config().schedule, steps_per_epoch=10, total_steps=10
    )
    mesh = make_mesh()
    assert mesh.devices.size == 8
    rules = (('.*kernel', 'fsdp'),)
    states = {
        'replicated': init_train_state(task, tx, 0, mesh, ema=True),
        'fsdp': init_train_state(task, tx, 0, mesh, ema=True, param_sharding=rules),
    }
    fsdp = states['fsdp']
    kernel = fsdp.params['dense1']['kernel']  # 64 x 64
    assert kernel.sharding.spec == jax.sharding.PartitionSpec('data')
    assert kernel.addressable_shards[0].data.shape == (8, 64)
    momentum = jax.tree.leaves(fsdp.opt_state)
    assert any(
        getattr(m, 'shape', None) == (64, 64) and not m.sharding.is_fully_replicated
        for m in momentum
    )
    assert not fsdp.ema_params['dense1']['kernel'].sharding.is_fully_replicated
    assert fsdp.params['dense1']['bias'].sharding.is_fully_replicated  # no rule matches
    source = data.maybe_in_memory(data.load_source('digits', 'train', digits_dir))
    batches = [
        {'image': source.image[i : i + 32], 'label': source.label[i : i + 32]}
        for i in range(0, 96, 32)
    ]
    results = {}
    for name, state in states.items():
        sharding = jax.tree.map(lambda x: x.sharding, state)
        step = make_train_step(
            task, tx, mesh, skip_nonfinite=False, state_sharding=sharding, ema_decay=0.9
        )
        for host_batch in batches:
            state, _ = step(state, host_to_global(host_batch, mesh))
        replicated = state.params['dense1']['kernel'].sharding.is_fully_replicated
        assert replicated == (name == 'replicated')  # the step keeps the layout
        results[name] = jax.device_get((state.params, state.opt_state, state.ema_params))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        results['replicated'],
        results['fsdp'],
    )


def test_fsdp_run_checkpoints_and_resumes_like_a_replicated_run(digits_dir, tmp_path):
    config = tiny_config(digits_dir, num_steps=8)
    config.model = model_config('mlp', depth=1, width=64)
    loop.train_and_evaluate(config, tmp_path / 'replicated')
    sharded = _with(config, num_steps=4, param_sharding=(('.*', 'fsdp'),), fsdp_min_size=0)
    loop.train_and_evaluate(sharded, tmp_path / 'fsdp')
    loop.train_and_evaluate(_with(sharded, num_steps=8), tmp_path / 'fsdp')  # resume sharded
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        final_params(tmp_path / 'replicated'),
        final_params(tmp_path / 'fsdp'),
    )


def test_ema_is_evaluated_beside_the_raw_parameters(digits_dir, tmp_path):
    config = tiny_config(digits_dir, num_steps=12, ema_decay=0.9)
    summary = loop.train_and_evaluate(config, tmp_path)
    assert {'ema_loss', 'ema_accuracy', 'loss', 'accuracy'} <= set(summary['eval'])
    assert summary['eval']['ema_loss'] != summary['eval']['loss']
    state = load_checkpoint(tmp_path / 'checkpoints')
    assert jax.tree.structure(state['ema_params']) == jax.tree.structure(state['params'])
    evals = [
        json.loads(line)
        for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
        if json.loads(line)['kind'] == 'eval'
    ]
    assert all('ema_accuracy' in record for record in evals)


def test_ema_update_rule_after_one_step(digits_dir):
    info = data.dataset_info('digits', digits_dir)
    task = create_task(
        'classify', model=nets.create('mlp', num_classes=10, depth=1, width=16), info=info
    )
    tx, _ = build_optimizer(
        default_config().optimizer, default_config().schedule, steps_per_epoch=10, total_steps=10
    )
    mesh = make_mesh()
    state = init_train_state(task, tx, 0, mesh, ema=True)
    before = jax.device_get(state.params)
    step = make_train_step(task, tx, mesh, skip_nonfinite=False, ema_decay=0.999)
    source = data.maybe_in_memory(data.load_source('digits', 'train', digits_dir))
    state, _ = step(
        state, host_to_global({'image': source.image[:32], 'label': source.label[:32]}, mesh)
    )
    d = float(ema_decay_at(0.999, 0))
    assert d == pytest.approx(0.1)  # warm-up: min(0.999, 1/10)
    expected = jax.tree.map(
        lambda p0, p1: d * p0 + (1 - d) * p1, before, jax.device_get(state.params)
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        jax.device_get(state.ema_params),
        expected,
    )


# ------------------------------------------------------------------ property-based tests


def _numeric_leaves() -> list[str]:
    reference = default_config().to_dict()
    reference.pop('model')
    found = []

    def walk(block, prefix):
        for key, value in block.items():
            if isinstance(value, dict):
                walk(value, f'{prefix}{key}.')
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append(prefix + key)

    walk(reference, '')
    return found


NUMERIC_KEYS = _numeric_leaves()
ANY_VALUE = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def _set(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
    plain = config.to_dict()
    *blocks, leaf = key.split('.')
    target = plain
    for block in blocks:
        target = target[block]
    target[leaf] = value
    return ml_collections.ConfigDict(plain)


@SETTINGS
@given(key=st.sampled_from(NUMERIC_KEYS), value=ANY_VALUE)
def test_validate_accepts_or_names_the_bad_key(key, value):
    """Any value in any numeric key: validation passes, or fails with a ConfigError naming that
    key — never another exception, never later at compile time."""
    config = _set(default_config(), key, value)
    try:
        config_lib.validate(config)
    except ConfigError as error:
        assert key.split('.')[-1] in str(error), (key, value, str(error))
        return
    # Accepted: then it is a finite number of the right kind, in the key's range.
    assert isinstance(value, (int, float)) and not isinstance(value, bool)
    assert math.isfinite(value)
    if key in ('num_steps', 'eval_every_steps', 'checkpoint_every_steps'):
        assert value == -1 or value > 0, (key, value)
    if key in ('log_every_steps', 'nonfinite_max_skips', 'batch_size'):
        assert value > 0, (key, value)


@pytest.mark.parametrize(
    'changes',
    [
        {'num_steps': 0},
        {'num_steps': -3},
        {'eval_every_steps': 0},
        {'eval_every_steps': -5},
        {'checkpoint_every_steps': -2},
        {'nonfinite_max_skips': 0},
        {'optimizer.name': 'adam', 'optimizer.learning_rate': 1e6},
        {'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e30},
        {'num_steps': -1, 'num_epochs': 0.0},
        {'profile_steps': (3, 3)},
        {'profile_steps': (-2, 4)},
    ],
)
def test_values_that_used_to_pass_silently_are_rejected_with_the_valid_range(changes):
    config = _with(default_config(), **changes)
    with pytest.raises(ConfigError, match='valid|must be'):
        config_lib.validate(config)


@SETTINGS
@given(
    key=st.text(alphabet='abcdefghijklmnopqrstuvwxyz_', min_size=1, max_size=12),
    block=st.sampled_from(['', 'optimizer.', 'schedule.', 'dataset.']),
)
def test_unknown_keys_are_named_with_the_valid_ones(key, block):
    reference = default_config()
    known = reference[block[:-1]] if block else reference
    if key in known:
        return
    plain = reference.to_dict()
    (plain[block[:-1]] if block else plain)[key] = 1
    with pytest.raises(ConfigError, match=rf"unknown config key '{block}{key}'; valid keys"):
        config_lib.validate(ml_collections.ConfigDict(plain))


@SETTINGS
@given(
    name=st.text(min_size=1, max_size=10),
    where=st.sampled_from(['model.name', 'optimizer.name', 'schedule.name', 'task', 'dtype']),
)
def test_unknown_names_list_the_valid_choices(name, where):
    valid = {
        'model.name': nets.list_models(),
        'optimizer.name': config_lib.OPTIMIZERS,
        'schedule.name': config_lib.SCHEDULES,
        'task': config_lib.TASKS,
        'dtype': config_lib.DTYPES,
    }[where]
    if name in valid:
        return
    config = default_config()
    if where == 'model.name':
        config.model = ml_collections.ConfigDict({'name': name})
    else:
        config = _set(config, where, name)
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config)
    assert repr(name) in str(error.value) and repr(sorted(valid)[0])[1:-1] in str(error.value)


def _vit_task(image_size: int, patch_size: int):
    info = data.DatasetInfo(
        name='synthetic',
        num_classes=3,
        class_names=('a', 'b', 'c'),
        example_shape=(image_size, image_size, 1),
        image_dtype='uint8',
        splits={'train': 1},
        mean=(0.5,),
        std=(0.25,),
    )
    config = default_config()
    config.model = model_config(
        'vit_ti16',
        patch_size=patch_size,
        hidden_size=8,
        depth=1,
        num_heads=1,
        mlp_dim=8,
        num_classes=3,
    )
    return config, create_task('classify', model=loop.create_model(config, info), info=info)


@settings(max_examples=25, deadline=None)
@given(image_size=st.integers(4, 40), patch_size=st.integers(1, 12))
def test_impossible_patch_sizes_fail_before_compiling(image_size, patch_size):
    config, task = _vit_task(image_size, patch_size)
    if image_size % patch_size == 0:
        loop.check_model_fits(config, task, (image_size, image_size, 1))
    else:
        with pytest.raises(ConfigError, match=rf'patch_size {patch_size} does not divide'):
            loop.check_model_fits(config, task, (image_size, image_size, 1))


@settings(max_examples=20, deadline=None)
@given(image_size=st.integers(2, 40), stages=st.integers(1, 6))
def test_poolings_that_shrink_below_one_pixel_fail_before_compiling(image_size, stages):
    info = data.DatasetInfo(
        name='synthetic',
        num_classes=2,
        class_names=('a', 'b'),
        example_shape=(image_size, image_size, 1),
        image_dtype='uint8',
        splits={'train': 1},
        mean=(0.5,),
        std=(0.25,),
    )
    config = default_config()
    config.model = model_config('cnn', channels=(4,) * stages, convs_per_stage=1, num_classes=2)
    task = create_task('classify', model=loop.create_model(config, info), info=info)
    if image_size >= 2**stages:
        loop.check_model_fits(config, task, info.example_shape)
    else:
        with pytest.raises(ConfigError, match='too small'):
            loop.check_model_fits(config, task, info.example_shape)
