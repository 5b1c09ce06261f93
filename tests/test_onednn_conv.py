"""oneDNN convolutions (nets/kernels/onednn_conv.py): the same values and gradients as XLA's, on one
device and on a data-parallel mesh (no gathered batch), inside scans, in bfloat16, ungrouped and
grouped (feature_group_count, depthwise included); the switch and its errors; FLOP counts see
XLA's convolutions."""

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nets.kernels import conv, onednn_conv, switch
from nets.tools.flops import loop_corrected_flops, onednn_calls_in

LINUX_X86 = sys.platform == 'linux' and platform.machine() == 'x86_64'
needs_onednn = pytest.mark.skipif(
    not onednn_conv.available(), reason='oneDNN convolutions not enabled here'
)
DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _loss(x, w, strides, padding, groups=1):
    y = conv.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=DIMENSIONS, feature_group_count=groups
    )
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))


def _value_and_grads(x, w, strides, padding, backend, groups=1):
    def fn(x, w):
        # The backend is chosen while tracing: inside the traced function.
        if backend == 'xla':
            with switch.use(conv='xla'):
                return _loss(x, w, strides, padding, groups)
        return _loss(x, w, strides, padding, groups)

    return jax.jit(jax.value_and_grad(fn, (0, 1)))(x, w)


def _operands(shape, kernel, dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.key(0))
    return (
        jax.random.normal(kx, shape).astype(dtype),
        (0.3 * jax.random.normal(kw, kernel)).astype(dtype),
    )


def test_onednn_builds_on_linux_x86_64():
    """The dependency installs there (pyproject.toml), so the fast path must be on."""
    if not LINUX_X86:
        pytest.skip('oneDNN convolutions are built on x86-64 Linux')
    assert onednn_conv.unavailable_reason() is None
    assert onednn_conv.available() and onednn_conv.use_for_trace()


@needs_onednn
@pytest.mark.parametrize(
    'shape,kernel,strides,padding',
    [
        ((4, 9, 9, 5), (3, 3, 5, 7), (1, 1), 'SAME'),
        ((4, 9, 9, 5), (3, 3, 5, 7), (2, 2), 'SAME'),
        ((4, 10, 8, 3), (3, 2, 3, 6), (2, 1), ((0, 1), (2, 0))),
        ((4, 8, 8, 6), (1, 1, 6, 4), (2, 2), 'VALID'),
        ((2, 12, 12, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ],
)
def test_same_values_and_gradients_as_xla(shape, kernel, strides, padding):
    x, w = _operands(shape, kernel)
    (value, grads) = _value_and_grads(x, w, strides, padding, 'onednn')
    (expected, expected_grads) = _value_and_grads(x, w, strides, padding, 'xla')
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize(
    'shape,kernel,groups,strides,padding',
    [
        ((4, 9, 9, 8), (3, 3, 4, 6), 2, (1, 1), 'SAME'),
        ((4, 9, 9, 12), (3, 3, 4, 9), 3, (2, 2), 'SAME'),
        ((3, 10, 8, 12), (3, 2, 3, 8), 4, (2, 1), ((0, 1), (2, 0))),
        ((4, 8, 8, 12), (1, 1, 2, 12), 6, (2, 2), 'VALID'),
        ((2, 11, 11, 8), (7, 7, 1, 8), 8, (1, 1), ((3, 3), (3, 3))),  # depthwise
        ((2, 9, 9, 6), (3, 3, 1, 12), 6, (2, 2), ((1, 0), (0, 1))),  # depthwise, 2 per channel
    ],
)
def test_grouped_convolutions_have_the_values_and_gradients_of_xla(
    shape, kernel, groups, strides, padding
):
    x, w = _operands(shape, kernel)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: _loss(x, w, strides, padding, groups), (0, 1)))(
        x, w
    )
    assert onednn_calls_in(jaxpr) == 3  # forward, dx, dw: the grouped convolution is oneDNN's
    value, grads = _value_and_grads(x, w, strides, padding, 'onednn', groups)
    expected, expected_grads = _value_and_grads(x, w, strides, padding, 'xla', groups)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, expected_grads):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize('groups', [1, 4])
def test_bfloat16_operands_stay_bfloat16_and_match_xla(groups):
    x, w = _operands((4, 8, 8, 16), (3, 3, 16 // groups, 16), jnp.bfloat16)
    _, grads = _value_and_grads(x, w, (1, 1), 'SAME', 'onednn', groups)
    _, expected = _value_and_grads(x, w, (1, 1), 'SAME', 'xla', groups)
    for got, want in zip(grads, expected):
        assert got.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32))))
        np.testing.assert_allclose(
            got.astype(jnp.float32), want.astype(jnp.float32), atol=0.03 * scale
        )


@needs_onednn
@pytest.mark.parametrize('groups', [1, 4])
def test_the_conv_module_runs_onednn_and_xla_convolutions_on_request(groups):
    model = conv.Conv(8, (3, 3), feature_group_count=groups)
    x = jnp.ones((2, 8, 8, 4))
    variables = model.init(jax.random.key(0), x)

    def grad():  # a new function each time: JAX reuses the trace of one it has seen
        return jax.grad(lambda v, x: jnp.sum(model.apply(v, x)), (0, 1))

    assert onednn_calls_in(jax.make_jaxpr(grad())(variables, x)) == 3  # forward, dx, dw
    with switch.use(conv='xla'):
        assert onednn_calls_in(jax.make_jaxpr(grad())(variables, x)) == 0
    # Ranks, dilations and dtypes oneDNN does not take stay XLA's.
    assert not onednn_conv.supports(jnp.ones((2, 8, 3)), jnp.ones((3, 3, 4)), (1,))
    assert not onednn_conv.supports(x, jnp.ones((3, 3, 4, 4)), (2, 2))
    assert not onednn_conv.supports(
        x.astype(jnp.float16), jnp.ones((3, 3, 4, 4), jnp.float16), (1, 1)
    )
    # Groups must split the input channels into the kernel's and divide the output channels.
    assert onednn_conv.supports(jnp.ones((2, 8, 8, 6)), jnp.ones((3, 3, 2, 9)), (1, 1), 3)
    assert not onednn_conv.supports(jnp.ones((2, 8, 8, 6)), jnp.ones((3, 3, 3, 9)), (1, 1), 3)
    assert not onednn_conv.supports(jnp.ones((2, 8, 8, 6)), jnp.ones((3, 3, 2, 8)), (1, 1), 3)


@needs_onednn
@pytest.mark.parametrize('groups', [1, 2])
def test_sharded_batch_stays_sharded_and_the_kernel_gradient_is_summed(groups):
    mesh = jax.make_mesh((2,), ('data',), devices=jax.devices()[:2])
    x, w = _operands((8, 8, 8, 4), (3, 3, 4 // groups, 6))
    xs = jax.device_put(x, NamedSharding(mesh, P('data')))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    fn = jax.jit(jax.value_and_grad(lambda x, w: _loss(x, w, (2, 2), 'SAME', groups), (0, 1)))
    value, (dx, dw) = fn(xs, ws)
    expected, (expected_dx, expected_dw) = _value_and_grads(x, w, (2, 2), 'SAME', 'xla', groups)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-4, atol=1e-4)
    assert dx.sharding.spec[0] == 'data'
    hlo = fn.lower(xs, ws).compile().as_text()
    assert 'all-gather' not in hlo  # each device convolves its own examples


@needs_onednn
def test_inside_a_scan_over_micro_batches():
    x, w = _operands((4, 8, 8, 3), (3, 3, 3, 5))

    def accumulated(x, w, backend):
        def body(total, x_micro):
            return total + jax.grad(lambda w_: _loss(x_micro, w_, (1, 1), 'SAME'))(w), None

        if backend == 'xla':
            with switch.use(conv='xla'):
                return jax.lax.scan(body, jnp.zeros_like(w), x.reshape(2, 2, 8, 8, 3))[0]
        return jax.lax.scan(body, jnp.zeros_like(w), x.reshape(2, 2, 8, 8, 3))[0]

    np.testing.assert_allclose(
        jax.jit(accumulated, static_argnums=2)(x, w, 'onednn'),
        jax.jit(accumulated, static_argnums=2)(x, w, 'xla'),
        rtol=1e-4,
        atol=1e-4,
    )


def test_the_switch_names_the_valid_values_and_restores_itself():
    with pytest.raises(ValueError, match="conv kernel 'mkl' is not valid.*'onednn', 'xla'"):
        switch.set_kernels(conv='mkl')
    before = switch.current()
    with switch.use(conv='xla'):
        assert switch.conv_backend() == 'xla' and not onednn_conv.use_for_trace()
    assert switch.current() == before


def test_a_required_onednn_that_cannot_build_is_an_error(monkeypatch):
    monkeypatch.setattr(onednn_conv, '_load', lambda: 'no compiler')
    with (
        switch.use(conv='onednn'),
        pytest.raises(onednn_conv.OnednnUnavailable, match='no compiler'),
    ):
        onednn_conv.use_for_trace()
    with switch.use(conv='auto'):
        assert not onednn_conv.use_for_trace()  # falls back to XLA's, with a warning


def test_missing_onednn_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv('ONEDNN_ROOT', str(tmp_path))
    monkeypatch.setattr(sys, 'prefix', str(tmp_path))
    monkeypatch.setattr(sys, 'base_prefix', str(tmp_path))
    with pytest.raises(onednn_conv.OnednnUnavailable, match='pip install onednn-cpu-gomp'):
        onednn_conv.onednn_prefix()


@needs_onednn
def test_flop_counts_trace_xla_convolutions():
    x, w = _operands((2, 8, 8, 3), (3, 3, 3, 4))

    def forward(x, w):
        return conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DIMENSIONS)

    def lax_forward(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DIMENSIONS)

    expected = loop_corrected_flops(lax_forward, x, w).total
    assert expected > 2 * 2 * 8 * 8 * 4 * 3  # more than one tap per output
    assert loop_corrected_flops(forward, x, w).total == expected
    traced_with_onednn = jax.jit(lambda x, w: forward(x, w) + 1)  # not traced before
    traced_with_onednn(x, w)
    with pytest.raises(ValueError, match='traced with oneDNN convolutions'):
        loop_corrected_flops(traced_with_onednn, x, w)


@needs_onednn
def test_concurrent_passes_do_not_share_scratch_memory():
    """Independent convolutions (a GAN discriminator on real and on generated images, a layer's
    two gradients) may run at the same time on XLA's threads; each must keep its own scratch
    memory. With oneDNN's shared library-managed scratchpad this very program hung, and a GAN's
    resumed run differed from the straight one."""
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (16, 32, 32, 3))
    kernels = [
        0.1 * jax.random.normal(k, shape)
        for k, shape in zip(keys[1:], [(4, 4, 3, 32), (4, 4, 32, 64), (4, 4, 64, 128)])
    ]

    def discriminator(x, kernels):
        for w in kernels:
            x = jax.nn.leaky_relu(
                conv.conv_general_dilated(
                    x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DIMENSIONS
                ),
                0.2,
            )
        return jnp.sum(x**2)

    def two_chains(x, kernels):
        return discriminator(x, kernels) + discriminator(x[::-1] * 0.5, kernels)

    def xla_two_chains(x, kernels):
        with switch.use(conv='xla'):
            return two_chains(x, kernels)

    expected = jax.jit(jax.grad(xla_two_chains, (0, 1)))(x, kernels)
    grads = jax.jit(jax.grad(two_chains, (0, 1)))
    for _ in range(5):
        for got, want in zip(jax.tree.leaves(grads(x, kernels)), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.max(jnp.abs(want))))
