"""nets.conv.Conv: nn.Conv's values and gradients, with a kernel gradient XLA's CPU backend
runs on its canonical (fast) convolution inside loops too."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from nets.conv import Conv

CASES = [
    (dict(features=6, kernel_size=(3, 3)), (2, 7, 7, 4)),
    (dict(features=6, kernel_size=(3, 3), strides=2), (2, 9, 8, 4)),
    (dict(features=6, kernel_size=(4, 4), strides=4, padding='VALID'), (2, 8, 8, 3)),
    (dict(features=6, kernel_size=(3, 3), kernel_dilation=2, padding=[(1, 2), (0, 1)]),
     (2, 9, 9, 4)),
    (dict(features=6, kernel_size=(3,)), (2, 9, 4)),
    (dict(features=6, kernel_size=(3, 3, 3), strides=(1, 2, 1)), (2, 5, 6, 5, 4)),
    (dict(features=8, kernel_size=(3, 3), feature_group_count=4), (2, 7, 7, 8)),  # lax's path
]


@pytest.mark.parametrize('fields,shape', CASES)
def test_values_parameters_and_gradients_equal_nn_conv(fields, shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    reference, conv = nn.Conv(**fields), Conv(**fields)
    variables = reference.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, conv.init(jax.random.PRNGKey(1), x)) == \
        jax.tree.map(jnp.shape, variables)

    def grads(module):
        return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), argnums=(0, 1))(
            variables, x)
    assert jnp.array_equal(conv.apply(variables, x), reference.apply(variables, x))
    for ours, theirs in zip(jax.tree.leaves(grads(conv)), jax.tree.leaves(grads(reference))):
        assert jnp.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def _loop_convolution_labels(module) -> list[str]:
    """dim_labels of the convolutions XLA compiles for a scan over micro-batch gradients."""
    x = jnp.ones((2, 4, 8, 8, 3))
    variables = module.init(jax.random.PRNGKey(0), x[0])

    def accumulate(variables, x):
        grad = jax.grad(lambda v, xi: jnp.sum(module.apply(v, xi) ** 2))
        return jax.lax.scan(lambda total, xi: (jax.tree.map(jnp.add, total, grad(variables, xi)),
                                               None),
                            jax.tree.map(jnp.zeros_like, variables), x)[0]
    hlo = jax.jit(accumulate).lower(variables, x).compile().as_text()
    return re.findall(r'convolution\(.*dim_labels=(\S+?),', hlo)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA's CPU layout behaviour")
def test_kernel_gradient_in_a_loop_is_a_canonical_convolution():
    # Premise: nn.Conv's kernel gradient inside the loop keeps the batch as its contracted
    # feature dimension (f01b...), which XLA's CPU backend runs ~100x slower.
    assert any(not labels.startswith('b01f') for labels in _loop_convolution_labels(
        nn.Conv(5, (3, 3))))
    labels = _loop_convolution_labels(Conv(5, (3, 3)))
    assert len(labels) >= 2 and all(label.startswith('b01f_01') for label in labels), labels
