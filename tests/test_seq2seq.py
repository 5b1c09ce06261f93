"""Tests for the recurrent encoder-decoders (nets/models/seq2seq.py): parameter counts in closed
form, teacher forcing (causal, blind to source padding), the step-by-step decoder against teacher
forcing, greedy == beam 1, alignments, learning a tiny reversal task, and configuration errors.

Everything that runs is tiny (embed 8, hidden 16, vocabularies of 12 and 14 ids).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from nets.layers import decoding
from nets.models.seq2seq import Seq2Seq, alignments, generate, make_step_fn
from nets.models.transformer import shift_right
from tests.nets_harness import fast_jit, rng

PAD, BOS, EOS = 0, 1, 2
SOURCE_VOCAB, TARGET_VOCAB = 12, 14
TINY = dict(
    source_vocab_size=SOURCE_VOCAB,
    target_vocab_size=TARGET_VOCAB,
    embed_dim=8,
    hidden_size=16,
    attention_dim=8,
    readout_size=8,
    dropout_rate=0.0,
)
# (form, cell, layers): every form, both carry kinds (array and LSTMState), stacked layers.
CONFIGS = [('context', 'lstm', 2), ('attention', 'gru', 1), ('attention', 'lstm', 2)]
CONFIG_IDS = [f'{form}_{cell}_{n}' for form, cell, n in CONFIGS]


def tokens(seed: int, shape: tuple[int, ...], vocab_size: int = SOURCE_VOCAB) -> jnp.ndarray:
    """Random non-special token ids (3..vocab-1)."""
    return jnp.asarray(np.random.default_rng(seed).integers(3, vocab_size, shape), jnp.int32)


@functools.cache
def tiny_setup(form: str, cell: str = 'gru', num_layers: int = 1):
    """A tiny model, its variables and a jitted teacher-forced pass (built once per
    configuration)."""
    model = nets.create(f'seq2seq_{form}', cell=cell, num_layers=num_layers, **TINY)
    variables = fast_jit(model.init)(
        {'params': rng(0)}, tokens(0, (1, 4)), tokens(1, (1, 3), TARGET_VOCAB)
    )
    apply = fast_jit(functools.partial(model.apply, train=False))
    return model, variables, apply


def param_count(model: Seq2Seq) -> int:
    ids = jax.ShapeDtypeStruct((1, 5), jnp.int32)
    params = jax.eval_shape(lambda x, y: model.init(jax.random.key(0), x, y), ids, ids)['params']
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def closed_form(
    form: str, cell: str, source_vocab: int, target_vocab: int, e: int, h: int, a: int, r: int
) -> int:
    """One-layer counts: a cell of G gates has G(d_in·H + H² + H) (nets/layers/recurrent.py)."""
    gates = {'rnn': 1, 'gru': 3, 'lstm': 4}[cell]
    rnn = lambda d_in: gates * (d_in * h + h * h + h)  # noqa: E731
    embeddings = (source_vocab + target_vocab) * e
    output = r * target_vocab + target_vocab
    if form == 'context':
        # encoder; decoder cell on [E y; c]; maxout on [s; c; E y]
        return embeddings + rnn(e) + rnn(e + h) + (2 * h + e) * 2 * r + 2 * r + output
    bridge_width = (2 if cell == 'lstm' else 1) * h
    attention = h * a + 2 * h * a + a + a  # W_s, W_h and its bias, v
    return (
        embeddings
        + 2 * rnn(e)
        + h * bridge_width
        + bridge_width
        + rnn(e + 2 * h)
        + attention
        + (3 * h + e) * 2 * r
        + 2 * r
        + output
    )


@pytest.mark.parametrize('form', ['context', 'attention'])
@pytest.mark.parametrize('cell', ['gru', 'lstm', 'rnn'])
def test_param_counts_closed_form(form, cell):
    model = nets.create(f'seq2seq_{form}', cell=cell, **TINY)
    assert param_count(model) == closed_form(form, cell, SOURCE_VOCAB, TARGET_VOCAB, 8, 16, 8, 8)


def test_registered_defaults():
    assert nets.list_models('seq2seq') == ['seq2seq_attention', 'seq2seq_context']
    context, attention = nets.create('seq2seq_context'), nets.create('seq2seq_attention')
    assert (context.embed_dim, context.hidden_size, context.cell) == (64, 128, 'gru')
    assert (
        param_count(context) == closed_form('context', 'gru', 256, 256, 64, 128, 128, 64) == 287_872
    )
    assert (
        param_count(attention)
        == closed_form('attention', 'gru', 256, 256, 64, 128, 128, 64)
        == 493_440
    )


# --------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize('config', CONFIGS, ids=CONFIG_IDS)
def test_shapes_and_causality(config):
    model, variables, apply = tiny_setup(*config)
    x, y = tokens(2, (2, 5)), tokens(3, (2, 6), TARGET_VOCAB)
    logits = apply(variables, x, y)
    assert logits.shape == (2, 6, TARGET_VOCAB) and logits.dtype == jnp.float32
    changed = y.at[:, 3].set(jnp.where(y[:, 3] == 3, 4, 3))
    after = apply(variables, x, changed)
    # logits[t] predicts targets[t] from targets[:t]: steps <= 3 cannot see target 3.
    np.testing.assert_array_equal(after[:, :4], logits[:, :4])
    assert np.abs(after[:, 4:] - logits[:, 4:]).max() > 1e-4


@pytest.mark.parametrize('config', CONFIGS, ids=CONFIG_IDS)
def test_source_padding_changes_nothing(config):
    model, variables, apply = tiny_setup(*config)
    short, long_ = tokens(4, (1, 4)), tokens(5, (1, 7))
    y = tokens(6, (1, 5), TARGET_VOCAB)
    batch = jnp.concatenate([jnp.pad(short, ((0, 0), (0, 3)), constant_values=PAD), long_])
    padded = apply(variables, batch, jnp.tile(y, (2, 1)))
    np.testing.assert_allclose(padded[0], apply(variables, short, y)[0], atol=1e-5)
    np.testing.assert_allclose(padded[1], apply(variables, long_, y)[0], atol=1e-5)


@pytest.mark.parametrize('config', CONFIGS, ids=CONFIG_IDS)
def test_step_by_step_decoding_matches_teacher_forcing(config):
    model, variables, apply = tiny_setup(*config)
    x = tokens(7, (2, 6)).at[1, 4:].set(PAD)
    y = tokens(8, (2, 5), TARGET_VOCAB)
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


@pytest.mark.parametrize('form', ['context', 'attention'])
def test_greedy_equals_beam_of_one(form):
    model, variables, _ = tiny_setup(form)
    x = tokens(9, (3, 5)).at[2, 3:].set(PAD)

    @fast_jit
    def both(variables, x):
        greedy = generate(model, variables, x, max_length=6)
        beam = generate(model, variables, x, max_length=6, beam_size=1, all_beams=True)
        wide = generate(model, variables, x, max_length=6, beam_size=3)
        return greedy, beam, wide

    (greedy, greedy_scores), (beam, beam_scores), (wide, wide_scores) = both(variables, x)
    assert greedy.shape == (3, 6) and beam.shape == (3, 1, 6) and wide.shape == (3, 6)
    np.testing.assert_array_equal(beam[:, 0], greedy)
    lengths = np.where((greedy == EOS).any(1), (greedy == EOS).argmax(1) + 1, 6)
    np.testing.assert_allclose(
        beam_scores[:, 0], greedy_scores / decoding.length_penalty(lengths, 0.6), rtol=1e-5
    )
    assert np.all(np.asarray(wide_scores) >= np.asarray(beam_scores[:, 0]) - 1e-5)


def test_alignments_rows_sum_to_one_over_the_real_source():
    model, variables, _ = tiny_setup('attention')
    x = tokens(10, (2, 6)).at[0, 4:].set(PAD)
    y = tokens(11, (2, 5), TARGET_VOCAB)
    weights = np.asarray(fast_jit(functools.partial(alignments, model))(variables, x, y))
    assert weights.shape == (2, 5, 6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(weights[0, :, 4:], 0.0)
    assert np.all(weights[1] > 0)
    with pytest.raises(ValueError, match="form 'attention'"):
        alignments(tiny_setup('context')[0], tiny_setup('context')[1], x, y)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize('form', ['context', 'attention'])
def test_learns_to_reverse(form):
    """150 Adam steps on reversing 4 tokens: the loss falls far below chance; the attention
    model learns the anti-diagonal alignment and beam search then reverses new sequences."""
    steps, batch, length = 150, 32, 4
    model = nets.create(
        f'seq2seq_{form}',
        **{**TINY, 'hidden_size': 32, 'embed_dim': 16, 'readout_size': 16, 'dropout_rate': 0.1},
    )
    draw = np.random.default_rng(0)
    inputs = jnp.asarray(draw.integers(3, SOURCE_VOCAB, (steps + 1, batch, length)), jnp.int32)
    targets = jnp.concatenate(
        [inputs[:, :, ::-1], jnp.full((steps + 1, batch, 1), EOS, jnp.int32)], axis=2
    )
    params = fast_jit(model.init)({'params': rng(1)}, inputs[0, :1], targets[0, :1])['params']
    optimizer = optax.adam(1e-2)

    def loss_fn(params, x, y, key):
        logits = model.apply({'params': params}, x, y, train=True, rngs={'dropout': key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, batch):
        params, opt_state = carry
        x, y, key = batch
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), loss

    # One compiled scan over all steps: a Python loop would pay dispatch on every step.
    @fast_jit
    def train(params, keys):
        (params, _), losses = jax.lax.scan(
            step, (params, optimizer.init(params)), (inputs[:steps], targets[:steps], keys)
        )
        return params, losses

    params, losses = train(params, jax.random.split(rng(2), steps))
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert losses[:5].mean() > 2.0  # ln(14) ≈ 2.6 at initialisation
    assert losses[-10:].mean() < 0.35 * losses[:5].mean()
    if form == 'attention':
        x, y = inputs[steps], targets[steps]  # not trained on

        @fast_jit
        def evaluate(params):
            return (
                alignments(model, {'params': params}, x, y),
                generate(model, {'params': params}, x, max_length=length + 1, beam_size=2)[0],
            )

        weights, reversed_ = evaluate(params)
        # Word i of the reversal is source token length-1-i: the alignment is the anti-diagonal.
        np.testing.assert_array_equal(
            np.asarray(weights)[:, :length].argmax(-1), np.tile(np.arange(length)[::-1], (batch, 1))
        )
        assert np.mean(np.asarray(reversed_) == np.asarray(y)) > 0.9


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    'field, value, fragment',
    [
        ('form', 'transformer', "['attention', 'context']"),
        ('cell', 'qrnn', "['gru', 'lstm', 'rnn']"),
    ],
)
def test_invalid_choices_name_valid_ones(field, value, fragment):
    with pytest.raises(ValueError, match=repr(value)) as error:
        nets.create('seq2seq_attention', **{field: value})
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    'overrides, fragment',
    [
        (dict(eos_id=0), 'eos_id and pad_id must differ'),
        (dict(bos_id=300), 'outside the vocabulary'),
        (dict(hidden_size=0), 'must be positive'),
        (dict(dropout_rate=1.0), 'dropout_rate'),
    ],
)
def test_invalid_values_raise(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        nets.create('seq2seq_context', **overrides)


def test_float_inputs_raise():
    model, variables, _ = tiny_setup('context')
    with pytest.raises(ValueError, match='int token ids'):
        model.apply(variables, jnp.zeros((1, 3)), jnp.zeros((1, 3), jnp.int32))
