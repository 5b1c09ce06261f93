"""oneDNN matrix products (nets/kernels/onednn_matmul.py): which products they take, the same
values as XLA's in every operand layout, the bfloat16 layers and the fused LSTM routed to them
with the same values and gradients (second derivatives included), the switch, and FLOP counts
that still see XLA's products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nets.kernels import mixed_precision, onednn_conv, onednn_matmul, switch
from nets.kernels.conv import channels_last_dimension_numbers, conv_general_dilated
from nets.kernels.fused_lstm import lstm_sequence
from nets.tools.flops import loop_corrected_flops, onednn_calls_in

needs_onednn = pytest.mark.skipif(
    not onednn_conv.available(), reason='oneDNN library not built here'
)
needs_onednn_bfloat16 = pytest.mark.skipif(
    jnp.dtype(jnp.bfloat16) not in onednn_conv.runnable_dtypes(),
    reason='oneDNN has no bfloat16 kernels on this CPU (AVX-512 and up)',
)


def test_plan_reads_leading_or_trailing_contracted_axes_as_matrices():
    plan = onednn_matmul.plan
    # Dense forward x (b, l, k) · w (k, n); input gradient g (b, l, n) · w (k, n) over n;
    # weight gradient x (b, l, k) · g (b, l, n) over (b, l).
    assert plan(3, 2, (2,), (0,)) == (2, 1, False, False)
    assert plan(3, 2, (2,), (1,)) == (2, 1, False, True)
    assert plan(3, 3, (0, 1), (0, 1)) == (2, 2, True, False)
    assert plan(4, 3, (2, 3), (0, 1)) == (2, 2, False, False)  # attention's output projection
    assert plan(3, 2, (1,), (0,)) is None  # a middle axis
    assert plan(3, 3, (1, 0), (0, 1)) is None  # pairs in another order
    assert plan(2, 2, (), ()) is None  # an outer product


def test_supports_takes_large_float32_or_bfloat16_products_only():
    big = jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16)
    small = jax.ShapeDtypeStruct((64, 64), jnp.bfloat16)
    contract = ((1,), (0,))
    assert onednn_matmul.supports(big, big, contract)
    assert not onednn_matmul.supports(small, small, contract)  # < MIN_FLOPS
    assert not onednn_matmul.supports(big, big.update(dtype=jnp.float16), contract)
    middle = jax.ShapeDtypeStruct((64, 1024, 64), jnp.bfloat16)
    assert not onednn_matmul.supports(middle, big, ((1,), (0,)))  # no matrix reading
    f16 = jax.ShapeDtypeStruct((1024, 1024), jnp.float16)
    assert not onednn_matmul.supports(f16, f16, contract)


@needs_onednn
@pytest.mark.parametrize(
    'dtype', [jnp.float32, pytest.param(jnp.bfloat16, marks=needs_onednn_bfloat16)]
)
@pytest.mark.parametrize(
    'lhs_shape, rhs_shape, contracting',
    [
        ((6, 5, 24), (24, 40), ((2,), (0,))),
        ((6, 5, 40), (24, 40), ((2,), (1,))),
        ((6, 5, 24), (6, 5, 40), ((0, 1), (0, 1))),
        ((30, 24), (40, 30), ((0,), (1,))),
        ((4, 7, 3, 8), (3, 8, 16), ((2, 3), (0, 1))),
    ],
)
def test_products_match_xla_in_every_layout(monkeypatch, dtype, lhs_shape, rhs_shape, contracting):
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    k1, k2 = jax.random.split(jax.random.key(0))
    lhs = jax.random.normal(k1, lhs_shape).astype(dtype)
    rhs = jax.random.normal(k2, rhs_shape).astype(dtype)
    ours = jax.jit(lambda a, b: onednn_matmul.product(a, b, contracting))(lhs, rhs)
    xla = lax.dot_general(lhs, rhs, (contracting, ((), ())), preferred_element_type=jnp.float32)
    assert ours.dtype == jnp.float32 and ours.shape == xla.shape
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-4)


def _assert_trees_close(expected, actual, tolerance=2e-2):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tolerance, atol=tolerance
        ),
        expected,
        actual,
    )


def _traced_with(backend, fn, *args):
    def run(*args):
        with switch.use(matmul=backend):  # chosen while tracing
            return fn(*args)

    return jax.jit(run)(*args), onednn_calls_in(jax.make_jaxpr(run)(*args))


@needs_onednn_bfloat16
def test_bfloat16_layers_route_their_products_and_gradients_to_onednn(monkeypatch):
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    x = jax.random.normal(jax.random.key(1), (4, 7, 16)).astype(jnp.bfloat16)
    layer = mixed_precision.DenseGeneral(features=(2, 8), dtype=jnp.bfloat16)
    params = layer.init(jax.random.key(2), x)

    def value_and_grads(params, x):
        loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x).astype(jnp.float32)))  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    xla, xla_calls = _traced_with('xla', value_and_grads, params, x)
    ours, calls = _traced_with('onednn', value_and_grads, params, x)
    assert xla_calls == 0 and calls == 3  # forward, input gradient, kernel gradient
    _assert_trees_close(xla, ours)

    # A second derivative goes through the product's own VJP (XLA's products).
    def input_gradient_norm(x):
        grads = jax.grad(lambda x: value_and_grads(params, x)[0])(x)
        return jnp.sum(grads.astype(jnp.float32) ** 2)

    second, _ = _traced_with('onednn', jax.grad(input_gradient_norm), x)
    reference, _ = _traced_with('xla', jax.grad(input_gradient_norm), x)
    _assert_trees_close(reference, second, tolerance=5e-2)


@needs_onednn_bfloat16
def test_the_fused_lstm_gradient_products_run_on_onednn(monkeypatch):
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    t, b, n, h = 5, 3, 4, 8
    keys = jax.random.split(jax.random.key(3), 3)
    w_x = jax.random.normal(keys[0], (n, 4 * h)) * 0.3
    w_h = jax.random.normal(keys[1], (h, 4 * h)) * 0.3
    xs = jax.random.normal(keys[2], (t, b, n)).astype(jnp.bfloat16)
    carry = (jnp.zeros((b, h)), jnp.zeros((b, h)))
    mask = jnp.ones((t, b), bool)

    def grads(w_x, w_h, xs):
        def loss(w_x, w_h, xs):
            _, ys = lstm_sequence(
                w_x, w_h, jnp.zeros(4 * h), carry, xs, mask, False, 1, jnp.bfloat16
            )
            return jnp.sum(ys.astype(jnp.float32) ** 2)

        return jax.grad(loss, argnums=(0, 1, 2))(w_x, w_h, xs)

    xla, _ = _traced_with('xla', grads, w_x, w_h, xs)
    ours, calls = _traced_with('onednn', grads, w_x, w_h, xs)
    assert calls >= 3  # the weight and input gradients after the loop, at least
    _assert_trees_close(xla, ours)


def test_auto_leaves_multi_device_processes_and_float32_to_xla(monkeypatch):
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    assert jax.device_count() > 1  # the test process simulates 8 devices
    with switch.use(matmul='auto'):
        assert not onednn_matmul.use_for_trace()
    with switch.use(matmul='xla'):
        assert not onednn_matmul.use_for_trace()
    x = jnp.ones((8, 16))
    with switch.use(matmul='onednn'):  # float32 products stay JAX's differentiable ones
        jaxpr = jax.make_jaxpr(lambda x: mixed_precision.matmul(x, jnp.ones((16, 4))))(x)
    assert onednn_calls_in(jaxpr) == 0


def test_switch_names_the_valid_matmul_backends():
    with pytest.raises(ValueError, match=r"matmul kernel 'mkl' is not valid.*'onednn'"):
        switch.set_kernels(matmul='mkl')


@needs_onednn
def test_flop_counts_trace_xla_products(monkeypatch):
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    x = jnp.ones((32, 64), jnp.bfloat16)
    w = jnp.ones((64, 16), jnp.bfloat16)
    with switch.use(matmul='onednn'):
        count = loop_corrected_flops(jax.jit(mixed_precision.matmul), x, w)
    assert count.total == pytest.approx(2 * 32 * 64 * 16, rel=0.01)


@needs_onednn
def test_a_cpu_without_onednn_bfloat16_kernels_keeps_bfloat16_work_on_xla(monkeypatch, caplog):
    # As on an AVX2-only CPU, where oneDNN refuses to create bfloat16 primitives.
    NHWC = channels_last_dimension_numbers(4)
    monkeypatch.setattr(onednn_conv, 'runnable_dtypes', lambda: (jnp.dtype(jnp.float32),))
    monkeypatch.setattr(onednn_matmul, 'MIN_FLOPS', 0)
    x, w = jnp.ones((8, 16), jnp.bfloat16), jnp.ones((16, 4), jnp.bfloat16)
    images, kernel = jnp.ones((1, 6, 6, 3), jnp.bfloat16), jnp.ones((3, 3, 3, 4), jnp.bfloat16)
    for backend in ('auto', 'onednn'):
        with switch.use(matmul=backend, conv=backend):
            product = jax.make_jaxpr(lambda x, w: mixed_precision.matmul(x, w))(x, w)
            conv = jax.make_jaxpr(
                lambda a, b: conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=NHWC)
            )(images, kernel)
            assert onednn_conv.use_for_trace(jnp.float32)
        assert onednn_calls_in(product) == 0 and onednn_calls_in(conv) == 0
    # Float32 work still runs there.
    with switch.use(conv='onednn'):
        conv = jax.make_jaxpr(
            lambda a, b: conv_general_dilated(a, b, (1, 1), 'SAME', dimension_numbers=NHWC)
        )(images.astype(jnp.float32), kernel.astype(jnp.float32))
    assert onednn_calls_in(conv) > 0
