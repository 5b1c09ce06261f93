"""Tests for the encoder-decoder Transformer (nets/models/transformer.py) and the shared
greedy/beam-search decoding (nets/layers/decoding.py).

Big models are only sized with `jax.eval_shape`; everything that runs uses a
tiny configuration (d_model 32, one or two layers, a 16-token vocabulary).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nets
from nets.layers import decoding
from nets.models.transformer import DecoderBlock, Transformer, make_step_fn, shift_right, translate
from tests.nets_harness import fast_jit, rng

PAD, BOS, EOS = 0, 1, 2
TINY = dict(
    vocab_size=16,
    hidden_size=32,
    num_heads=4,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_length=16,
)


def tiny(**overrides) -> Transformer:
    return nets.create('transformer_tiny', **{**TINY, **overrides})


def tokens(seed: int, shape: tuple[int, ...], vocab_size: int = 16) -> jnp.ndarray:
    """Random non-special token ids (3..vocab-1)."""
    return jnp.asarray(np.random.default_rng(seed).integers(3, vocab_size, shape), jnp.int32)


@functools.cache
def tiny_setup(**overrides):
    """A tiny model, its variables and a jitted forward pass (built once per configuration)."""
    model = tiny(**overrides)
    variables = fast_jit(model.init)({'params': rng(0)}, tokens(0, (1, 4)), tokens(1, (1, 4)))
    apply = fast_jit(functools.partial(model.apply, train=False))
    return model, variables, apply


# --------------------------------------------------------------------------- parameter counts


def closed_form(
    vocab: int,
    d: int,
    f: int,
    encoder_layers: int,
    decoder_layers: int,
    *,
    pre_ln: bool = False,
    shared: bool = True,
) -> int:
    """Attention 4d² + 4d, MLP 2df + f + d, LayerNorm 2d; embeddings V·d once or three times."""
    attention, mlp, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    encoder_block = attention + mlp + 2 * norm  # 4d² + 2df + f + 9d
    decoder_block = 2 * attention + mlp + 3 * norm  # 8d² + 2df + f + 15d
    embeddings = vocab * d * (1 if shared else 3)
    final_norms = 2 * norm if pre_ln else 0
    return (
        encoder_layers * encoder_block + decoder_layers * decoder_block + embeddings + final_norms
    )


def abstract_params(model: Transformer) -> dict:
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    return jax.eval_shape(lambda x, y: model.init(jax.random.key(0), x, y), ids, ids)['params']


def param_count(model: Transformer) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(abstract_params(model)))


def test_paper_models_param_counts():
    base, big = (
        param_count(nets.create('transformer_base')),
        param_count(nets.create('transformer_big')),
    )
    assert base == closed_form(37_000, 512, 2048, 6, 6) == 63_082_496
    assert big == closed_form(37_000, 1024, 4096, 6, 6) == 214_245_376
    assert abs(big / 213e6 - 1) < 0.02  # +0.6%
    # Base is 2.9% under the paper's 65M because the paper's two totals imply different
    # vocabularies; what each would need with all three embeddings tied:
    assert base / 65e6 - 1 == pytest.approx(-0.0295, abs=5e-4)
    base_body, big_body = base - 37_000 * 512, big - 37_000 * 1024
    assert round((65e6 - base_body) / 512) == 40_745
    assert round((213e6 - big_body) / 1024) == 35_784


@pytest.mark.parametrize(
    'norm_position, share_embeddings', [('post', True), ('pre', True), ('post', False)]
)
def test_param_count_closed_form(norm_position, share_embeddings):
    model = tiny(
        norm_position=norm_position, share_embeddings=share_embeddings, num_encoder_layers=3
    )
    assert param_count(model) == closed_form(
        16, 32, 64, 3, 2, pre_ln=norm_position == 'pre', shared=share_embeddings
    )
    assert (
        param_count(nets.create('transformer_tiny')) == closed_form(256, 64, 128, 2, 2) == 183_808
    )
    assert param_count(nets.create('transformer_small')) == closed_form(
        256, 128, 512, 3, 3, pre_ln=True
    )


def test_shared_embeddings_are_one_matrix():
    tied = abstract_params(tiny(share_embeddings=True))
    untied = abstract_params(tiny(share_embeddings=False))
    assert tied['embedding']['embedding'].shape == (16, 32)
    assert not {'source_embedding', 'target_embedding', 'output_projection'} & set(tied)
    assert 'embedding' not in untied
    assert untied['output_projection']['kernel'].shape == (32, 16)
    assert set(untied['output_projection']) == {'kernel'}  # no bias, like the tied projection
    # The tied matrix is also the output projection: its gradient gets the softmax's share.
    model, variables, _ = tiny_setup()
    x, y = tokens(2, (2, 5)), tokens(3, (2, 4))

    def loss(embedding, which):
        params = {**variables['params'], 'embedding': {'embedding': embedding}}
        logits = model.apply({'params': params}, x, y)
        return jnp.sum(logits[..., which])

    grad = fast_jit(jax.grad(functools.partial(loss, which=PAD)))(
        variables['params']['embedding']['embedding']
    )
    # PAD never appears in x or y, so only the output projection can reach its row.
    assert jnp.abs(grad[PAD]).sum() > 0


def test_registered_variants():
    assert nets.list_models('transformer') == [
        'transformer_base',
        'transformer_big',
        'transformer_small',
        'transformer_tiny',
    ]
    big = nets.model_fields('transformer_big')
    assert (big['hidden_size'], big['num_heads'], big['mlp_dim'], big['dropout_rate']) == (
        1024,
        16,
        4096,
        0.3,
    )
    base = nets.model_fields('transformer_base')
    assert (
        base['norm_position'],
        base['share_embeddings'],
        base['posemb'],
        base['activation'],
    ) == ('post', True, 'sinusoidal', 'relu')
    small = nets.model_fields('transformer_small')
    assert (small['hidden_size'], small['norm_position'], small['num_encoder_layers']) == (
        128,
        'pre',
        3,
    )


# --------------------------------------------------------------------------- masking


def test_encoder_padding_does_not_change_valid_positions():
    model, variables, apply = tiny_setup()
    short, long_ = tokens(4, (1, 4)), tokens(5, (1, 7))
    targets = tokens(6, (1, 5))
    batch = jnp.concatenate([jnp.pad(short, ((0, 0), (0, 3)), constant_values=PAD), long_])
    encode = fast_jit(functools.partial(model.apply, method=Transformer.encode))
    alone, padded = encode(variables, short), encode(variables, batch)
    np.testing.assert_allclose(padded[0, :4], alone[0], atol=1e-5)
    np.testing.assert_allclose(
        apply(variables, batch, jnp.tile(targets, (2, 1)))[0],
        apply(variables, short, targets)[0],
        atol=1e-5,
    )


def test_decoder_is_causal():
    model, variables, apply = tiny_setup()
    x, y = tokens(7, (1, 5)), tokens(8, (1, 6))
    changed = y.at[0, 3].set(3 if y[0, 3] != 3 else 4)
    before, after = apply(variables, x, y), apply(variables, x, changed)
    # logits[t] predicts targets[t] from targets[:t]: positions <= 3 cannot see target 3.
    np.testing.assert_allclose(after[0, :4], before[0, :4], atol=1e-6)
    assert np.abs(after[0, 4:] - before[0, 4:]).max() > 1e-4


def test_shift_right():
    np.testing.assert_array_equal(shift_right(jnp.array([[5, 6, 2]]), BOS), [[BOS, 5, 6]])


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize('norm_position', ['post', 'pre'])
def test_trains_on_reversal(norm_position):
    """100 Adam steps on reversing 4 random tokens: the loss falls far below chance."""
    steps, batch, length = 100, 64, 4
    model = tiny(
        norm_position=norm_position, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1
    )
    inputs = jnp.asarray(
        np.random.default_rng(0).integers(3, 16, (steps, batch, length)), jnp.int32
    )
    targets = jnp.concatenate(
        [inputs[:, :, ::-1], jnp.full((steps, batch, 1), EOS, jnp.int32)], axis=2
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
    train = fast_jit(
        lambda params, keys: jax.lax.scan(
            step, (params, optimizer.init(params)), (inputs, targets, keys)
        )[1]
    )
    losses = np.asarray(train(params, jax.random.split(rng(2), steps)))
    assert np.all(np.isfinite(losses))
    assert losses[:5].mean() > 2.3  # chance is ln(13) ≈ 2.6 for the words, less for the eos
    assert losses[-10:].mean() < 0.3 * losses[:5].mean()


# --------------------------------------------------------------------------- cached decoding


@pytest.mark.parametrize(
    'overrides',
    [dict(), dict(norm_position='pre', posemb='learned', share_embeddings=False)],
    ids=['post_sinusoidal_tied', 'pre_learned_untied'],
)
def test_cached_steps_match_teacher_forcing(overrides):
    model, variables, apply = tiny_setup(**overrides)
    x = jnp.pad(tokens(9, (2, 5)), ((0, 0), (0, 2)), constant_values=PAD).at[1, 3:].set(PAD)
    y = tokens(10, (2, 6))
    full = apply(variables, x, y)
    step_fn, cache = make_step_fn(model, variables, x, max_length=6)
    step_fn = fast_jit(step_fn)
    decoder_inputs = shift_right(y, model.bos_id)
    for t in range(6):
        logits, cache = step_fn(decoder_inputs[:, t], cache)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-4, err_msg=f'step {t}')
    assert int(cache['decode_position']) == 6


def test_decode_needs_the_right_mode():
    model, variables, _ = tiny_setup()
    encoded = jnp.zeros((1, 3, 32))
    with pytest.raises(ValueError, match='decoding=True'):
        model.apply(
            variables,
            encoded,
            jnp.ones((1, 3), bool),
            jnp.array([BOS]),
            method=Transformer.decode_step,
        )
    decoder = model.clone(decoding=True)
    with pytest.raises(ValueError, match='decode_step'):
        decoder.apply(
            variables,
            encoded,
            jnp.ones((1, 3), bool),
            jnp.ones((1, 2), jnp.int32),
            method=Transformer.decode,
        )
    with pytest.raises(ValueError, match='init_cache'):
        decoder.apply(
            variables,
            encoded,
            jnp.ones((1, 3), bool),
            jnp.array([BOS]),
            method=Transformer.decode_step,
            mutable=['cache'],
        )


def test_greedy_equals_beam_of_one_on_the_model():
    model, variables, _ = tiny_setup()
    x = tokens(11, (3, 5))
    search = dict(batch_size=3, max_length=7, bos_id=BOS, eos_id=EOS, pad_id=PAD)

    @fast_jit
    def both(variables, x):
        step_fn, cache = make_step_fn(model, variables, x, max_length=7)
        greedy = decoding.greedy_search(step_fn, cache, **search)
        beam = decoding.beam_search(step_fn, cache, beam_size=1, alpha=0.6, **search)
        return greedy, beam

    (greedy, greedy_scores), (beam, beam_scores) = both(variables, x)
    np.testing.assert_array_equal(beam[:, 0], greedy)
    lengths = np.where((greedy == EOS).any(1), (greedy == EOS).argmax(1) + 1, 7)
    np.testing.assert_allclose(
        beam_scores[:, 0], greedy_scores / decoding.length_penalty(lengths, 0.6), rtol=1e-5
    )


def test_translate_returns_sorted_padded_beams():
    model, variables, _ = tiny_setup()
    x = tokens(12, (2, 5))
    sequences, scores = fast_jit(functools.partial(translate, model, beam_size=3, max_length=6))(
        variables, x
    )
    assert sequences.shape == (2, 3, 6) and scores.shape == (2, 3)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
    assert_pad_after_eos(np.asarray(sequences))


# --------------------------------------------------------------------- decoding on hand-made models


def assert_pad_after_eos(sequences: np.ndarray) -> None:
    for seq in sequences.reshape(-1, sequences.shape[-1]):
        ends = np.flatnonzero(seq == EOS)
        if ends.size:
            assert np.all(seq[ends[0] + 1 :] == PAD), seq


def markov_step_fn(table: jnp.ndarray):
    """step_fn of a model whose next-token log-probs are table[example, step, previous, current].

    The state carries each row's example and previous token (rows) and the step (a scalar),
    so the search must reorder the rows correctly and leave the scalar alone.
    """

    def step_fn(current, state):
        scores = table[state['example'], state['step'], state['previous'], current]
        return scores, {'example': state['example'], 'previous': current, 'step': state['step'] + 1}

    return step_fn


def markov_state(batch_size: int) -> dict:
    return {
        'example': jnp.arange(batch_size),
        'previous': jnp.full((batch_size,), BOS, jnp.int32),
        'step': jnp.array(0, jnp.int32),
    }


def random_markov_table(
    seed: int, batch_size: int, max_length: int, vocab_size: int = 5
) -> np.ndarray:
    logits = (
        np.random.default_rng(seed).normal(
            size=(batch_size, max_length, vocab_size, vocab_size, vocab_size)
        )
        * 1.5
    )
    logits[..., [PAD, BOS]] = -np.inf  # the model never emits pad or bos
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits)), np.float64)


def brute_force(
    table: np.ndarray, example: int, max_length: int, alpha: float
) -> list[tuple[float, tuple]]:
    """Every finished hypothesis (ends in eos, or reaches max_length) with its normalised score,
    best first."""
    words = [t for t in range(table.shape[-1]) if t not in (PAD, BOS, EOS)]
    found = [
        body + (EOS,)
        for length in range(1, max_length + 1)
        for body in itertools.product(words, repeat=length - 1)
    ]
    found += list(itertools.product(words, repeat=max_length))  # cut off at max_length
    ranked = []
    for seq in found:
        previous, current, log_prob = BOS, BOS, 0.0
        for step, token in enumerate(seq):
            log_prob += table[example, step, previous, current, token]
            previous, current = current, token
        ranked.append((log_prob / float(decoding.length_penalty(len(seq), alpha)), tuple(seq)))
    return sorted(ranked, reverse=True)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_wide_beam_search_is_exhaustive(alpha):
    """With a beam wider than the number of hypotheses, beam search ranks them all exactly."""
    batch_size, max_length, beam_size = 2, 4, 32  # 15 eos-terminated + 16 full-length hypotheses
    table = random_markov_table(0, batch_size, max_length)
    search = fast_jit(
        functools.partial(
            decoding.beam_search,
            markov_step_fn(jnp.asarray(table, jnp.float32)),
            batch_size=batch_size,
            beam_size=beam_size,
            max_length=max_length,
            bos_id=BOS,
            eos_id=EOS,
            pad_id=PAD,
            alpha=alpha,
        )
    )
    sequences, scores = search(markov_state(batch_size))
    for example in range(batch_size):
        expected = brute_force(table, example, max_length, alpha)
        assert len(expected) == 31
        got = [
            tuple(int(t) for t in seq if t != PAD) for seq in np.asarray(sequences[example, :31])
        ]
        assert got == [seq for _, seq in expected]
        np.testing.assert_allclose(
            scores[example, :31], [score for score, _ in expected], rtol=1e-5
        )
        assert scores[example, 31] == -np.inf  # no 32nd hypothesis exists
    assert_pad_after_eos(np.asarray(sequences))


def test_beam_search_finds_what_greedy_misses():
    """Greedy follows 'a' (p 0.5) into a long tail; beam 2 keeps 'b' and finds b-eos (p 0.36)."""
    a, b = 3, 4
    next_token = np.full((5, 5), 1e-9)
    next_token[BOS, [a, b, EOS]] = [0.5, 0.4, 0.1]
    next_token[a, [a, b, EOS]] = [0.36, 0.34, 0.30]
    next_token[b, [a, b, EOS]] = [0.05, 0.05, 0.90]
    next_token[[PAD, EOS]] = next_token[BOS]  # never reached
    table = np.log(next_token / next_token.sum(1, keepdims=True))

    def step_fn(current, state):
        return jnp.asarray(table, jnp.float32)[current], state

    search = dict(batch_size=1, max_length=5, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    greedy, _ = decoding.greedy_search(step_fn, (), **search)
    np.testing.assert_array_equal(greedy, [[a, a, a, a, a]])
    sequences, scores = jax.jit(
        functools.partial(decoding.beam_search, step_fn, beam_size=2, alpha=0.0, **search)
    )(())
    np.testing.assert_array_equal(sequences[0], [[b, EOS, PAD, PAD, PAD], [a, b, EOS, PAD, PAD]])
    np.testing.assert_allclose(scores[0], np.log([0.4 * 0.9, 0.5 * 0.34 * 0.9]), rtol=1e-5)
    # A strong enough length penalty, α > ln(ln 0.153 / ln 0.36) / ln(8 / 7) ≈ 4.6, prefers the
    # longer one.
    _, penalised = jax.jit(
        functools.partial(decoding.beam_search, step_fn, beam_size=2, alpha=8.0, **search)
    )(())
    assert penalised[0, 0] == pytest.approx(
        np.log(0.5 * 0.34 * 0.9) / ((5 + 3) / 6) ** 8.0, rel=1e-5
    )


def test_greedy_equals_beam_of_one_on_a_table():
    batch_size, max_length = 4, 6
    table = jnp.asarray(random_markov_table(1, batch_size, max_length), jnp.float32)
    search = dict(batch_size=batch_size, max_length=max_length, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    greedy, greedy_scores = decoding.greedy_search(
        markov_step_fn(table), markov_state(batch_size), **search
    )
    beam, beam_scores = decoding.beam_search(
        markov_step_fn(table), markov_state(batch_size), beam_size=1, alpha=0.0, **search
    )
    np.testing.assert_array_equal(beam[:, 0], greedy)
    np.testing.assert_allclose(beam_scores[:, 0], greedy_scores, rtol=1e-5)
    assert (np.asarray(greedy) == EOS).any()  # the table does end some sequences early
    assert_pad_after_eos(np.asarray(greedy))


def test_gather_beams_reorders_rows_and_keeps_scalars():
    state = {'rows': jnp.arange(6) * 10, 'index': jnp.array(7)}
    parents = jnp.array([[2, 2, 0], [1, 0, 0]])
    out = decoding.gather_beams(state, parents)
    np.testing.assert_array_equal(out['rows'], [20, 20, 0, 40, 30, 30])
    assert int(out['index']) == 7
    np.testing.assert_array_equal(
        decoding.expand_to_beams(jnp.array([5, 6]), 3), [5, 5, 5, 6, 6, 6]
    )
    with pytest.raises(ValueError, match='batch \\* beam_size = 6'):
        decoding.gather_beams({'wrong': jnp.zeros((4, 2))}, parents)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    'field, value, fragment',
    [
        ('norm_position', 'middle', "['post', 'pre']"),
        ('posemb', 'rotary', "['learned', 'none', 'sinusoidal']"),
        ('attention_implementation', 'flash', "'cudnn'"),
        ('activation', 'relu6', "'gelu'"),
    ],
)
def test_invalid_choices_name_valid_ones(field, value, fragment):
    with pytest.raises(ValueError, match=repr(value)) as error:
        nets.create('transformer_tiny', **{field: value})
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    'overrides, fragment',
    [
        (dict(hidden_size=30, num_heads=4), 'not divisible'),
        (dict(eos_id=0), 'eos_id and pad_id must differ'),
        (dict(bos_id=300), 'outside the vocabulary'),
        (dict(dropout_rate=1.0), 'dropout_rate'),
        (dict(num_heads=0), 'must be positive'),
    ],
)
def test_invalid_values_raise(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        nets.create('transformer_tiny', **overrides)


def test_other_invalid_uses_raise():
    with pytest.raises(ValueError, match="valid choices: \\['post', 'pre'\\]"):
        DecoderBlock(num_heads=2, mlp_dim=8, norm_position='sandwich')
    model, variables, _ = tiny_setup()
    with pytest.raises(ValueError, match='int token ids'):
        model.apply(variables, jnp.zeros((1, 3)), jnp.zeros((1, 3), jnp.int32))
    learned = tiny(posemb='learned', max_length=4)
    with pytest.raises(ValueError, match='exceeds max_length 4'):
        jax.eval_shape(
            learned.init,
            jax.random.key(0),
            jnp.ones((1, 5), jnp.int32),
            jnp.ones((1, 3), jnp.int32),
        )
    step_fn = lambda tokens, state: (jnp.zeros((tokens.shape[0], 5)), state)  # noqa: E731
    with pytest.raises(ValueError, match='alpha'):
        decoding.beam_search(
            step_fn, (), batch_size=1, beam_size=2, max_length=3, bos_id=BOS, eos_id=EOS, alpha=-1.0
        )
    with pytest.raises(ValueError, match='beam_size'):
        decoding.beam_search(
            step_fn, (), batch_size=1, beam_size=0, max_length=3, bos_id=BOS, eos_id=EOS
        )
