"""nets.kernels.batch_norm: flax's BatchNorm with a hand-written backward pass gives flax's
outputs, gradients and running statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from nets.kernels.batch_norm import BatchNorm, normalize_batch
from nets.layers import blocks


def _variables(features: int) -> dict:
    keys = jax.random.split(jax.random.key(1), 4)
    return {
        'params': {
            'scale': 1 + jax.random.normal(keys[0], (features,)),
            'bias': jax.random.normal(keys[1], (features,)),
        },
        'batch_stats': {
            'mean': jax.random.normal(keys[2], (features,)),
            'var': 1 + jax.random.uniform(keys[3], (features,)),
        },
    }


def _loss_and_grads(module: nn.Module, variables: dict, x: jax.Array):
    def loss(params, x):
        y, updates = module.apply(
            {'params': params, 'batch_stats': variables['batch_stats']},
            x,
            mutable=['batch_stats'],
        )
        # A loss whose cotangent varies per element, so every term of the gradient matters.
        return jnp.sum(jnp.sin(3 * y.astype(jnp.float32))), (y, updates)

    return jax.value_and_grad(loss, (0, 1), has_aux=True)(variables['params'], x)


@pytest.mark.parametrize(
    ('dtype', 'shape', 'tolerance'),
    [
        (jnp.float32, (6, 5, 4, 16), 1e-5),
        (jnp.float32, (32, 24), 1e-5),
        (jnp.bfloat16, (6, 5, 4, 16), 1e-2),
    ],
)
def test_matches_flax_batch_norm_in_training(dtype, shape, tolerance):
    x = (3 * jax.random.normal(jax.random.key(0), shape) + 1.5).astype(dtype)
    settings = dict(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
    variables = _variables(shape[-1])
    (_, (y_ref, stats_ref)), grads_ref = _loss_and_grads(nn.BatchNorm(**settings), variables, x)
    (_, (y, stats)), grads = _loss_and_grads(BatchNorm(**settings), variables, x)
    assert y.dtype == y_ref.dtype == dtype
    assert grads[1].dtype == dtype
    np.testing.assert_allclose(np.float32(y), np.float32(y_ref), atol=tolerance, rtol=tolerance)
    for got, want in zip(jax.tree.leaves((grads, stats)), jax.tree.leaves((grads_ref, stats_ref))):
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        np.testing.assert_allclose(
            np.float32(got), np.float32(want), atol=tolerance * scale, rtol=tolerance
        )


def test_other_modes_are_flax_own():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 8))
    for settings in (
        dict(use_running_average=True),
        dict(use_running_average=False, use_fast_variance=False),
        dict(use_running_average=False, axis=1),
        dict(use_running_average=False, use_scale=False),
    ):
        ref, new = nn.BatchNorm(**settings), BatchNorm(**settings)
        variables = ref.init(jax.random.key(2), x)
        assert jax.tree.map(jnp.shape, new.init(jax.random.key(2), x)) == jax.tree.map(
            jnp.shape, variables
        )
        want = ref.apply(variables, x, mutable=['batch_stats'])
        got = new.apply(variables, x, mutable=['batch_stats'])
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _reference(x, scale, bias, epsilon):
    """normalize_batch written plainly, for autodiff."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(0)
    var = jnp.maximum(0.0, (x32 * x32).mean(0) - mean * mean)
    return (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias, mean, var


def test_gradient_through_the_statistics():
    """The mean and variance outputs carry their own cotangents (zero in a train step)."""
    keys = jax.random.split(jax.random.key(3), 3)
    x = 2 * jax.random.normal(keys[0], (40, 6)) + 1
    scale, bias = 1 + jax.random.normal(keys[1], (6,)), jax.random.normal(keys[2], (6,))

    def loss(normalize):
        def f(x, scale, bias):
            y, mean, var = normalize(x, scale, bias)
            return jnp.sum(jnp.cos(y)) + jnp.sum(mean**3) + jnp.sum(jnp.sqrt(var) * scale)

        return jax.grad(f, (0, 1, 2))(x, scale, bias)

    want = loss(lambda *a: _reference(*a, 1e-5))
    got = loss(lambda *a: normalize_batch(*a, 1e-5, jnp.dtype(jnp.float32)))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_batch_sharded_over_devices_matches_one_device():
    """Statistics over a data-parallel batch are those of the whole batch."""
    mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
    x = jax.random.normal(jax.random.key(0), (8, 4, 4, 8))
    module = blocks.batch_norm(train=True)
    variables = module.init(jax.random.key(1), x)
    step = jax.jit(lambda v, x: _loss_and_grads(module, v, x))
    want = step(variables, x)
    got = step(variables, jax.device_put(x, NamedSharding(mesh, PartitionSpec('data'))))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_blocks_batch_norm_uses_it():
    assert isinstance(blocks.batch_norm(train=True), BatchNorm)
