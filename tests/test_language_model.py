"""Character-level language modelling end to end: the models (shapes, parameter counts,
causality), sampling (greedy = argmax of the full forward pass, for the RNN's carried state and
the Transformer's recomputed, sliding window), the task's masked loss and bits per character,
the stream loader (order, resets, checkpoint/restore), the truncated-BPTT carry hand-off, and a
tiny truncated-BPTT `train_and_evaluate` run on the real char_corpus (prepared in well under a
second), its outputs and its exact resumption."""

import json
import math
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data
import nets
from data import pipeline
from data.prepare import prepare
from data.tokenizers import PAD_ID
from nets.models.language_model import sample
from tests.nets_harness import fast_jit, rng
from train import loop
from train.checkpointing import load_checkpoint
from train.config import ConfigError, default_config, model_config, validate
from train.tasks import create_task
from train.tasks.language_model import (
    CARRY_COLLECTION,
    LanguageModelTask,
    carry_to_state,
    masked_token_sums,
    state_to_carry,
)

VOCAB = 11
TINY = {
    'char_rnn': dict(embed_dim=6, hidden_size=8),
    'char_lstm': dict(embed_dim=6, hidden_size=8),
    'char_gru': dict(embed_dim=6, hidden_size=8, num_layers=2),
    'char_transformer': dict(hidden_size=8, num_heads=2, mlp_dim=16, num_layers=2, max_length=32),
}


def tiny_model(name: str, **overrides) -> nn.Module:
    return nets.create(name, num_classes=VOCAB, **{**TINY[name], **overrides})


def random_tokens(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, VOCAB, shape).astype(np.int32)


def init(model: nn.Module, tokens: np.ndarray) -> dict:
    return fast_jit(model.init)(rng(0), tokens)


@pytest.fixture(scope='module')
def char_corpus_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('tfds')
    prepare(['char_corpus'], str(data_dir))
    return str(data_dir)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize('name', sorted(TINY))
def test_logits_shape_and_dtype(name):
    tokens = random_tokens((2, 16))
    model = tiny_model(name)
    logits = fast_jit(model.apply)(init(model, tokens), tokens)
    assert logits.shape == (2, 16, VOCAB) and logits.dtype == jnp.float32


def test_registered_variants_have_similar_parameter_counts():
    """The formulas of the docstrings, at char_corpus's 107-character vocabulary."""
    v, d = 107, 64
    recurrent = {'char_rnn': (1, 448), 'char_lstm': (4, 224), 'char_gru': (3, 256)}
    counts = {}
    for name, (gates, h) in recurrent.items():
        counts[name] = nets.count_params(
            nets.create(name, num_classes=v), (1, 256), input_dtype=jnp.int32
        )
        assert counts[name] == v * d + gates * (d * h + h * h + h) + h * v + v
    h, f, layers = 128, 256, 2
    counts['char_transformer'] = nets.count_params(
        nets.create('char_transformer', num_classes=v), (1, 256), input_dtype=jnp.int32
    )
    assert counts['char_transformer'] == (
        layers * (4 * h * h + 2 * h * f + f + 9 * h) + v * h + 2 * h + h * v + v
    )
    assert max(counts.values()) / min(counts.values()) < 1.1


def test_tied_embeddings_drop_the_head_and_check_widths():
    model = tiny_model('char_lstm', embed_dim=8, tie_embeddings=True)
    assert 'head' not in init(model, random_tokens((1, 4)))['params']
    with pytest.raises(ValueError, match='hidden_size == embed_dim'):
        tiny_model('char_lstm', tie_embeddings=True)


@pytest.mark.parametrize('name', ['char_transformer', 'char_lstm'])
def test_changing_token_t_changes_no_earlier_logits(name):
    model = tiny_model(name)
    tokens = random_tokens((1, 12))
    variables = init(model, tokens)
    apply = fast_jit(model.apply)
    changed = tokens.copy()
    t = 7
    changed[0, t] = 4 if tokens[0, t] != 4 else 5
    before, after = np.asarray(apply(variables, tokens)), np.asarray(apply(variables, changed))
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t:], after[:, t:])


def test_transformer_rejects_sequences_past_max_length():
    model = tiny_model('char_transformer', max_length=8)
    with pytest.raises(ValueError, match='exceeds max_length 8'):
        model.init(rng(0), random_tokens((1, 9)))


def test_recurrent_carry_continues_a_sequence_exactly():
    """Two halves with the carry handed over = the whole sequence at once (what TBPTT and
    sampling rely on)."""
    model = tiny_model('char_gru')
    tokens = random_tokens((2, 12))
    variables = init(model, tokens)
    apply = fast_jit(
        lambda x, carry: model.apply(variables, x, initial_carry=carry, return_carry=True)
    )
    _, whole = apply(tokens, model.initial_carry(2))
    carry, first = apply(tokens[:, :5], model.initial_carry(2))
    _, second = apply(tokens[:, 5:], carry)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    'name,prompt_length,length',
    [
        ('char_lstm', 5, 12),
        ('char_rnn', 1, 6),
        ('char_transformer', 5, 12),
        ('char_transformer', 3, 10),  # 13 tokens > max_length 8: the window slides
    ],
)
def test_greedy_sample_is_argmax_of_the_full_forward_pass(name, prompt_length, length):
    overrides = {'max_length': 8} if prompt_length + length == 13 else {}
    model = tiny_model(name, **overrides)
    prompt = random_tokens((2, prompt_length), seed=1)
    variables = init(model, prompt)
    generated = np.asarray(
        fast_jit(lambda v, p: sample(model, v, p, length=length, temperature=0.0))(
            variables, prompt
        )
    )
    assert generated.shape == (2, length) and generated.dtype == np.int32
    sequence = np.concatenate([prompt, generated], axis=1)
    window = min(getattr(model, 'max_length', sequence.shape[1]), sequence.shape[1])
    apply = fast_jit(model.apply)
    for at in range(prompt_length, sequence.shape[1]):
        # The newest `window` tokens before `at` (later ones are hidden by causality).
        start = max(0, at - window)
        logits = apply(variables, sequence[:, start : start + window])
        np.testing.assert_array_equal(np.argmax(logits[:, at - 1 - start], -1), sequence[:, at])


def test_sampling_at_a_temperature_is_reproducible_and_needs_a_key():
    model = tiny_model('char_lstm')
    prompt = random_tokens((3, 2))
    variables = init(model, prompt)
    draw = fast_jit(
        lambda key: sample(model, variables, prompt, length=20, temperature=1.0, rng=key)
    )
    a, b, c = draw(jax.random.key(1)), draw(jax.random.key(1)), draw(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and np.all((np.asarray(a) >= 0) & (np.asarray(a) < VOCAB))
    with pytest.raises(ValueError, match='needs an rng'):
        sample(model, variables, prompt, length=3, temperature=0.5)


# ----------------------------------------------------------------------------- loss and metrics


class FixedLogits(nn.Module):
    """A parameter-light stand-in model whose logits depend only on the input token."""

    num_classes: int = VOCAB

    @nn.compact
    def __call__(self, tokens, *, train=False):
        table = self.param(
            'table', nn.initializers.normal(1.0), (self.num_classes, self.num_classes)
        )
        return table[tokens]


def char_info(length: int) -> data.DatasetInfo:
    names = ('<pad>', '<bos>', '<eos>', '<unk>') + tuple('abcdefg')
    return data.DatasetInfo(
        name='chars',
        num_classes=VOCAB,
        class_names=names,
        example_shape=(length,),
        image_dtype='int32',
        splits={'train': 1},
        mean=(),
        std=(),
    )


def test_bits_per_character_is_loss_over_ln2_on_hand_made_logits():
    # Row 0: uniform over 8 classes (-log2 1/8 = 3 bits); row 1: the target, id 4, has p = 1/2
    # (1 bit). Mean: 2 bits per character, loss 2 ln 2 nats.
    logits = np.zeros((2, 1, 8), np.float32)
    logits[1, 0] = np.log([1 / 32] * 4 + [1 / 2, 1 / 8, 1 / 8, 1 / 8])
    targets = np.array([[5], [4]], np.int32)
    task = LanguageModelTask(FixedLogits(), char_info(1))
    sums = jax.tree.map(np.asarray, masked_token_sums(jnp.asarray(logits), jnp.asarray(targets)))
    metrics = task.summarize(sums)
    assert metrics['bits_per_character'] == pytest.approx(2.0, rel=1e-6)
    assert metrics['loss'] == pytest.approx(2.0 * math.log(2), rel=1e-6)
    assert metrics['perplexity'] == pytest.approx(4.0, rel=1e-5)
    assert metrics['tokens'] == 2 and metrics['accuracy'] == 0.5  # row 0's argmax is class 0


def test_masked_loss_ignores_padding():
    task = LanguageModelTask(FixedLogits(), char_info(6))
    params = task.init_variables(rng(0))['params']
    inputs = random_tokens((2, 6))
    targets = random_tokens((2, 6), seed=1)
    targets[0, 4:] = PAD_ID
    targets[1, 2:] = PAD_ID
    batch = {'inputs': inputs, 'targets': targets, 'mask': np.array([True, True])}
    loss, _ = task.train_loss(params, {}, batch, rng(1))
    # Whatever the inputs are at padded positions, the loss is the mean over the 6 real tokens.
    scribbled = dict(batch, inputs=np.where(targets == PAD_ID, 5, inputs))
    assert task.train_loss(params, {}, scribbled, rng(1))[0] == pytest.approx(float(loss), rel=1e-6)
    log_probs = np.asarray(jax.nn.log_softmax(params['table'][inputs]))
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(nll[targets != PAD_ID].mean(), rel=1e-5)
    sums = task.eval_sums(params, {}, dict(batch, mask=np.array([True, False])))
    assert float(sums['tokens']) == 4  # a padding row (mask False) counts nothing
    np.testing.assert_array_equal(sums['position_tokens'], [1, 1, 1, 1, 0, 0])


# ----------------------------------------------------------------------------- stream loader


def test_stream_loader_rows_continue_their_streams_and_reset_each_epoch():
    source = pipeline.InMemorySource(inputs=np.arange(23)[:, None], targets=np.arange(23)[:, None])
    loader = pipeline.stream_loader(source, global_batch_size=4, seed=3, num_epochs=3)
    batches = list(loader)
    assert len(batches) == 3 * 5  # 4 streams of 23 // 4 = 5 records; 3 records spare per epoch
    for epoch in range(3):
        epoch_batches = batches[5 * epoch : 5 * (epoch + 1)]
        rows = np.stack([b['inputs'][:, 0] for b in epoch_batches], axis=1)  # (stream, step)
        start = rows[0, 0]
        assert 0 <= start <= 3
        np.testing.assert_array_equal(rows, start + np.arange(20).reshape(4, 5))
        assert [bool(b['reset'].all()) for b in epoch_batches] == [True] + [False] * 4
        assert all(b['reset'].shape == (4,) for b in epoch_batches)
    # Each process reads its own rows of every global batch.
    shard = list(
        pipeline.stream_loader(
            source, global_batch_size=4, seed=3, num_epochs=1, process_index=1, process_count=2
        )
    )
    np.testing.assert_array_equal(shard[2]['inputs'], batches[2]['inputs'][2:])


def test_stream_loader_restores_its_position_from_a_checkpoint():
    source = pipeline.InMemorySource(inputs=np.arange(50)[:, None], targets=np.arange(50)[:, None])
    iterator = iter(pipeline.stream_loader(source, global_batch_size=4, seed=1))
    for _ in range(14):  # crosses an epoch boundary (12 steps per epoch)
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(12)]
    restored = iter(pipeline.stream_loader(source, global_batch_size=4, seed=1))
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for key in ('inputs', 'reset'):
            np.testing.assert_array_equal(got[key], want[key])


# ----------------------------------------------------------------------------- truncated BPTT


def test_tbptt_hands_each_steps_final_carry_to_the_next_step():
    model = tiny_model('char_lstm')
    task = LanguageModelTask(model, char_info(6), carried_streams=2)
    variables = task.init_variables(rng(0))
    params, model_state = variables.pop('params'), variables
    zero = model.initial_carry(2)
    np.testing.assert_array_equal(
        jax.tree.leaves(state_to_carry(model_state[CARRY_COLLECTION], zero)), jax.tree.leaves(zero)
    )
    loss_fn = fast_jit(task.train_loss)
    read = fast_jit(
        lambda x, carry: model.apply({'params': params}, x, initial_carry=carry, return_carry=True)
    )
    stream = random_tokens((2, 13))
    first = {'inputs': stream[:, :6], 'targets': stream[:, 1:7], 'reset': np.array([True, True])}
    second = {
        'inputs': stream[:, 6:12],
        'targets': stream[:, 7:13],
        'reset': np.array([False, False]),
    }
    _, (state1, _) = loss_fn(params, model_state, first, rng(1))
    # Step 1's final carry is what the model reaches after reading the first chunk from zeros.
    expected_carry, _ = read(first['inputs'], zero)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        state_to_carry(state1[CARRY_COLLECTION], zero),
        expected_carry,
    )
    # Step 2 starts from it: its loss is that of the second chunk read with the carry ...
    loss2, (state2, _) = loss_fn(params, state1, second, rng(2))
    _, logits = read(second['inputs'], expected_carry)
    carried_loss = float(
        np.mean(
            -np.take_along_axis(
                np.asarray(jax.nn.log_softmax(logits)), second['targets'][..., None], -1
            )
        )
    )
    assert float(loss2) == pytest.approx(carried_loss, rel=1e-5)
    # ... which is the second half of reading the whole stream at once ...
    _, whole = read(stream[:, :12], zero)
    np.testing.assert_allclose(logits, whole[:, 6:], rtol=1e-5, atol=1e-6)
    # ... and a reset row starts from zeros again.
    loss_reset, _ = loss_fn(params, state1, dict(second, reset=np.array([True, True])), rng(2))
    loss_fresh, _ = loss_fn(params, model_state, dict(second, reset=np.array([True, True])), rng(2))
    assert float(loss_reset) == float(loss_fresh) != pytest.approx(float(loss2))
    assert jax.tree.structure(state2) == jax.tree.structure(state1)


def test_carry_state_round_trip_keeps_lstm_structure():
    carry = tiny_model('char_lstm', num_layers=2).initial_carry(3)
    state = carry_to_state(carry)
    assert sorted(state) == ['0', '1', '2', '3']
    assert jax.tree.structure(state_to_carry(state, carry)) == jax.tree.structure(carry)


def test_streams_need_a_recurrent_language_model():
    config = default_config()
    config.dataset.order = 'streams'
    with pytest.raises(ConfigError, match="needs config.task='language_model'"):
        validate(config)
    config.dataset.order = 'sorted'
    with pytest.raises(ConfigError, match="'sorted'.*'streams'"):
        validate(config)
    with pytest.raises(ValueError, match='TransformerLM has none'):
        create_task(
            'language_model',
            model=tiny_model('char_transformer'),
            info=char_info(6),
            carried_streams=4,
        )


# ----------------------------------------------------------------------------- end to end


def lm_config(data_dir: str, name: str, **changes):
    config = default_config()
    config.task = 'language_model'
    config.dataset.name = 'char_corpus'
    config.dataset.data_dir = data_dir
    config.dataset.eval_split = 'validation'
    config.model = model_config(name, **TINY[name])
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_steps = 4
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-3
    config.optimizer.grad_clip_norm = 1.0
    config.schedule.name = 'constant'
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    for key, value in changes.items():
        block, _, leaf = key.rpartition('.')
        (config[block] if block else config)[leaf] = value
    return config


def test_tbptt_training_writes_samples_and_resumes_with_its_carry(char_corpus_dir, tmp_path):
    config = lm_config(char_corpus_dir, 'char_lstm', **{'dataset.order': 'streams'})
    straight = tmp_path / 'straight'
    summary = loop.train_and_evaluate(config, straight)
    info = data.dataset_info('char_corpus', char_corpus_dir)
    assert summary['step'] == 4 and summary['eval']['tokens'] == info.splits['validation'] * 256
    assert summary['eval']['bits_per_character'] == pytest.approx(
        summary['eval']['loss'] / math.log(2)
    )
    assert summary['eval']['bits_per_character'] < math.log2(info.num_classes) + 0.5
    samples = (straight / 'samples.txt').read_text(encoding='utf-8')
    assert (
        samples.startswith("[greedy, prompt 'The ']\nThe ") and samples.count('[temperature') == 3
    )
    assert (straight / 'pictures' / 'loss_by_position.png').read_bytes()[:4] == b'\x89PNG'
    assert json.loads((straight / 'summary.json').read_text())['samples'] == [
        str(straight / 'samples.txt')
    ]
    # The same run interrupted after step 2 (its step-4 checkpoint removed) and rerun: the
    # carried state (in model_state) and the stream position come back exactly.
    interrupted = tmp_path / 'interrupted'
    shutil.copytree(straight, interrupted)
    shutil.rmtree(interrupted / 'checkpoints' / '4')
    (interrupted / 'samples.txt').unlink()
    config.pictures = False
    assert loop.train_and_evaluate(config, interrupted)['step'] == 4
    assert not (interrupted / 'samples.txt').exists()  # samples come with the pictures
    finals = [load_checkpoint(run / 'checkpoints') for run in (straight, interrupted)]
    for part in ('params', 'model_state'):  # model_state holds the carry
        jax.tree.map(np.testing.assert_array_equal, finals[0][part], finals[1][part])
