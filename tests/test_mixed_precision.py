"""nets.kernels.mixed_precision: bfloat16 products accumulate in float32, forward and gradient,
with the same values JAX's float32 products give (to bfloat16 rounding) and Flax's parameter
trees."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nets.kernels.mixed_precision import Dense, DenseGeneral, add_bias, dot_general, matmul
from tests.nets_harness import all_eqns

# (lhs shape, rhs shape, contracting dims): Dense, DenseGeneral over two axes, axes out of
# order on both sides, a contraction over the lhs's leading axis.
CASES = [
    ((5, 7), (7, 3), ((1,), (0,))),
    ((4, 6, 8), (8, 3, 5), ((2,), (0,))),
    ((4, 6, 8), (6, 8, 5), ((1, 2), (0, 1))),
    ((4, 3, 2, 8), (2, 8, 5), ((3, 2), (1, 0))),
    ((6, 4), (5, 6), ((0,), (1,))),
]


@pytest.mark.parametrize('lhs_shape, rhs_shape, contracting', CASES)
def test_bfloat16_product_and_gradients_match_float32(lhs_shape, rhs_shape, contracting):
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=lhs_shape), jnp.bfloat16)
    rhs = jnp.asarray(rng.normal(size=rhs_shape), jnp.bfloat16)
    numbers = (contracting, ((), ()))
    out, pullback = jax.vjp(lambda a, b: dot_general(a, b, numbers), lhs, rhs)
    f32 = lambda a, b: lax.dot_general(a, b, numbers)  # noqa: E731
    reference, reference_pullback = jax.vjp(f32, lhs.astype(jnp.float32), rhs.astype(jnp.float32))
    assert out.dtype == jnp.bfloat16 and out.shape == reference.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), reference, rtol=2e-2, atol=2e-2)
    g = jnp.asarray(rng.normal(size=out.shape), jnp.bfloat16)
    for got, want, operand in zip(
        pullback(g), reference_pullback(g.astype(jnp.float32)), (lhs, rhs)
    ):
        assert got.dtype == jnp.bfloat16 and got.shape == operand.shape
        scale = float(jnp.max(jnp.abs(want)))
        assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) < 1e-2 * scale


def test_products_accumulate_in_float32_inside():
    lhs, rhs = jnp.ones((4, 8), jnp.bfloat16), jnp.ones((8, 2), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(
        jax.grad(lambda a, b: jnp.sum(matmul(a, b).astype(jnp.float32)), argnums=(0, 1))
    )(lhs, rhs)
    products = [eqn for eqn in all_eqns(jaxpr.jaxpr) if eqn.primitive.name == 'dot_general']
    assert len(products) == 3  # forward, d lhs, d rhs
    for eqn in products:
        assert {v.aval.dtype for v in eqn.invars} == {jnp.dtype(jnp.bfloat16)}
        assert eqn.params['preferred_element_type'] == jnp.float32


def test_float32_and_batched_products_are_plain_dot_general():
    rng = np.random.default_rng(1)
    a, b = jnp.asarray(rng.normal(size=(3, 4, 5))), jnp.asarray(rng.normal(size=(3, 5, 2)))
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(dot_general(a, b, batched), lax.dot_general(a, b, batched))
    np.testing.assert_array_equal(matmul(a[0], b[0]), a[0] @ b[0])
    ab, bb = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    np.testing.assert_array_equal(dot_general(ab, bb, batched), lax.dot_general(ab, bb, batched))


@pytest.mark.parametrize(
    'ours, flax_layer, kwargs',
    [
        (Dense, nn.Dense, {'features': 6}),
        (DenseGeneral, nn.DenseGeneral, {'features': (2, 3), 'axis': (-2, -1)}),
    ],
)
def test_layers_keep_flax_parameters(ours, flax_layer, kwargs):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5, 7)), jnp.float32)
    variables = flax_layer(**kwargs).init(jax.random.key(0), x)
    mine = ours(**kwargs).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, variables)
    jax.tree.map(np.testing.assert_array_equal, mine, variables)  # the same initial values
    np.testing.assert_array_equal(
        ours(**kwargs).apply(variables, x), flax_layer(**kwargs).apply(variables, x)
    )
    low = ours(**kwargs, dtype=jnp.bfloat16).apply(variables, x)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(low, np.float32), flax_layer(**kwargs).apply(variables, x), rtol=5e-2, atol=5e-2
    )


@pytest.mark.parametrize(
    'layer',
    [Dense(features=6, dtype=jnp.bfloat16), DenseGeneral(features=(2, 3), dtype=jnp.bfloat16)],
)
def test_bfloat16_bias_gradient_is_summed_in_float32(layer):
    # The sum is taken of float32 values (then rounded once to the bias's bfloat16).
    x = jnp.zeros((1000, 5), jnp.float32)
    variables = layer.init(jax.random.key(0), x)

    def loss(v):
        return jnp.sum(layer.apply(v, x).astype(jnp.float32) * (1 + 2.0**-7))

    grads = jax.grad(loss)(variables)['params']['bias']
    expected = float(jnp.bfloat16(1000 * (1 + 2.0**-7)))
    np.testing.assert_array_equal(grads, np.full(grads.shape, expected, np.float32))
    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables)
    sums = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == 'reduce_sum']
    assert sums and all(e.invars[0].aval.dtype == jnp.float32 for e in sums)


def test_add_bias_broadcasts_like_plus():
    cases = [((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((2, 3, 4), (3, 1)), ((1, 5, 6), (1, 6))]
    for y_shape, bias_shape in cases:
        y, bias = jnp.arange(float(np.prod(y_shape))).reshape(y_shape), jnp.ones(bias_shape)
        for dtype in (jnp.float32, jnp.bfloat16):
            a, b = y.astype(dtype), bias.astype(dtype)
            np.testing.assert_array_equal(add_bias(a, b), a + b)
            got = jax.grad(lambda b, a=a: jnp.sum(add_bias(a, b).astype(jnp.float32) ** 2))(b)
            want = jax.grad(lambda b, a=a: jnp.sum((a + b).astype(jnp.float32) ** 2))(b)
            np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=1e-2)


def test_dense_general_rejects_batch_dims():
    with pytest.raises(ValueError, match='batch_dims'):
        DenseGeneral(features=3, batch_dims=(0,)).init(jax.random.key(0), jnp.ones((2, 4)))
