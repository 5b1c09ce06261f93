"""nets.kernels.conv.Conv: nn.Conv's values and gradients, with kernel and input gradients XLA's
CPU backend runs on its canonical (fast) convolution inside loops too (XLA's convolutions: see the
fixture)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets.kernels.conv
from nets.kernels import switch
from nets.kernels.conv import Conv, backward_chunks


@pytest.fixture(autouse=True)
def xla_convolutions():
    """These tests are about the XLA path (exact sums, layouts, chunks); oneDNN's, the CPU
    default where it builds, is tested in test_onednn_conv.py."""
    with switch.use(conv='xla'):
        yield


CASES = [
    (dict(features=6, kernel_size=(3, 3)), (2, 7, 7, 4)),
    (dict(features=6, kernel_size=(3, 3), strides=2), (2, 9, 8, 4)),
    (dict(features=6, kernel_size=(4, 4), strides=4, padding='VALID'), (2, 8, 8, 3)),
    (
        dict(features=6, kernel_size=(3, 3), kernel_dilation=2, padding=[(1, 2), (0, 1)]),
        (2, 9, 9, 4),
    ),
    (dict(features=6, kernel_size=(3,)), (2, 9, 4)),
    (dict(features=6, kernel_size=(3, 3, 3), strides=(1, 2, 1)), (2, 5, 6, 5, 4)),
    (dict(features=8, kernel_size=(3, 3), feature_group_count=4), (2, 7, 7, 8)),  # lax's path
]


@pytest.mark.parametrize('fields,shape', CASES)
def test_values_parameters_and_gradients_equal_nn_conv(fields, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    reference, conv = nn.Conv(**fields), Conv(**fields)
    variables = reference.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, conv.init(jax.random.PRNGKey(1), x)) == jax.tree.map(
        jnp.shape, variables
    )

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(
            variables, x
        )

    assert jnp.array_equal(conv.apply(variables, x), reference.apply(variables, x))
    for ours, theirs in zip(jax.tree.leaves(grads(conv)), jax.tree.leaves(grads(reference))):
        assert jnp.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def _loop_convolution_labels(module) -> list[str]:
    """dim_labels of the convolutions XLA compiles for a scan over micro-batch gradients."""
    x = jnp.ones((2, 4, 8, 8, 3))
    variables = module.init(jax.random.PRNGKey(0), x[0])

    def accumulate(variables, x):
        # Kernel and input gradients (the input one as in a layer that is not the first).
        grad = jax.grad(lambda v, xi: jnp.sum(module.apply(v, xi) ** 2), argnums=(0, 1))
        return jax.lax.scan(
            lambda total, xi: (jax.tree.map(jnp.add, total, grad(variables, xi)), None),
            jax.tree.map(jnp.zeros_like, (variables, x[0])),
            x,
        )[0]

    hlo = jax.jit(accumulate).lower(variables, x).compile().as_text()
    return re.findall(r'convolution\(.*dim_labels=(\S+?),', hlo)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA's CPU layout behaviour")
def test_gradients_in_a_loop_are_canonical_convolutions():
    # Premise: inside the loop nn.Conv's kernel gradient keeps the batch as its contracted
    # feature dimension (f01b...), ~100x slower on XLA's CPU backend, and its input gradient
    # reads the flipped kernel as (*spatial, O, I) (01oi), 3-4x slower.
    reference = _loop_convolution_labels(nn.Conv(5, (3, 3)))
    assert any(label.startswith('f01b') for label in reference), reference
    assert any('_01oi->' in label for label in reference), reference
    labels = _loop_convolution_labels(Conv(5, (3, 3)))
    assert labels == ['b01f_01io->b01f'] * 3, labels  # forward, kernel and input gradients


def test_other_backends_differentiate_lax_s_convolution(monkeypatch):
    """The custom gradient is a CPU workaround: where JAX's default backend is a GPU or TPU, Conv
    is nn.Conv's plain convolution (its compiler lays gradients out itself)."""
    module = Conv(5, (3, 3))
    x = jnp.ones((2, 6, 6, 3))
    params = module.init(jax.random.key(0), x)

    def traced() -> str:  # a new function each time: make_jaxpr caches traces
        return str(jax.make_jaxpr(lambda p: module.apply(p, x).sum())(params))

    assert 'custom_vjp_call' in traced()
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert 'custom_vjp_call' not in traced()


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA's CPU convolutions")
def test_strided_gradients_skip_the_zeros_and_pointwise_kernel_gradients_are_products():
    """A strided layer's input gradient runs as stride-1 convolutions of its phases (no
    zero-dilated output gradient: `lhs_dilate`), a 1x1 layer's kernel gradient as a product."""
    x = jnp.ones((2, 8, 8, 3))

    def gradient_hlo(module) -> str:
        variables = module.init(jax.random.PRNGKey(0), x)
        grad = jax.grad(lambda v, x: jnp.sum(module.apply(v, x) ** 2), argnums=(0, 1))
        return jax.jit(grad).lower(variables, x).compile().as_text()

    strided = gradient_hlo(Conv(5, (3, 3), strides=2))
    assert 'lhs_dilate' not in strided
    assert 'lhs_dilate' in gradient_hlo(nn.Conv(5, (3, 3), strides=2))  # the premise
    pointwise = gradient_hlo(Conv(5, (1, 1), strides=2))
    assert 'lhs_dilate' not in pointwise
    assert len(re.findall(r'= f32\[[\d,]+\]\{[\d,]+\} convolution\(', pointwise)) == 1  # forward


def test_backward_chunks_large_operands_where_a_chunk_s_input_outweighs_the_kernel(monkeypatch):
    big = (128, 32, 32, 64)
    assert backward_chunks(big, (3, 3, 64, 64), big) == 8
    small = (128, 8, 8, 256)
    assert backward_chunks(small, (3, 3, 256, 256), small) == 1  # kernel > a chunk's input
    assert backward_chunks((16, 32, 32, 64), (3, 3, 64, 64), (16, 32, 32, 64)) == 1  # 1 chunk
    assert backward_chunks((40, 32, 32, 64), (3, 3, 64, 64), (40, 32, 32, 64)) == 1  # 40 % 16
    # The quickstart CNN's layers: operands that fit in the caches keep whole batches.
    assert backward_chunks((128, 14, 14, 16), (3, 3, 16, 32), (128, 14, 14, 32)) == 1
    monkeypatch.setattr(nets.kernels.conv, 'BACKWARD_CHUNK_MIN_BYTES', 0)
    assert backward_chunks((128, 14, 14, 16), (3, 3, 16, 32), (128, 14, 14, 32)) == 8


@pytest.mark.parametrize('strides', [1, 2])
def test_gradients_in_batch_chunks_equal_nn_conv(strides, monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (48, 8, 8, 4))
    reference, conv = nn.Conv(6, (3, 3), strides=strides), Conv(6, (3, 3), strides=strides)
    monkeypatch.setattr(nets.kernels.conv, 'BACKWARD_CHUNK_MIN_BYTES', 0)
    assert backward_chunks(x.shape, (3, 3, 4, 6), (48, 8 // strides, 8 // strides, 6)) == 3
    variables = reference.init(jax.random.PRNGKey(1), x)

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(
            variables, x
        )

    # A kernel gradient sums 48 x 64 products; chunked and whole sums round differently, by
    # an amount that scales with the largest entries (and with how XLA orders the sums).
    for ours, theirs in zip(jax.tree.leaves(grads(conv)), jax.tree.leaves(grads(reference))):
        scale = float(jnp.max(jnp.abs(theirs)))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_chunked_gradients_of_a_batch_sharded_over_devices_gather_nothing(monkeypatch):
    """Each chunk takes examples strided over the batch, so on a data-parallel mesh every device
    computes its share of every chunk; chunks of consecutive examples would each live on one
    device and move between them."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
    x = jax.device_put(
        jax.random.normal(jax.random.PRNGKey(0), (64, 8, 8, 4)),
        NamedSharding(mesh, PartitionSpec('data')),
    )
    conv = Conv(6, (3, 3))
    monkeypatch.setattr(nets.kernels.conv, 'BACKWARD_CHUNK_MIN_BYTES', 0)
    assert backward_chunks(x.shape, (3, 3, 4, 6), (64, 8, 8, 6)) == 4
    variables = jax.device_put(
        conv.init(jax.random.PRNGKey(1), x[:1]), NamedSharding(mesh, PartitionSpec())
    )
    grad = jax.jit(jax.grad(lambda v, x: jnp.sum(conv.apply(v, x) ** 2), argnums=(0, 1)))
    hlo = grad.lower(variables, x).compile().as_text()
    assert 'all-gather' not in hlo and 'all-to-all' not in hlo and 'collective-permute' not in hlo


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_patch_embedding_is_one_product_where_onednn_would_run(dtype):
    # Non-overlapping windows (a ViT's patch embedding): no convolution and no oneDNN call in
    # the step, in either precision, and nn.Conv's values and gradients.
    from nets.kernels import onednn_conv

    if not onednn_conv.available():
        pytest.skip('oneDNN library not built here')
    if jnp.dtype(dtype) not in onednn_conv.runnable_dtypes():
        pytest.skip(f'oneDNN has no {jnp.dtype(dtype).name} kernels on this CPU')
    backend = 'onednn'
    fields = dict(features=8, kernel_size=(4, 4), strides=4, padding='VALID', dtype=dtype)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 18, 16, 3))
    reference, conv = nn.Conv(**fields), Conv(**fields)
    variables = reference.init(jax.random.PRNGKey(1), x)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x).astype(jnp.float32)))

    with switch.use(conv=backend):
        step = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
        hlo = step.lower(variables, x).compile().as_text()
        ours = step(variables, x)
    assert 'convolution(' not in hlo and 'custom_call_target="Onednn' not in hlo
    theirs = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        scale = float(jnp.abs(b.astype(jnp.float32)).max())
        assert float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()) <= (
            tolerance * scale
        )
