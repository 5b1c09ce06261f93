"""Tiny jitted runs of the classic ConvNets (AlexNet, VGG, GoogLeNet, BN-Inception, Inception v3,
Inception-ResNet-v2) on 28x28x1 images with the small-input stems: a train step with gradients
(or a train-mode forward pass) and an eval pass per family, the auxiliary-logit protocol, and
bfloat16 compute.

Each tiny model's variables are drawn on the host and it compiles one jitted function (the train
step, a second dropout draw where cheap, the eval pass), so the file stays well under a minute on
two busy CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from tests.nets_harness import assert_products_in_bfloat16, fast_jit, rng

# id: (model name, overrides, check dropout, has batch norm, aux logit names, backward pass).
# One model per family takes a real backward pass; compiling a gradient costs ~10 s per
# Inception-sized network on two busy cores, so the other Inception variants (same blocks,
# same aux protocol) run real train- and eval-mode forward passes only. A second dropout draw
# (one more compiled forward pass) is checked where it is cheap; every model's dropout is the
# same nn.Dropout before its classifier.
CASES = {
    'alexnet_small_lrn': (
        'alexnet',
        dict(stem='small', width=4, fc_width=16, lrn=True),
        True,
        False,
        (),
        True,
    ),
    'vgg11_bn_small': ('vgg11_bn', dict(stem='small', width=4, fc_width=16), True, True, (), True),
    'googlenet_small': (
        'googlenet',
        dict(stem='small', width_multiplier=0.125),
        True,
        True,
        ('aux1', 'aux2'),
        True,
    ),
    'inception_v2_small': (
        'inception_v2',
        dict(stem='small', width_multiplier=0.125, dropout_rate=0.2),
        False,
        True,
        (),
        False,
    ),
    'inception_v3_small': (
        'inception_v3',
        dict(stem='small', width_multiplier=0.125),
        False,
        True,
        ('aux1',),
        False,
    ),
    'inception_resnet_v2_small': (
        'inception_resnet_v2',
        dict(stem='small', width_multiplier=0.125, num_blocks=(1, 1, 1)),
        False,
        True,
        (),
        True,
    ),
}
SMALL_INPUT = (2, 28, 28, 1)


def _cross_entropy_first_class(logits: jax.Array) -> jax.Array:
    return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[:, 0])


def host_init(model, x: np.ndarray) -> dict:
    """Variables of `model` drawn on the host from the shapes `init` would make (He-normal
    kernels, zero biases, unit BatchNorm scales/variances): compiling `init` itself costs as
    much as a forward pass for the Inception networks, and adds nothing these tests check."""
    shapes = jax.eval_shape(model.init, {'params': rng(0)}, x)
    data = np.random.default_rng(0)

    def draw(path, leaf):
        name = path[-1].key
        if name == 'kernel':
            return (data.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(
                leaf.dtype
            )
        return (np.ones if name in ('scale', 'var') else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


class TinyRun:
    """One tiny model run in a single jitted program: train step (gradients of the loss with its
    aux losses, or the train-mode forward only), optionally a second dropout draw, an eval pass."""

    def __init__(self, case_id: str):
        (
            name,
            overrides,
            self.check_dropout,
            self.has_batch_norm,
            self.aux_names,
            self.backward,
        ) = CASES[case_id]
        self.name, self.overrides = name, overrides
        self.model = model = nets.create(name, num_classes=10, **overrides)
        self.x = np.random.default_rng(0).normal(size=SMALL_INPUT).astype(np.float32)
        self.variables = host_init(model, self.x)
        weight = getattr(model, 'aux_loss_weight', 0.0)
        backward, check_dropout = self.backward, self.check_dropout

        def run(variables, x, key):
            state = {k: v for k, v in variables.items() if k != 'params'}

            def train_apply(params, dropout_key):
                return model.apply(
                    {'params': params, **state},
                    x,
                    train=True,
                    rngs={'dropout': dropout_key},
                    mutable=['batch_stats', 'aux_logits'],
                )

            def loss(params):
                logits, new_state = train_apply(params, jax.random.fold_in(key, 1))
                aux = jax.tree_util.tree_leaves(new_state.get('aux_logits', {}))
                total = _cross_entropy_first_class(logits) + weight * sum(
                    map(_cross_entropy_first_class, aux)
                )
                return total, (logits, new_state)

            if backward:
                grads, (logits, new_state) = jax.grad(loss, has_aux=True)(variables['params'])
            else:
                grads, (_, (logits, new_state)) = None, loss(variables['params'])
            other_logits = (
                train_apply(variables['params'], jax.random.fold_in(key, 2))[0]
                if check_dropout
                else None
            )
            eval_logits, eval_state = model.apply(variables, x, mutable=['aux_logits'])
            return grads, logits, new_state, other_logits, eval_logits, eval_state

        (
            self.grads,
            self.logits,
            self.train_state,
            self.other_logits,
            self.eval_logits,
            self.eval_state,
        ) = jax.device_get(fast_jit(run)(self.variables, self.x, rng(0)))


@functools.cache
def tiny_run(case_id: str) -> TinyRun:
    return TinyRun(case_id)


@pytest.mark.parametrize('case_id', sorted(CASES))
def test_tiny_train_step(case_id):
    run = tiny_run(case_id)
    assert set(run.variables) == ({'params', 'batch_stats'} if run.has_batch_norm else {'params'})
    for logits in (run.logits, run.eval_logits):
        assert logits.shape == (SMALL_INPUT[0], 10) and logits.dtype == np.float32
        assert np.all(np.isfinite(logits))
    if run.backward:
        assert jax.tree_util.tree_structure(run.grads) == jax.tree_util.tree_structure(
            run.variables['params']
        )
        leaves = jax.tree_util.tree_leaves(run.grads)
        assert all(np.all(np.isfinite(g)) for g in leaves)
        # Every parameter tensor (aux heads included, through their loss) gets some gradient.
        assert all(float(np.sum(np.abs(g))) > 0 for g in leaves)
    if run.has_batch_norm:
        changed = jax.tree_util.tree_map(
            lambda a, b: bool(np.any(a != b)),
            run.variables['batch_stats'],
            run.train_state['batch_stats'],
        )
        assert all(jax.tree_util.tree_leaves(changed)), (
            'every BatchNorm must update its running stats'
        )
    else:
        assert not run.train_state.get('batch_stats')
    if run.check_dropout:
        assert not np.allclose(run.logits, run.other_logits), (
            'dropout must depend on the dropout rng'
        )


@pytest.mark.parametrize('case_id', [c for c in sorted(CASES) if CASES[c][4]])
def test_aux_logits_sown_in_train_mode_only(case_id):
    run = tiny_run(case_id)
    init_collections = jax.eval_shape(run.model.init, {'params': rng(0)}, run.x)
    assert 'aux_logits' not in init_collections  # init runs the heads but sows nothing
    sown = run.train_state['aux_logits']
    assert sorted(sown) == sorted(run.aux_names)
    for name in run.aux_names:
        (aux,) = sown[name]
        assert (
            aux.shape == (SMALL_INPUT[0], 10)
            and aux.dtype == np.float32
            and np.all(np.isfinite(aux))
        )
    assert not run.eval_state.get('aux_logits')
    heads = [k for k in run.variables['params'] if k.startswith('aux_head')]
    assert len(heads) == len(run.aux_names)
    assert run.model.aux_loss_weight == {'googlenet': 0.3, 'inception_v3': 0.4}[run.name]


@pytest.mark.parametrize('case_id', ['googlenet_small', 'inception_v3_small'])
def test_aux_logits_false_has_no_heads(case_id):
    run = tiny_run(case_id)
    model = nets.create(run.name, num_classes=10, **dict(run.overrides, aux_logits=False))

    def init_and_train(x):
        variables = model.init({'params': rng(0)}, x)
        return variables, model.apply(
            variables,
            x,
            train=True,
            rngs={'dropout': rng(1)},
            mutable=['batch_stats', 'aux_logits'],
        )

    variables, (logits, state) = jax.eval_shape(
        init_and_train, jax.ShapeDtypeStruct(SMALL_INPUT, jnp.float32)
    )
    assert logits.shape == (SMALL_INPUT[0], 10)
    assert not state.get('aux_logits')
    assert not any(k.startswith('aux') for k in variables['params'])

    def sizes(params):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))

    heads = {k: v for k, v in run.variables['params'].items() if k.startswith('aux_head')}
    assert sizes(variables['params']) == sizes(run.variables['params']) - sizes(heads) > 0


@pytest.mark.parametrize(
    'case_id', ['googlenet_small', 'inception_resnet_v2_small', 'vgg11_bn_small']
)
def test_bfloat16_compute(case_id):
    run = tiny_run(case_id)
    model = nets.create(run.name, num_classes=10, dtype='bfloat16', **run.overrides)
    apply = functools.partial(model.apply, train=False)
    # The convs and matmuls themselves run in bfloat16 (traced only; no compile).
    assert_products_in_bfloat16(jax.make_jaxpr(apply)(run.variables, run.x))
    out = jax.eval_shape(apply, run.variables, run.x)
    assert out.shape == (SMALL_INPUT[0], 10) and out.dtype == jnp.float32
    init_vars = jax.eval_shape(model.init, {'params': rng(0)}, run.x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(init_vars['params'])} == {
        jnp.dtype(jnp.float32)
    }


def test_bfloat16_alexnet_runs_close_to_float32():
    run = tiny_run('alexnet_small_lrn')
    model = nets.create(run.name, num_classes=10, dtype='bfloat16', **run.overrides)
    logits = fast_jit(functools.partial(model.apply, train=False))(run.variables, run.x)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    scale = float(np.max(np.abs(run.eval_logits))) + 1e-3
    assert float(np.max(np.abs(logits - run.eval_logits))) < 0.1 * scale
