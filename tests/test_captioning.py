"""Tests for show, attend and tell (nets/models/captioning.py): parameter counts in closed form,
shapes, attention maps (each a distribution over the feature grid), step-by-step decoding
against teacher forcing, generation, the doubly stochastic penalty, learning a toy
captioning task, and configuration errors.

Everything that runs is tiny: 8 x 16 images, two 4- and 8-channel stages (a 4 x 8 grid),
hidden 16, a 6-id vocabulary.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from nets.models.captioning import (
    ShowAttendTell,
    attention_maps,
    doubly_stochastic_penalty,
    generate,
)
from nets.models.seq2seq import DecoderStep, make_step_fn, sown_attention
from nets.models.transformer import shift_right
from tests.nets_harness import fast_jit, rng

PAD, BOS, EOS = 0, 1, 2
DARK, BRIGHT = 3, 4  # toy words
VOCAB = 6
TINY = dict(
    vocab_size=VOCAB,
    channels=(4, 8),
    convs_per_stage=1,
    embed_dim=8,
    hidden_size=16,
    attention_dim=8,
    dropout_rate=0.0,
)
IMAGE_SHAPE = (8, 16, 1)


def images(seed: int, batch: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)


def captions(seed: int, batch: int, length: int = 3) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(3, VOCAB, (batch, length)), jnp.int32)


@functools.cache
def tiny_setup(gate: bool = True):
    model = nets.create('show_attend_tell', gate=gate, **TINY)
    variables = fast_jit(model.init)({'params': rng(0)}, images(0, 1), captions(0, 1))
    apply = fast_jit(functools.partial(model.apply, train=False))
    return model, variables, apply


def param_count(model: ShowAttendTell, image_shape: tuple[int, ...]) -> int:
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    caption = jax.ShapeDtypeStruct((1, 3), jnp.int32)
    params = jax.eval_shape(lambda x, y: model.init(jax.random.key(0), x, y), image, caption)[
        'params'
    ]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def closed_form(
    channels: tuple[int, ...],
    convs_per_stage: int,
    in_channels: int,
    vocab: int,
    e: int,
    h: int,
    a: int,
    gate: bool,
) -> int:
    """3x3 convs without bias + BatchNorm (2c); LSTM on [E y; z]; init_h, init_c; attention;
    gate; deep output L_h, L_z (to e) and L_o; the embedding."""
    convs, c_in = 0, in_channels
    for c in channels:
        for _ in range(convs_per_stage):
            convs += 9 * c_in * c + 2 * c
            c_in = c
    d = channels[-1]
    lstm = 4 * ((e + d) * h + h * h + h)
    init = 2 * (d * h + h)
    attention = h * a + d * a + a + a
    deep_output = (h * e + e) + (d * e + e) + (e * vocab + vocab)
    return convs + lstm + init + attention + (h + 1) * gate + deep_output + vocab * e


@pytest.mark.parametrize('gate', [True, False])
def test_param_counts_closed_form(gate):
    assert param_count(
        nets.create('show_attend_tell', gate=gate, **TINY), IMAGE_SHAPE
    ) == closed_form((4, 8), 1, 1, VOCAB, 8, 16, 8, gate)


def test_registered_default():
    assert nets.list_models('captioning') == ['show_attend_tell']
    model = nets.create('show_attend_tell')
    assert (
        param_count(model, (28, 112, 1))
        == closed_form((32, 64, 128), 2, 1, 14, 64, 128, 64, True)
        == 519_215
    )
    assert model.grid_shape((1, 28, 112, 1)) == (7, 28)  # L = 196, as the paper's 14 x 14


def test_shapes_and_attention_maps():
    model, variables, apply = tiny_setup()
    x, y = images(1, 2), captions(1, 2, 4)
    logits = apply(variables, x, y)
    assert logits.shape == (2, 4, VOCAB) and logits.dtype == jnp.float32
    assert 'batch_stats' in variables
    maps = np.asarray(fast_jit(functools.partial(attention_maps, model))(variables, x, y))
    assert maps.shape == (2, 4, 4, 8)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)
    assert np.all(maps >= 0)


@pytest.mark.parametrize('gate', [True, False])
def test_step_by_step_decoding_matches_teacher_forcing(gate):
    model, variables, apply = tiny_setup(gate)
    x, y = images(2, 2), captions(2, 2, 4)
    full = apply(variables, x, y)

    @fast_jit
    def stepped(variables, x, y):
        step_fn, carry = make_step_fn(model, variables, x)
        logits = []
        for token in shift_right(y, BOS).T:
            step_logits, carry = step_fn(token, carry)
            logits.append(step_logits)
        return jnp.stack(logits, axis=1)

    np.testing.assert_allclose(stepped(variables, x, y), full, atol=1e-5)


def test_generate_greedy_equals_beam_of_one():
    model, variables, _ = tiny_setup()
    x = images(3, 3)

    @fast_jit
    def both(variables, x):
        return (
            generate(model, variables, x, max_length=4),
            generate(model, variables, x, max_length=4, beam_size=1, all_beams=True, alpha=0.0),
            generate(model, variables, x, max_length=4, beam_size=2, all_beams=True),
        )

    (greedy, greedy_scores), (beam, beam_scores), (wide, wide_scores) = both(variables, x)
    assert greedy.shape == (3, 4) and wide.shape == (3, 2, 4) and wide_scores.shape == (3, 2)
    np.testing.assert_array_equal(beam[:, 0], greedy)
    np.testing.assert_allclose(beam_scores[:, 0], greedy_scores, rtol=1e-5)


def test_doubly_stochastic_penalty_formula():
    weights = (
        np.random.default_rng(4).dirichlet(np.ones(6), size=(2, 3)).astype(np.float32)
    )  # (2, 3, 6)
    valid = np.array([[True, True, True], [True, True, False]])
    expected = [np.sum((1.0 - weights[0].sum(0)) ** 2), np.sum((1.0 - weights[1, :2].sum(0)) ** 2)]
    np.testing.assert_allclose(doubly_stochastic_penalty(weights, valid), expected, rtol=1e-5)
    grid = weights.reshape(2, 3, 2, 3)  # the attention_maps layout gives the same
    np.testing.assert_allclose(doubly_stochastic_penalty(grid, valid), expected, rtol=1e-5)
    assert doubly_stochastic_penalty(weights).shape == (2,)


def test_penalty_from_a_training_pass():
    """How the training task regularises: sow the weights in the training apply, add λ · penalty."""
    model, variables, _ = tiny_setup()
    x, y = images(5, 2), captions(5, 2, 4).at[1, 2:].set(PAD)

    def loss(params):
        logits, state = model.apply(
            {**variables, 'params': params},
            x,
            y,
            train=True,
            rngs={'dropout': rng(6)},
            mutable=['batch_stats', 'intermediates'],
        )
        weights = sown_attention(state['intermediates'])
        return jnp.mean(doubly_stochastic_penalty(weights, y != PAD)), weights

    grads, weights = fast_jit(jax.grad(loss, has_aux=True))(variables['params'])
    assert weights.shape == (2, 4, 32)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
    attention_grads = jax.tree_util.tree_leaves(grads['decoder']['attention'])
    assert all(np.all(np.isfinite(g)) for g in attention_grads)
    assert max(float(jnp.abs(g).max()) for g in attention_grads) > 0


def toy_batch(seed: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves each bright or dark (not both dark); the caption says which,
    left to right: [left word, right word, eos]."""
    draw = np.random.default_rng(seed)
    bright = draw.integers(0, 3, batch)  # 0: left, 1: right, 2: both
    left, right = bright != 1, bright != 0
    x = draw.uniform(0, 0.2, (batch, *IMAGE_SHAPE)).astype(np.float32)
    x[left, :, :8] += 0.8
    x[right, :, 8:] += 0.8
    words = np.stack(
        [np.where(left, BRIGHT, DARK), np.where(right, BRIGHT, DARK), np.full(batch, EOS)], axis=1
    )
    return x, words.astype(np.int32)


def test_learns_a_toy_captioning_task():
    """80 Adam steps: the loss falls, and the attention learns to look at the left half for the
    first word and at the right half for the second."""
    steps, batch = 80, 16
    model, variables, _ = tiny_setup()
    data = [toy_batch(seed, batch) for seed in range(steps)]
    x = jnp.asarray(np.stack([d[0] for d in data]))
    y = jnp.asarray(np.stack([d[1] for d in data]))
    optimizer = optax.adam(1e-2)

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': batch_stats},
            x,
            y,
            train=True,
            mutable=['batch_stats'],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates[
            'batch_stats'
        ]

    def step(carry, batch):
        params, batch_stats, opt_state = carry
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, *batch
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @fast_jit
    def train(variables, x, y):
        params = variables['params']
        (params, batch_stats, _), losses = jax.lax.scan(
            step, (params, variables['batch_stats'], optimizer.init(params)), (x, y)
        )
        return {'params': params, 'batch_stats': batch_stats}, losses

    trained, losses = train(variables, x, y)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[:5].mean() > 1.0  # ln(6) ≈ 1.8 at initialisation
    assert losses[-10:].mean() < 0.3 * losses[:5].mean()
    test_x, test_y = toy_batch(steps, 32)
    maps = np.asarray(fast_jit(functools.partial(attention_maps, model))(trained, test_x, test_y))
    left, right = maps[..., :4].sum(axis=(2, 3)), maps[..., 4:].sum(axis=(2, 3))  # (batch, T)
    assert left[:, 0].mean() > 0.5 and right[:, 1].mean() > 0.7


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    'overrides, fragment',
    [
        (dict(channels=()), 'channels must be a non-empty'),
        (dict(eos_id=0), 'eos_id and pad_id must differ'),
        (dict(bos_id=14), 'outside the vocabulary'),
        (dict(hidden_size=0), 'must be positive'),
        (dict(dropout_rate=1.5), 'dropout_rate'),
    ],
)
def test_invalid_values_raise(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        nets.create('show_attend_tell', **overrides)


def test_invalid_uses_raise():
    with pytest.raises(ValueError, match="valid choices: \\['deep', 'maxout'\\]"):
        DecoderStep(vocab_size=4, hidden_size=4, readout='linear')
    model = nets.create('show_attend_tell', **TINY)
    with pytest.raises(ValueError, match='minimum is 2x2'):
        jax.eval_shape(
            model.init, jax.random.key(0), jnp.zeros((1, 1, 8, 1)), jnp.zeros((1, 3), jnp.int32)
        )
    with pytest.raises(ValueError, match='int token ids'):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 16, 1)), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match='readout_size 8 must equal the embedding width 4'):
        jax.eval_shape(
            DecoderStep(
                vocab_size=4,
                hidden_size=4,
                cell='lstm',
                attention_features=0,
                readout='deep',
                readout_size=8,
            ).init,
            jax.random.key(0),
            (nets.layers.recurrent.LSTMState(jnp.zeros((1, 4)), jnp.zeros((1, 4))),),
            jnp.zeros((1, 4)),
            nets.models.seq2seq.Memory(context=jnp.zeros((1, 3))),
        )
