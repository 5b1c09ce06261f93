"""The optax builder: each optimiser, regulariser, clipping and schedule does what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import optim
from train.config import OPTIMIZERS, ConfigError, default_config, validate


def _configs(**opt):
    config = default_config()
    config.schedule.name = 'constant'
    config.optimizer.update(opt)
    return config.optimizer, config.schedule


def _one_update(opt, sched, grads, params, steps=1, value=1.0):
    tx, _ = optim.build_optimizer(opt, sched, steps_per_epoch=10, total_steps=100)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params, value=jnp.asarray(value))
    return updates, state


PARAMS = {'dense': {'kernel': jnp.full((2, 3), 2.0), 'bias': jnp.full((3,), 2.0)}}
GRADS = {'dense': {'kernel': jnp.full((2, 3), 0.5), 'bias': jnp.full((3,), 0.5)}}


def test_sgd_is_minus_lr_times_gradient():
    opt, sched = _configs(name='sgd', learning_rate=0.1)
    updates, _ = _one_update(opt, sched, GRADS, PARAMS)
    np.testing.assert_allclose(updates['dense']['kernel'], -0.05)


@pytest.mark.parametrize('name', ['momentum', 'nesterov'])
def test_momentum_accumulates(name):
    opt, sched = _configs(name=name, learning_rate=0.1, momentum=0.9)
    updates, _ = _one_update(opt, sched, GRADS, PARAMS, steps=2)
    # trace after two equal gradients: g + 0.9 g (plain) or g + 0.9 (g + 0.9 g) (Nesterov).
    velocity = 0.5 * 1.9
    expected = 0.5 + 0.9 * velocity if name == 'nesterov' else velocity
    np.testing.assert_allclose(updates['dense']['kernel'], -0.1 * expected, rtol=1e-6)


@pytest.mark.parametrize('name', OPTIMIZERS)
def test_every_optimizer_matches_optax_reference(name):
    opt, sched = _configs(name=name, learning_rate=0.01)
    reference = {
        'sgd': optax.sgd(0.01),
        'momentum': optax.sgd(0.01, momentum=0.9),
        'nesterov': optax.sgd(0.01, momentum=0.9, nesterov=True),
        'rmsprop': optax.rmsprop(0.01, decay=0.9, eps=1e-8),  # no momentum unless set
        'adam': optax.adam(0.01),
        'adamw': optax.adamw(0.01, weight_decay=0.0),
    }[name]
    ours, _ = _one_update(opt, sched, GRADS, PARAMS, steps=3)
    state = reference.init(PARAMS)
    for _ in range(3):
        theirs, state = reference.update(GRADS, state, PARAMS)
    np.testing.assert_allclose(ours['dense']['kernel'], theirs['dense']['kernel'], rtol=1e-5)


def test_rmsprop_takes_momentum_only_when_set():
    opt, sched = _configs(name='rmsprop', learning_rate=0.01, momentum=0.9)
    ours, _ = _one_update(opt, sched, GRADS, PARAMS, steps=3)
    reference = optax.rmsprop(0.01, decay=0.9, eps=1e-8, momentum=0.9)
    state = reference.init(PARAMS)
    for _ in range(3):
        theirs, state = reference.update(GRADS, state, PARAMS)
    np.testing.assert_allclose(ours['dense']['kernel'], theirs['dense']['kernel'], rtol=1e-5)


@pytest.mark.parametrize(
    'name,key',
    [
        ('adam', 'momentum'),
        ('sgd', 'b1'),
        ('momentum', 'eps'),
        ('rmsprop', 'b2'),
        ('adamw', 'rms_decay'),
    ],
)
def test_an_optimizer_key_the_optimizer_does_not_read_is_an_error(name, key):
    config = default_config()
    config.optimizer.name = name
    config.optimizer[key] = 0.5
    with pytest.raises(
        ConfigError, match=f"optimizer.{key}=0.5 does not apply to optimizer '{name}'"
    ):
        validate(config)


def test_coupled_l2_goes_through_adam_but_decoupled_does_not():
    zero = jax.tree.map(jnp.zeros_like, GRADS)
    coupled, _ = _one_update(
        *_configs(name='adam', learning_rate=0.1, weight_decay=0.1, weight_decay_mode='coupled'),
        zero,
        PARAMS,
    )
    decoupled, _ = _one_update(
        *_configs(name='adam', learning_rate=0.1, weight_decay=0.1, weight_decay_mode='decoupled'),
        zero,
        PARAMS,
    )
    # Coupled: the decay is the only gradient, Adam normalises it to ~1 -> update ~ -lr.
    np.testing.assert_allclose(coupled['dense']['kernel'], -0.1, rtol=1e-3)
    # Decoupled: added after Adam -> update = -lr * wd * w = -0.02.
    np.testing.assert_allclose(decoupled['dense']['kernel'], -0.02, rtol=1e-5)
    # Biases are masked off in both.
    np.testing.assert_allclose(coupled['dense']['bias'], 0.0, atol=1e-6)
    np.testing.assert_allclose(decoupled['dense']['bias'], 0.0, atol=1e-6)


def test_l1_adds_sign_of_weights_to_kernels_only():
    params = {'dense': {'kernel': jnp.array([[2.0, -3.0]]), 'bias': jnp.array([1.0])}}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = _one_update(*_configs(name='sgd', learning_rate=1.0, l1=0.01), zero, params)
    np.testing.assert_allclose(updates['dense']['kernel'], [[-0.01, 0.01]])
    np.testing.assert_allclose(updates['dense']['bias'], [0.0])


def test_clipping_by_global_norm():
    big = jax.tree.map(lambda g: g * 100, GRADS)
    updates, _ = _one_update(
        *_configs(name='sgd', learning_rate=1.0, grad_clip_norm=1.0), big, PARAMS
    )
    assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)


def _schedule(**sched):
    config = default_config()
    config.optimizer.learning_rate = 1.0
    config.schedule.update(sched)
    return optim.learning_rate_schedule(
        config.optimizer, config.schedule, steps_per_epoch=10, total_steps=100
    )


def test_step_decay_minus_4_percent_every_8_epochs():
    schedule = _schedule(name='step', decay_factor=0.96, decay_every_epochs=8.0)
    assert float(schedule(79)) == pytest.approx(1.0)
    assert float(schedule(80)) == pytest.approx(0.96)
    assert float(schedule(160)) == pytest.approx(0.96**2)


def test_exponential_decay_is_smooth():
    schedule = _schedule(name='exponential', decay_factor=0.5, decay_every_epochs=1.0)
    assert float(schedule(5)) == pytest.approx(0.5**0.5, rel=1e-5)


def test_warmup_cosine_shape():
    schedule = _schedule(name='warmup_cosine', warmup_epochs=1.0, end_factor=0.1)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1, rel=1e-4)
    values = [float(schedule(s)) for s in range(10, 101)]
    assert all(a >= b - 1e-7 for a, b in zip(values, values[1:]))


def test_reduce_on_plateau_lowers_the_scale_when_loss_stalls():
    opt, sched = _configs(name='sgd', learning_rate=1.0)
    sched.name = 'plateau'
    sched.plateau_factor = 0.5
    sched.plateau_patience_epochs = 1
    tx, _ = optim.build_optimizer(opt, sched, steps_per_epoch=2, total_steps=100)
    state = tx.init(PARAMS)
    for _ in range(12):  # a constant loss: never improves after the first epoch
        _, state = tx.update(GRADS, state, PARAMS, value=jnp.asarray(1.0))
    assert optim.plateau_scale(state) < 1.0


def test_adaptive_gradient_clipping_caps_unitwise_ratio_but_skips_head():
    params = {'conv': {'kernel': jnp.ones((3, 3, 2, 4))}, 'head': {'kernel': jnp.ones((4, 2))}}
    grads = jax.tree.map(lambda p: 100.0 * p, params)
    updates, _ = _one_update(*_configs(name='sgd', learning_rate=1.0, agc_clip=0.01), grads, params)
    unit_ratio = jnp.linalg.norm(
        updates['conv']['kernel'].reshape(-1, 4), axis=0
    ) / jnp.linalg.norm(params['conv']['kernel'].reshape(-1, 4), axis=0)
    np.testing.assert_allclose(unit_ratio, 0.01, rtol=1e-3)
    np.testing.assert_allclose(updates['head']['kernel'], -100.0)  # the classifier is exempt


@pytest.mark.parametrize('name', ['momentum', 'adam'])
def test_accumulated_update_is_what_k_multisteps_calls_return(name):
    """The trainer's one-call update from a step's mean gradient gives the k-th MultiSteps call's
    updates and state (same layout, so checkpoints are unchanged), cycle after cycle."""
    opt, sched = _configs(name=name, learning_rate=0.1, grad_clip_norm=0.6)
    k = 3
    tx, _ = optim.build_optimizer(
        opt, sched, steps_per_epoch=10, total_steps=100, accumulate_steps=k
    )
    micro = [jax.tree.map(lambda g, i=i: g * (i + 1) - 0.2 * i, GRADS) for i in range(k)]
    mean = jax.tree.map(lambda *g: sum(g) / k, *micro)
    called = once = tx.init(PARAMS)
    for _ in range(2):  # the second cycle starts from the first's state
        for grads in micro:
            expected, called = tx.update(grads, called, PARAMS, value=jnp.asarray(0.7))
        updates, once = optim.accumulated_update(tx, mean, once, PARAMS, value=jnp.asarray(0.7))
        assert jax.tree.structure(once) == jax.tree.structure(called)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), once, called)
    assert int(once.gradient_step) == 2 and int(once.mini_step) == 0


def test_accumulated_update_without_accumulation_is_the_plain_update():
    opt, sched = _configs(name='momentum', learning_rate=0.1)
    tx, _ = optim.build_optimizer(opt, sched, steps_per_epoch=10, total_steps=100)
    state = tx.init(PARAMS)
    ours, _ = optim.accumulated_update(tx, GRADS, state, PARAMS, value=jnp.asarray(1.0))
    plain, _ = tx.update(GRADS, state, PARAMS, value=jnp.asarray(1.0))
    jax.tree.map(np.testing.assert_array_equal, ours, plain)
