"""Per-parameter optimiser rules: lr multipliers scale exactly the parameters they name, weight
decay and AGC exclusions remove exactly their terms, and bad or unmatched rules are errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from train import optim, param_rules
from train.config import OPTIMIZERS, default_config

PARAMS = {
    'conv': {
        'kernel': jnp.full((3, 3, 2, 4), 2.0),
        'bias': jnp.full((4,), 2.0),
        'offset': {'kernel': jnp.full((3, 3, 2, 18), -1.0), 'bias': jnp.full((18,), 0.5)},
    },
    'head': {'kernel': jnp.full((4, 3), 3.0), 'bias': jnp.full((3,), 1.0)},
}
GRADS = jax.tree.map(lambda p: 0.25 + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), PARAMS)


def _opt(**settings):
    config = default_config()
    config.schedule.name = 'constant'
    # As a config read back from JSON can hold them: values of any type, checked by the rules.
    optimizer = ml_collections.ConfigDict({**config.optimizer.to_dict(), **settings})
    return optimizer, config.schedule


def _updates(opt, sched, params=PARAMS, grads=GRADS, steps=2):
    tx, _ = optim.build_optimizer(opt, sched, steps_per_epoch=10, total_steps=100)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params, value=jnp.asarray(1.0))
    return updates


def _leaf(tree, path):
    for key in path.split('/'):
        tree = tree[key]
    return np.asarray(tree)


@pytest.mark.parametrize('name', OPTIMIZERS)
def test_lr_multiplier_scales_exactly_the_matched_updates(name):
    settings = dict(name=name, learning_rate=0.01, weight_decay=1e-2)
    base = _updates(*_opt(**settings))
    ruled = _updates(*_opt(**settings, lr_multipliers=(('.*/offset/.*', 0.1),)))
    for path in ('conv/offset/kernel', 'conv/offset/bias'):
        np.testing.assert_allclose(_leaf(ruled, path), 0.1 * _leaf(base, path), rtol=1e-6)
    for path in ('conv/kernel', 'conv/bias', 'head/kernel', 'head/bias'):
        np.testing.assert_array_equal(_leaf(ruled, path), _leaf(base, path))


def test_sgd_multiplier_update_is_the_scaled_gradient():
    updates = _updates(*_opt(name='sgd', learning_rate=0.5, lr_multipliers=(('head/.*', 0.1),)))
    np.testing.assert_allclose(
        _leaf(updates, 'head/kernel'), -0.5 * 0.1 * _leaf(GRADS, 'head/kernel'), rtol=1e-6
    )
    np.testing.assert_allclose(
        _leaf(updates, 'conv/kernel'), -0.5 * _leaf(GRADS, 'conv/kernel'), rtol=1e-6
    )


def test_the_first_matching_multiplier_rule_wins():
    rules = (('conv/offset/.*', 0.1), ('conv/.*', 2.0))
    updates = _updates(*_opt(name='sgd', learning_rate=1.0, lr_multipliers=rules), steps=1)
    np.testing.assert_allclose(
        _leaf(updates, 'conv/offset/bias'), -0.1 * _leaf(GRADS, 'conv/offset/bias'), rtol=1e-6
    )
    np.testing.assert_allclose(
        _leaf(updates, 'conv/kernel'), -2.0 * _leaf(GRADS, 'conv/kernel'), rtol=1e-6
    )
    np.testing.assert_allclose(_leaf(updates, 'head/bias'), -_leaf(GRADS, 'head/bias'), rtol=1e-6)


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_weight_decay_exclusion_removes_exactly_the_decay_term(mode):
    wd, lr = 0.1, 1.0
    opt, sched = _opt(
        name='sgd',
        learning_rate=lr,
        weight_decay=wd,
        weight_decay_mode=mode,
        weight_decay_exclude=('head/.*',),
    )
    updates = _updates(opt, sched, steps=1)
    # Excluded kernel: the plain gradient step; the kept kernel also gets its decay term.
    np.testing.assert_allclose(
        _leaf(updates, 'head/kernel'), -lr * _leaf(GRADS, 'head/kernel'), rtol=1e-6
    )
    np.testing.assert_allclose(
        _leaf(updates, 'conv/kernel'),
        -lr * (_leaf(GRADS, 'conv/kernel') + wd * _leaf(PARAMS, 'conv/kernel')),
        rtol=1e-6,
    )
    # Biases are never decayed, with or without rules.
    np.testing.assert_allclose(_leaf(updates, 'conv/bias'), -lr * _leaf(GRADS, 'conv/bias'))


def test_l1_honours_the_weight_decay_exclusion():
    opt, sched = _opt(name='sgd', learning_rate=1.0, l1=0.01, weight_decay_exclude=('conv/.*',))
    updates = _updates(opt, sched, steps=1)
    np.testing.assert_allclose(
        _leaf(updates, 'conv/offset/kernel'), -_leaf(GRADS, 'conv/offset/kernel'), rtol=1e-6
    )
    np.testing.assert_allclose(
        _leaf(updates, 'head/kernel'), -(_leaf(GRADS, 'head/kernel') + 0.01), rtol=1e-6
    )


def test_agc_exclusion_is_configurable():
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), PARAMS)
    opt, sched = _opt(name='sgd', learning_rate=1.0, agc_clip=0.01, agc_exclude=('conv/offset/.*',))
    updates = _updates(opt, sched, grads=grads, steps=1)
    np.testing.assert_allclose(_leaf(updates, 'conv/offset/kernel'), -100.0)  # exempt
    head = _leaf(updates, 'head/kernel')  # clipped now: the default exclusion is replaced
    ratio = np.linalg.norm(head, axis=0) / np.linalg.norm(_leaf(PARAMS, 'head/kernel'), axis=0)
    np.testing.assert_allclose(ratio, 0.01, rtol=1e-3)


@pytest.mark.parametrize(
    'settings,message',
    [
        (dict(lr_multipliers=(('.*/ofset/.*', 0.1),)), r"'\.\*/ofset/\.\*' matches no parameter"),
        (
            dict(lr_multipliers=(('conv/.*', 0.5), ('conv/offset/.*', 0.1))),
            r"'conv/offset/\.\*' decides no parameter: every parameter it matches is taken",
        ),
        (
            dict(weight_decay=1e-4, weight_decay_exclude=('.*embedding',)),
            r"weight_decay_exclude rule '\.\*embedding' matches no parameter path",
        ),
        (dict(agc_clip=0.01, agc_exclude=('classifier/.*',)), r"'classifier/\.\*' matches no"),
    ],
)
def test_a_rule_that_decides_no_parameter_is_an_error_at_init(settings, message):
    tx, _ = optim.build_optimizer(*_opt(**settings), steps_per_epoch=10, total_steps=100)
    with pytest.raises(ValueError, match=message) as error:
        tx.init(PARAMS)
    assert "'conv/offset/kernel'" in str(error.value) or "'head/kernel'" in str(error.value)


def test_the_default_agc_exclusion_needs_a_head():
    tx, _ = optim.build_optimizer(*_opt(agc_clip=0.01), steps_per_epoch=10, total_steps=100)
    with pytest.raises(ValueError, match=r"agc_exclude rule 'head/\.\*' matches no parameter"):
        jax.eval_shape(tx.init, {'conv': PARAMS['conv']})


@pytest.mark.parametrize(
    'settings,message',
    [
        (dict(lr_multipliers=(('conv/[', 0.1),)), r"'conv/\[' is not a regular expression"),
        (dict(weight_decay=1e-4, weight_decay_exclude=('(bias',)), 'not a regular expression'),
        (dict(lr_multipliers=(('head/.*', 0.0),)), r'must be a finite number > 0, got 0\.0'),
        (dict(lr_multipliers=(('head/.*', -1.0),)), r'> 0, got -1\.0'),
        (dict(lr_multipliers=(('head/.*', True),)), '> 0, got True'),
        (dict(lr_multipliers=('head/.*', 0.1)), r'must hold \(regex, factor\) pairs'),
        (dict(weight_decay=1e-4, weight_decay_exclude='.*bias'), 'must be a tuple like'),
        (
            dict(weight_decay_exclude=('head/.*',)),
            'weight_decay and config.optimizer.l1 are both 0',
        ),
        (dict(agc_exclude=('head/kernel',)), 'agc_clip is 0'),
    ],
)
def test_bad_rules_fail_config_validation(settings, message):
    opt, sched = _opt(**settings)
    with pytest.raises(ValueError, match=message):
        param_rules.check_param_rules(opt)
    with pytest.raises(ValueError, match=message):
        optim.check_optimizer_keys(opt)
    with pytest.raises(ValueError, match=message):
        optim.build_optimizer(opt, sched, steps_per_epoch=10, total_steps=100)


def test_rules_read_from_json_style_lists():
    # config.json and the command line turn tuples into lists.
    opt = ml_collections.ConfigDict(
        {
            'weight_decay': 1e-4,
            'l1': 0.0,
            'agc_clip': 0.0,
            'lr_multipliers': [['.*/offset/.*', 0.1]],
            'weight_decay_exclude': ['head/.*'],
        }
    )
    param_rules.check_param_rules(opt)
    assert param_rules.lr_multiplier_rules(opt) == (('.*/offset/.*', 0.1),)


def test_param_paths_and_first_match():
    matched = param_rules.first_match(PARAMS, ('.*bias', 'head/.*'), 'rules')
    assert matched['conv']['offset']['bias'] == 0 and matched['head']['bias'] == 0
    assert matched['head']['kernel'] == 1 and matched['conv']['kernel'] == -1


def test_rules_work_with_gradient_accumulation_and_jit():
    opt, sched = _opt(name='momentum', learning_rate=0.1, lr_multipliers=(('head/.*', 0.5),))
    tx, _ = optim.build_optimizer(
        opt, sched, steps_per_epoch=10, total_steps=100, accumulate_steps=2
    )
    state = jax.jit(tx.init)(PARAMS)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.asarray(1.0)))
    _, state = update(GRADS, state, PARAMS)
    updates, _ = update(GRADS, state, PARAMS)
    np.testing.assert_allclose(
        _leaf(updates, 'head/kernel'), -0.1 * 0.5 * _leaf(GRADS, 'head/kernel'), rtol=1e-6
    )
