"""p4 group convolutions: exact equivariance of the lifting and group layers under quarter
turns (maps turn, orientations shift cyclically), and the P4-CNN's logits unchanged when the
image turns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets.layers.group_conv import (
    GroupConv,
    LiftingConv,
    group_filters,
    lifting_filters,
    rotate_image,
    rotate_p4,
    rotation_pool,
)

TOLERANCE = 1e-5  # float32 rounding: the turned computation sums the same terms in another order


def max_difference(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)))


@pytest.fixture(scope='module')
def p4_layers():
    images = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    lifting = LiftingConv(5, kernel_size=3)
    lifting_variables = lifting.init(jax.random.key(1), images)
    maps = lifting.apply(lifting_variables, images)
    group = GroupConv(4, kernel_size=5)
    group_variables = group.init(jax.random.key(2), maps)
    return images, (lifting, lifting_variables), maps, (group, group_variables)


@pytest.mark.parametrize('quarter_turns', [1, 2, 3])
def test_lifting_conv_is_equivariant(p4_layers, quarter_turns):
    images, (lifting, variables), maps, _ = p4_layers
    assert maps.shape == (2, 9, 9, 4, 5)
    turned = lifting.apply(variables, rotate_image(images, quarter_turns))
    assert max_difference(turned, rotate_p4(maps, quarter_turns)) < TOLERANCE
    # The orientation shift is part of it: turning the maps alone does not match.
    assert max_difference(turned, rotate_image(maps, quarter_turns)) > 0.1


@pytest.mark.parametrize('quarter_turns', [1, 2, 3])
def test_group_conv_is_equivariant(p4_layers, quarter_turns):
    _, _, maps, (group, variables) = p4_layers
    out = group.apply(variables, maps)
    assert out.shape == (2, 9, 9, 4, 4)
    turned = group.apply(variables, rotate_p4(maps, quarter_turns))
    assert max_difference(turned, rotate_p4(out, quarter_turns)) < TOLERANCE
    assert max_difference(turned, rotate_image(out, quarter_turns)) > 0.1
    # Pooling the orientations leaves a map that only turns.
    assert (
        max_difference(rotation_pool(turned), rotate_image(rotation_pool(out), quarter_turns))
        < TOLERANCE
    )


def test_expanded_filters_are_rotated_copies():
    kernel = jax.random.normal(jax.random.key(3), (3, 3, 2, 1))
    lifted = np.asarray(lifting_filters(kernel)).reshape(3, 3, 2, 4, 1)
    for s in range(4):
        np.testing.assert_array_equal(lifted[..., s, :], np.rot90(np.asarray(kernel), s))
    group = jax.random.normal(jax.random.key(4), (4, 3, 3, 2, 1))
    expanded = np.asarray(group_filters(group)).reshape(3, 3, 4, 2, 4, 1)
    for s in range(4):
        for t in range(4):  # output orientation s reads input orientation t through ψ[t - s]
            expected = np.rot90(np.asarray(group[(t - s) % 4]), s)
            np.testing.assert_array_equal(expanded[:, :, t, :, s, :], expected)


def test_layers_check_their_inputs():
    with pytest.raises(ValueError, match='kernel_size odd'):
        LiftingConv(4, kernel_size=2)
    with pytest.raises(ValueError, match='p4 maps'):
        GroupConv(4).init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))


@pytest.fixture(scope='module')
def p4cnn():
    model = nets.create('p4cnn', channels=(4, 8, 8), convs_per_stage=1, num_classes=10)
    images = jax.random.normal(jax.random.key(5), (3, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(6), images)
    return model, variables, images


@pytest.mark.parametrize('train', [False, True])
def test_p4cnn_logits_are_invariant_to_quarter_turns(p4cnn, train):
    model, variables, images = p4cnn

    @jax.jit
    def logits(x):
        out = model.apply(variables, x, train=train, mutable=['batch_stats'] if train else False)
        return out[0] if train else out

    reference = logits(images)
    assert float(jnp.std(reference)) > 1e-3  # not a constant function
    for quarter_turns in (1, 2, 3):
        assert max_difference(logits(rotate_image(images, quarter_turns)), reference) < TOLERANCE
    # ... but not to a mirror image, which p4 does not contain.
    assert max_difference(logits(images[:, :, ::-1]), reference) > 1e-3


def test_p4cnn_parameters_and_size_checks():
    # Halved widths: about the parameters of the plain `cnn` (p4 filters hold 4x the weights).
    p4, plain = (nets.count_params(nets.create(n), (1, 28, 28, 1)) for n in ('p4cnn', 'cnn'))
    assert abs(p4 - plain) / plain < 0.05
    model = nets.create('p4cnn', channels=(2, 2, 2), convs_per_stage=1)
    with pytest.raises(ValueError, match='needs an even map'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
    with pytest.raises(ValueError, match='square'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 32, 1)))
    with pytest.raises(ValueError, match='rotation_pool'):
        nets.create('p4cnn', rotation_pool='median')
