"""The seq2seq and captioning tasks: masked loss, exact match, BLEU, attention read-outs, and tiny
end-to-end runs on small real data (addition, digit_captions) that write their metrics and
pictures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from data import DatasetInfo, catalog
from data.tokenizers import CharVocabulary, WordVocabulary
from train import loop
from train.config import default_config, model_config, validate
from train.tasks import create_task
from train.tasks.captioning import CaptioningTask, attention_slot_hits
from train.tasks.seq2seq import (
    Seq2SeqTask,
    attention_weights,
    bleu_tokenizer,
    corpus_bleu,
    exact_match,
    generate,
    has_attention,
    token_sums,
)

SMALL_ADDITION = {'num_train': 600, 'num_test': 64}
SMALL_CAPTIONS = {'num_train': 128, 'num_test': 32}
TINY_SEQ2SEQ = dict(embed_dim=8, hidden_size=16, attention_dim=8, readout_size=8)
TINY_TRANSFORMER = dict(
    hidden_size=16,
    num_heads=2,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=2,
    max_length=16,
)
VOCAB = 12


def token_info(source_length: int = 6, vocab: int = VOCAB) -> DatasetInfo:
    names = ('<pad>', '<bos>', '<eos>', '<unk>', *(f'w{i}' for i in range(vocab - 4)))
    return DatasetInfo(
        name='fake',
        num_classes=vocab,
        class_names=names,
        example_shape=(source_length,),
        image_dtype='int32',
        splits={},
        mean=(),
        std=(),
        vocab_sizes={'inputs': vocab, 'targets': vocab},
    )


@pytest.fixture(scope='module')
def small_data_dir(tmp_path_factory):
    """addition and digit_captions at test sizes (data.prepare writes the full sizes)."""
    directory = tmp_path_factory.mktemp('tfds_seq2seq')
    for name, sizes in (('addition', SMALL_ADDITION), ('digit_captions', SMALL_CAPTIONS)):
        catalog.get_builder(name, directory, **sizes).download_and_prepare()
    return str(directory)


# ----------------------------------------------------------------------------- metrics


def test_loss_masks_padding():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, VOCAB)), jnp.float32)
    targets = jnp.asarray([[5, 6, 2, 0], [7, 2, 0, 0]], jnp.int32)
    sums = token_sums(logits, targets)
    assert int(sums['tokens']) == 5
    # Whatever the model says at padded positions (even inf) changes nothing.
    spoiled = logits.at[0, 3].set(jnp.inf).at[1, 2:].set(-1e9)
    assert float(token_sums(spoiled, targets)['nll_sum']) == pytest.approx(float(sums['nll_sum']))
    # A masked-out row does not count at all.
    masked = token_sums(logits, targets, row_mask=jnp.asarray([True, False]))
    assert int(masked['tokens']) == 3


def test_train_loss_ignores_trailing_padding_of_the_targets():
    """Teacher forcing reads targets[:t] only, and the mean runs over real tokens: more pad
    columns leave the loss unchanged."""
    task = Seq2SeqTask(
        nets.create(
            'seq2seq_context', source_vocab_size=VOCAB, target_vocab_size=VOCAB, **TINY_SEQ2SEQ
        ),
        token_info(),
    )
    params = jax.jit(task.init_variables)(jax.random.key(0))['params']
    train_loss = jax.jit(task.train_loss)  # eager Flax scans are slow
    inputs = jnp.asarray([[5, 6, 7, 2, 0, 0], [8, 2, 0, 0, 0, 0]], jnp.int32)
    targets = jnp.asarray([[9, 10, 2], [4, 2, 0]], jnp.int32)
    loss, (_, metrics) = train_loss(
        params, {}, {'inputs': inputs, 'targets': targets}, jax.random.key(1)
    )
    longer = jnp.pad(targets, ((0, 0), (0, 4)))
    loss_longer, _ = train_loss(
        params, {}, {'inputs': inputs, 'targets': longer}, jax.random.key(1)
    )
    assert float(loss) == pytest.approx(float(loss_longer), rel=1e-5)
    assert 0.0 <= float(metrics['accuracy']) <= 1.0


def test_exact_match_compares_through_the_target_eos():
    targets = np.array([[5, 6, 2, 0, 0]] * 5)
    generated = np.array(
        [
            [5, 6, 2, 0, 0],  # identical
            [5, 6, 2, 7, 7],  # anything after the target's eos is ignored
            [5, 2, 0, 0, 0],  # stopped early
            [5, 6, 6, 2, 0],  # went on past the eos
            [5, 7, 2, 0, 0],
        ]
    )  # a wrong token
    assert np.asarray(exact_match(generated, targets)).tolist() == [True, True, False, False, False]


def test_bleu_of_hand_made_corpora():
    text = ['y dijo dios : sea la luz .', 'en el principio era el verbo .']
    assert corpus_bleu(text, text) == pytest.approx(100.0)
    # Case-insensitive, and sacrebleu's own tokenization of the detokenized reference.
    assert corpus_bleu(['y dijo dios: sea la luz.'], ['Y dijo Dios: Sea la luz.']) == pytest.approx(
        100.0
    )
    assert corpus_bleu(['a b c d e'], ['v w x y z']) == 0.0
    partial = corpus_bleu(['y dijo dios : sea la luz .'], ['y dijo dios : sea la tierra .'])
    assert 0.0 < partial < 100.0
    # Character vocabularies are scored on characters: one wrong digit costs, not everything.
    assert bleu_tokenizer(CharVocabulary('0123456789+')) == 'char'
    assert bleu_tokenizer(WordVocabulary(['luz'])) == '13a'
    assert 0.0 < corpus_bleu(['1378', '12'], ['1378', '13'], tokenize='char') < 100.0
    with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
        corpus_bleu(['a', 'b'], ['a'])


def test_shorten_drops_pairs_that_do_not_fit():
    task = Seq2SeqTask(
        nets.create(
            'seq2seq_context', source_vocab_size=VOCAB, target_vocab_size=VOCAB, **TINY_SEQ2SEQ
        ),
        token_info(),
        max_train_length=3,
    )
    inputs = jnp.asarray([[5, 6, 2, 0, 0, 0], [5, 6, 7, 8, 2, 0]], jnp.int32)
    targets = jnp.asarray([[9, 2, 0, 0], [9, 2, 0, 0]], jnp.int32)
    short_inputs, short_targets = task.shorten(inputs, targets)
    assert short_inputs.shape == (2, 3)
    assert np.asarray(short_targets).tolist() == [
        [9, 2, 0],
        [0, 0, 0],
    ]  # row 1's source is too long


def test_attention_slot_hits_follow_the_filled_slots():
    maps = np.zeros((3, 2, 8))  # 3 words on a 2 x 8 grid: 4 slots of 2 columns
    maps[0, :, 0:2] = 1.0  # word 0 looks at slot 0
    maps[1, :, 4:6] = 1.0  # word 1 looks at slot 2
    maps[2, :, 0:2] = 1.0  # eos: not a word
    hits = attention_slot_hits(maps, np.array([3, -1, 7, -1]), num_words=2)
    assert hits.tolist() == [True, True]
    assert attention_slot_hits(maps, np.array([-1, 3, 7, -1]), num_words=2).tolist() == [
        False,
        True,
    ]


@pytest.mark.parametrize(
    'name,beam_size', [('seq2seq_context', 1), ('seq2seq_attention', 2), ('transformer_tiny', 1)]
)
def test_generation_and_attention_for_every_model_form(name, beam_size):
    overrides = (
        TINY_TRANSFORMER
        if name == 'transformer_tiny'
        else dict(source_vocab_size=VOCAB, target_vocab_size=VOCAB, **TINY_SEQ2SEQ)
    )
    model = nets.create(
        name, **({'vocab_size': VOCAB} if name == 'transformer_tiny' else {}), **overrides
    )
    task = Seq2SeqTask(model, token_info())
    variables = jax.jit(task.init_variables)(jax.random.key(0))
    inputs = jnp.asarray([[5, 6, 7, 2, 0, 0], [8, 2, 0, 0, 0, 0]], jnp.int32)
    generated = jax.jit(generate, static_argnums=0, static_argnames=('max_length', 'beam_size'))(
        model, variables, inputs, max_length=5, beam_size=beam_size
    )
    assert generated.shape == (2, 5) and generated.dtype == jnp.int32
    assert has_attention(model) == (name != 'seq2seq_context')
    if has_attention(model):
        weights = jax.jit(attention_weights, static_argnums=0)(model, variables, inputs, generated)
        assert weights.shape == (2, 5, 6)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
        assert float(jnp.max(weights[1, :, 2:])) < 1e-6  # padded source positions get nothing


def test_invalid_task_options_are_rejected():
    model = nets.create(
        'seq2seq_context', source_vocab_size=VOCAB, target_vocab_size=VOCAB, **TINY_SEQ2SEQ
    )
    with pytest.raises(ValueError, match='beam_size must be >= 1'):
        create_task('seq2seq', model=model, info=token_info(), beam_size=0)
    with pytest.raises(ValueError, match='needs .S,. int token ids'):
        Seq2SeqTask(model, DatasetInfo('img', 10, (), (8, 8, 1), 'uint8', {}, (0.5,), (0.2,)))


# ----------------------------------------------------------------------------- end to end


def tiny_run_config(data_dir: str, task: str):
    config = default_config()
    config.task = task
    config.dataset.data_dir = data_dir
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_steps = 6
    config.log_every_steps = 3
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 6
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-3
    config.optimizer.grad_clip_norm = 1.0
    config[task].final_eval_examples = 32
    return config


def test_addition_run_writes_exact_match_bleu_and_alignments(small_data_dir, tmp_path):
    config = tiny_run_config(small_data_dir, 'seq2seq')
    config.dataset.name = 'addition'
    config.model = model_config('seq2seq_attention', **TINY_SEQ2SEQ)
    summary = loop.train_and_evaluate(config, tmp_path)
    written = json.loads((tmp_path / 'summary.json').read_text())
    assert written['eval'] == summary['eval']
    evaluation = written['eval']
    assert evaluation['examples'] == SMALL_ADDITION['num_test']
    assert 0.0 <= evaluation['exact_match'] <= 1.0 and 0.0 <= evaluation['bleu'] <= 100.0
    assert evaluation['bleu_examples'] == 32 and np.isfinite(evaluation['perplexity'])
    pictures = tmp_path / 'pictures'
    assert (pictures / 'alignment_0.png').stat().st_size > 0
    samples = (pictures / 'samples.txt').read_text()
    assert 'source:' in samples and 'reference:' in samples and 'output:' in samples
    kinds = [
        json.loads(line)['kind'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()
    ]
    assert 'final_eval' in kinds


def test_captioning_run_writes_per_word_attention(small_data_dir, tmp_path):
    config = tiny_run_config(small_data_dir, 'captioning')
    config.dataset.name = 'digit_captions'
    config.model = model_config(
        'show_attend_tell',
        channels=(4, 8),
        convs_per_stage=1,
        embed_dim=8,
        hidden_size=16,
        attention_dim=8,
    )
    summary = loop.train_and_evaluate(config, tmp_path)
    evaluation = summary['eval']
    assert evaluation['examples'] == SMALL_CAPTIONS['num_test']
    assert 0.0 <= evaluation['exact_match'] <= 1.0 and evaluation['attention_penalty'] > 0.0
    assert (tmp_path / 'pictures' / 'caption_attention.png').stat().st_size > 0


def test_captioning_penalty_weight_enters_the_loss(small_data_dir):
    info = catalog.dataset_info('digit_captions', small_data_dir)
    model = nets.create(
        'show_attend_tell',
        vocab_size=info.num_classes,
        channels=(4, 8),
        convs_per_stage=1,
        embed_dim=8,
        hidden_size=16,
        attention_dim=8,
    )
    batch = {
        'image': jnp.zeros((2, *info.example_shape), jnp.uint8),
        'targets': jnp.asarray([[5, 6, 2, 0, 0], [7, 2, 0, 0, 0]], jnp.int32),
    }
    task = CaptioningTask(model, info, attention_penalty=0.5)
    variables = dict(jax.jit(task.init_variables)(jax.random.key(0)))
    params = variables.pop('params')
    variables.pop('intermediates', None)
    loss, (_, metrics) = jax.jit(task.train_loss)(params, variables, batch, jax.random.key(1))
    # (Σ CE + λ Σ_b penalty_b) / N, N = 5 target tokens in the 2 captions; the logged loss is
    # the cross-entropy alone and the logged penalty the mean per caption.
    expected = float(metrics['loss']) + 0.5 * 2 * float(metrics['attention_penalty']) / 5
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics['attention_penalty']) > 0.0


def test_translation_comparison_rows_and_separation(small_data_dir, tmp_path):
    from experiments import translation
    from experiments.sweeps import translation_comparison as comparison

    assert set(comparison.DEFAULT_MODELS) < set(translation.MODELS)
    for model in translation.MODELS:
        config = comparison.run_config(model, seed=3, num_steps=1500)
        validate(config)
        assert (config.num_steps, config.seed, config.eval_every_steps) == (1500, 3, 1500)
    config = tiny_run_config(small_data_dir, 'seq2seq')
    config.dataset.name = 'addition'
    config.model = model_config('seq2seq_context', **TINY_SEQ2SEQ)
    row = comparison.measure('context', 0, config, tmp_path / 'context_seed0')
    assert row['steps'] == config.num_steps and 0.0 <= row['bleu'] <= 100.0
    # Seeds' BLEU: attention's worst (2.0) beats context's best (1.5); one transformer seed
    # cannot show a separation.
    bleus = [('context', 1.0), ('context', 1.5), ('attention', 3.0), ('attention', 2.0)]
    rows = [dict(row, model=m, seed=i % 2, bleu=b) for i, (m, b) in enumerate(bleus)]
    rows.append(dict(row, model='transformer', seed=0, bleu=9.0))
    pairs = {(p['better'], p['worse']): p for p in comparison.separation(rows)}
    assert pairs['attention', 'context']['separated']
    assert pairs['attention', 'context']['gap'] == pytest.approx(0.5)
    assert not pairs['transformer', 'attention']['separated']
    assert not pairs['transformer', 'context']['separated']
    rows[1]['bleu'] = 2.5  # now the seeds overlap
    assert not comparison.separation(rows)[0]['separated']
    comparison.write_table(rows, tmp_path)
    table = (tmp_path / 'results.md').read_text()
    assert '- attention over context: not separated' in table and '| 2.50 |' in table
