"""Sequence to sequence: translation and addition with the recurrent encoder-decoders
(`nets.models.seq2seq`, forms 'context' and 'attention') and the Transformer
(`nets.models.transformer`).

The batch holds `inputs` (batch, S) source ids and `targets` (batch, T) target ids (eos,
then pad; no bos: the models shift them right behind bos themselves). Training is teacher
forcing; the loss is the mean negative log-likelihood over the non-padding target tokens
(eos included):

    J = -(1 / N) Σ_{b,t: y_bt ≠ pad} log ŷ_bt[y_bt]

Optionally (`max_train_length` L > 0) training sees only the pairs whose source and target
fit in L tokens, cut to L positions: on a CPU, translation's 64-token padding is mostly
wasted (verses average ~29 tokens) and the scans cost per position. Evaluation always uses
the full length.

Evaluation has two parts, because the loop's evaluation must be jittable and additive:

1. Every evaluation (`eval_sums`, jitted, summed over batches): the teacher-forced loss,
   perplexity exp(J) and token accuracy, and EXACT MATCH: each source is decoded by greedy
   search (or beam search, `beam_size` > 1) up to the target length, and a sequence counts
   when every token through the target's eos equals the target.
2. Once, at the end of a run (`final_eval`, called by the loop on the host with the raw eval
   split, strings included): the first `final_eval_examples` sources are decoded again and
   scored by BLEU (sacrebleu's corpus BLEU on detokenized text). BLEU needs strings and
   corpus-level n-gram counts, neither of which an additive jitted sum can carry. The
   hypotheses are the generated ids decoded with the target vocabulary (lower-cased words
   joined by `WordVocabulary.join`); `bleu` compares them with the data set's raw
   `target_text` (case-insensitive: the vocabularies are lower-cased), so words outside the
   vocabulary, which the model can only write as <unk>, count as errors. For reference,
   `bleu_decoded_reference` compares them with the reference ids decoded by the same
   vocabulary: rare words read <unk> there too, and an output <unk> matches them, so it is
   higher (a score within the vocabulary, not an upper bound). Character vocabularies
   (addition) are scored with sacrebleu's 'char' tokenizer, words with '13a'.
   `final_exact_match` is the exact match of these decoded examples (the same as the eval's
   when they are the whole split). The loop merges these into summary.json's `eval` and
   writes them to metrics.jsonl as kind 'final_eval'.

Pictures (`write_pictures`, from what `final_eval` decoded): `alignment_<k>.png`, heat maps
of attention weights (output words × source words, the words on the axes) for a few short
test sentences, for the 'attention' form (the AdditiveAttention weights α_ij, `alignments`)
and the Transformer (cross-attention of the last decoder layer, averaged over heads); and
`samples.txt`, source / reference / output of the first decoded examples.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import sacrebleu

from data import DatasetInfo
from data.builders.sequences import vocabularies_of
from data.tokenizers import EOS_ID, NUM_SPECIAL, PAD_ID, CharVocabulary, Vocabulary, WordVocabulary
from nets.models import seq2seq as seq2seq_nets
from nets.models import transformer as transformer_nets
from train import pictures
from train.tasks.base import Task

# Decoded once at the end for BLEU: all of addition's and translation's 1,000 test examples.
FINAL_EVAL_EXAMPLES = 1000
# Rows per jitted generation call in `final_eval` (one compilation; the last chunk is padded).
GENERATION_CHUNK = 500
NUM_ALIGNMENT_PICTURES = 4
# Longer sentences make unreadable axes; pictures take the first sources at most this long.
MAX_PICTURE_SOURCE_TOKENS = 25
NUM_SAMPLE_TEXTS = 20


# ----------------------------------------------------------------------------- metrics


def token_sums(
    logits: jax.Array, targets: jax.Array, row_mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums of NLL (nats) and correct argmax predictions over the non-padding target tokens,
    and their count. `row_mask` (batch,) drops whole rows (eval padding)."""
    weights = targets != PAD_ID
    if row_mask is not None:
        weights = weights & row_mask.astype(bool)[:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = jnp.argmax(logits, -1) == targets
    # where, not a product: a padded row's logits may be anything, and 0 · inf is NaN.
    return {
        'nll_sum': jnp.sum(jnp.where(weights, nll, 0.0)),
        'correct_tokens': jnp.sum(jnp.where(weights, correct, False)),
        'tokens': jnp.sum(weights),
    }


def exact_match(generated: jax.Array, targets: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
    """(batch,) bool: the generated sequence equals the target at every position through the
    target's eos (targets are tokens, eos, then pad). Both are (batch, T); since the eos
    position is compared, a generation that stops early or late does not match."""
    generated, targets = jnp.asarray(generated), jnp.asarray(targets)
    return jnp.all((generated == targets) | (targets == pad_id), axis=-1)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    tokenize: str = '13a',
    lowercase: bool = True,
) -> float:
    """sacrebleu corpus BLEU (0-100) of detokenized hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references')
    if not hypotheses:
        return 0.0
    return float(
        sacrebleu.corpus_bleu(
            list(hypotheses), [list(references)], tokenize=tokenize, lowercase=lowercase
        ).score
    )


def bleu_tokenizer(vocabulary: Vocabulary) -> str:
    """sacrebleu tokenizer matching a vocabulary: characters for character vocabularies (a
    4-gram of words means nothing for '168'), the standard '13a' for words."""
    return 'char' if isinstance(vocabulary, CharVocabulary) else '13a'


def target_vocabulary(info: DatasetInfo) -> Vocabulary:
    """The target vocabulary rebuilt from the data set's class names (the target tokens):
    characters when every token is one character, else words."""
    tokens = info.class_names[NUM_SPECIAL:]
    if all(len(token) == 1 for token in tokens):
        return CharVocabulary(tokens)
    return WordVocabulary(tokens)


# ----------------------------------------------------------------------------- model dispatch


def generate(
    model: nn.Module,
    variables: dict[str, Any],
    source: jax.Array,
    *,
    max_length: int,
    beam_size: int = 1,
) -> jax.Array:
    """(batch, max_length) int32 generated ids (no bos; eos, then pad): greedy search for
    beam_size 1, else the best beam. Transformers decode with `nets.models.transformer.translate`
    (beam search with beam 1 is greedy search), models with `encode`/`decode_step`
    (Seq2Seq, ShowAttendTell) with `nets.models.seq2seq.generate`. Jittable with `model`,
    `max_length` and `beam_size` static."""
    if isinstance(model, transformer_nets.Transformer):
        sequences, _ = transformer_nets.translate(
            model, variables, source, beam_size=beam_size, max_length=max_length
        )
        return sequences[:, 0]
    sequences, _ = seq2seq_nets.generate(
        model, variables, source, max_length=max_length, beam_size=beam_size
    )
    return sequences


def has_attention(model: nn.Module) -> bool:
    """Whether `attention_weights` can read attention from this model."""
    return (
        isinstance(model, transformer_nets.Transformer)
        or getattr(model, 'form', 'attention') == 'attention'
    )


def attention_weights(
    model: nn.Module, variables: dict[str, Any], source: jax.Array, targets: jax.Array
) -> jax.Array:
    """What the decoder read while predicting each of `targets` (teacher-forced):
    (batch, T, S) for translation models — the 'attention' form's α_ij, or the Transformer's
    last decoder layer cross-attention averaged over heads — each row summing to 1 over the
    real source positions. Subclasses with image sources override this."""
    if isinstance(model, transformer_nets.Transformer):
        _, state = model.apply(variables, source, targets, train=False, mutable=['intermediates'])
        last = f'decoder_blocks_{model.num_decoder_layers - 1}'
        weights = state['intermediates'][last]['cross_attention']['attention_weights'][0]
        return jnp.mean(
            weights.astype(jnp.float32), axis=1
        )  # (batch, heads, T, S) -> (batch, T, S)
    return seq2seq_nets.alignments(model, variables, source, targets)


# ----------------------------------------------------------------------------- decoded examples


@dataclasses.dataclass
class Showcase:
    """The examples `final_eval` decoded, kept for `write_pictures`: per example the source
    (text or None), the reference text and the output text; for a few, the token labels
    and attention weights to draw."""

    sources: list[str | None]
    references: list[str]
    outputs: list[str]
    indices: list[int]  # positions in the eval split of the examples with pictures
    source_tokens: list[list[str]]
    output_tokens: list[list[str]]
    attention: list[np.ndarray]  # per picture: (output tokens, source tokens) or (T, h, w)
    images: list[np.ndarray]  # image sources of the pictured examples (captioning)


def _text(value: Any) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def token_labels(vocabulary: Vocabulary, ids: Sequence[int]) -> list[str]:
    """Each id's token through the first eos (included), for axis labels."""
    labels = []
    for i in (int(i) for i in ids):
        if i == PAD_ID:
            break
        labels.append(vocabulary.tokens[i] if 0 <= i < len(vocabulary) else '<unk>')
        if i == EOS_ID:
            break
    return labels


def plot_alignment(
    weights: np.ndarray,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    out_path: Path,
    title: str = '',
) -> Path:
    """Heat map of (output tokens, source tokens) attention weights, words on the axes."""
    rows, cols = len(output_tokens), len(source_tokens)
    weights = np.asarray(weights, np.float32)[:rows, :cols]
    fig, ax = pictures.figure(figsize=(1.5 + 0.32 * cols, 1.2 + 0.32 * rows))
    ax.imshow(
        weights,
        cmap='gray_r',
        vmin=0.0,
        vmax=max(float(weights.max(initial=0.0)), 1e-6),
        aspect='auto',
    )
    ax.set_xticks(range(cols), source_tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(rows), output_tokens, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel('source')
    ax.set_ylabel('output')
    if title:
        ax.set_title(title, fontsize=9, pad=40 if cols else 6)
    return pictures.save_figure(fig, out_path)


# ----------------------------------------------------------------------------- the task


class Seq2SeqTask(Task):
    """Loss, metrics, BLEU and alignment pictures of an encoder-decoder called
    `model.apply(variables, source, targets, train=...)` -> (batch, T, vocab) logits.
    Options: `config.seq2seq`."""

    source_feature = 'inputs'
    options_block = 'seq2seq'

    @classmethod
    def default_options(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {
                'beam_size': 1,  # decoding for exact match and BLEU; 1 = greedy search
                # eval examples decoded for BLEU at the end
                'final_eval_examples': FINAL_EVAL_EXAMPLES,
                'max_train_length': 0,  # train on pairs that fit L tokens; 0 = all
            }
        )

    @classmethod
    def check_options(cls, config: ml_collections.ConfigDict) -> None:
        cls._check_ranges(**config[cls.options_block])

    @classmethod
    def _check_ranges(
        cls,
        *,
        beam_size: int = 1,
        final_eval_examples: int = 0,
        max_train_length: int = 0,
        attention_penalty: float = 0.0,
    ) -> None:
        block = cls.options_block
        if beam_size < 1:
            raise ValueError(f'config.{block}.beam_size must be >= 1 (1 = greedy), got {beam_size}')
        for key, value in (
            ('final_eval_examples', final_eval_examples),
            ('max_train_length', max_train_length),
            ('attention_penalty', attention_penalty),
        ):
            if value < 0:
                raise ValueError(f'config.{block}.{key} must be >= 0, got {value}')

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
        *,
        beam_size: int = 1,
        final_eval_examples: int = FINAL_EVAL_EXAMPLES,
        max_train_length: int = 0,
    ):
        if augmenter is not None:
            raise ValueError(
                f'the {type(self).__name__} task has no augmentation; set config.augment = ()'
            )
        self._check_ranges(
            beam_size=beam_size,
            final_eval_examples=final_eval_examples,
            max_train_length=max_train_length,
        )
        self._check_data(info)
        super().__init__(model, info)
        self.max_train_length = max_train_length
        self.beam_size = beam_size
        self.final_eval_examples = final_eval_examples
        self.showcase: Showcase | None = None  # set by final_eval, drawn by write_pictures

    def _check_data(self, info: DatasetInfo) -> None:
        if (
            len(info.example_shape) != 1
            or info.image_dtype not in ('int32', 'int64')
            or not info.vocab_sizes
        ):
            raise ValueError(
                f'the seq2seq task needs (S,) int token ids as inputs and a targets '
                f'vocabulary; data set {info.name!r} has {info.image_dtype} examples '
                f'of shape {info.example_shape}'
            )

    # ------------------------------------------------------------------ model plumbing

    @property
    def init_batch_shape(self) -> tuple[int, ...]:
        return (1, *self.info.example_shape)

    def _dummy_source(self) -> jax.Array:
        return jnp.ones(self.init_batch_shape, jnp.int32)  # id 1 (bos): a real, non-pad token

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """Initialised in training mode on one source and a one-token target (parameters do not
        depend on the target length)."""
        targets = jnp.ones((1, 1), jnp.int32)
        return self.model.init(
            {'params': rng, 'dropout': rng}, self._dummy_source(), targets, train=True
        )

    def prepare_source(self, source: jax.Array) -> jax.Array:
        """The batch's source feature as the model reads it (ids as they are)."""
        return source

    def _apply(
        self, params, model_state, source, targets, *, train: bool, rng=None, sow: bool = False
    ) -> tuple[jax.Array, dict[str, Any], dict[str, Any]]:
        """-> (logits, updated model collections, sown intermediates)."""
        variables = {'params': params, **model_state}
        mutable = (list(model_state) if train else []) + (['intermediates'] if sow else [])
        kwargs = {'rngs': {'dropout': rng}} if train else {}
        if not mutable:
            return (
                self.model.apply(variables, source, targets, train=train, **kwargs),
                model_state,
                {},
            )
        logits, updated = self.model.apply(
            variables, source, targets, train=train, mutable=mutable, **kwargs
        )
        updated = dict(updated)
        intermediates = updated.pop('intermediates', {})
        return logits, (updated if train else model_state), intermediates

    def _generate(self, variables: dict[str, Any], source: jax.Array, max_length: int) -> jax.Array:
        return generate(
            self.model, variables, source, max_length=max_length, beam_size=self.beam_size
        )

    # ------------------------------------------------------------------ steps

    def shorten(self, source: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """With `max_train_length` L > 0: both sequences cut to their first L positions, and
        the rows that do not fit (a real token past L on either side) dropped from the loss by
        padding their targets. Shorter scans cost less per step; the dropped rows still occupy
        their batch slots."""
        length = self.max_train_length
        if not length or (source.shape[1] <= length and targets.shape[1] <= length):
            return source, targets
        fits = ~jnp.any(source[:, length:] != PAD_ID, axis=1) & ~jnp.any(
            targets[:, length:] != PAD_ID, axis=1
        )
        return source[:, :length], jnp.where(fits[:, None], targets[:, :length], PAD_ID)

    def train_loss(self, params, model_state, batch, rng):
        source, targets = self.shorten(
            self.prepare_source(batch[self.source_feature]), batch['targets']
        )
        logits, new_state, _ = self._apply(
            params, model_state, source, targets, train=True, rng=rng
        )
        sums = token_sums(logits, targets)
        tokens = jnp.maximum(sums['tokens'], 1)
        loss = sums['nll_sum'] / tokens
        return loss, (new_state, {'loss': loss, 'accuracy': sums['correct_tokens'] / tokens})

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        source, targets = self.prepare_source(batch[self.source_feature]), batch['targets']
        mask = batch['mask'].astype(bool)
        logits, _, _ = self._apply(params, model_state, source, targets, train=False)
        generated = self._generate({'params': params, **model_state}, source, targets.shape[1])
        return {
            **token_sums(logits, targets, mask),
            'exact': jnp.sum(jnp.where(mask, exact_match(generated, targets), False)),
            'count': jnp.sum(mask),
        }

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        tokens = max(float(sums['tokens']), 1.0)
        loss = float(sums['nll_sum']) / tokens
        return {
            'loss': loss,
            'perplexity': float(np.exp(min(loss, 700.0))),
            'accuracy': float(sums['correct_tokens']) / tokens,  # per token, teacher-forced
            'exact_match': float(sums['exact']) / max(float(sums['count']), 1.0),
            'examples': int(sums['count']),
            'tokens': int(sums['tokens']),
        }

    # ------------------------------------------------------------------ generation at the end

    @functools.cached_property
    def _jit_generate(self):
        return jax.jit(
            lambda variables, source, max_length: self._generate(
                variables, self.prepare_source(source), max_length
            ),
            static_argnums=2,
        )

    @functools.cached_property
    def _jit_attention(self):
        return jax.jit(
            lambda variables, source, targets: self.attention(
                variables, self.prepare_source(source), targets
            )
        )

    def attention(
        self, variables: dict[str, Any], source: jax.Array, targets: jax.Array
    ) -> jax.Array:
        """Teacher-forced attention weights for `targets` (see `attention_weights`)."""
        return attention_weights(self.model, variables, source, targets)

    def _generate_all(
        self, variables: dict[str, Any], sources: np.ndarray, max_length: int
    ) -> np.ndarray:
        """Generated ids for every row of `sources`, in fixed-size jitted chunks."""
        chunk = min(GENERATION_CHUNK, len(sources))
        outputs = []
        for start in range(0, len(sources), chunk):
            part = sources[start : start + chunk]
            rows = len(part)
            if rows < chunk:  # same shape as the other chunks: no second compilation
                part = np.concatenate([part, np.repeat(part[:1], chunk - rows, axis=0)])
            outputs.append(np.asarray(self._jit_generate(variables, part, max_length))[:rows])
        return np.concatenate(outputs)

    def _vocabularies(self, source: Sequence[dict[str, Any]]) -> dict[str, Vocabulary]:
        info = getattr(source, 'dataset_info', None)
        vocabularies = vocabularies_of(info) if info is not None else {}
        vocabularies.setdefault('targets', target_vocabulary(self.info))
        return vocabularies

    def final_eval(
        self, params: Any, model_state: Any, source: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Decodes the first `final_eval_examples` examples of the raw eval split (strings
        included) and scores them by BLEU; keeps a few for `write_pictures`. Host side, once."""
        count = min(self.final_eval_examples, len(source))
        if count == 0:
            return {}
        records = source.__getitems__(list(range(count)))
        sources = np.stack([np.asarray(r[self.source_feature]) for r in records])
        targets = np.stack([np.asarray(r['targets']) for r in records]).astype(np.int32)
        variables = {'params': params, **model_state}
        generated = self._generate_all(variables, sources, targets.shape[1])
        vocabularies = self._vocabularies(source)
        target_vocab = vocabularies['targets']
        outputs = [target_vocab.decode(row) for row in generated]
        decoded_references = [target_vocab.decode(row) for row in targets]
        references = [
            _text(r['target_text']) if 'target_text' in r else decoded
            for r, decoded in zip(records, decoded_references)
        ]
        tokenize = bleu_tokenizer(target_vocab)
        metrics = {
            'bleu': corpus_bleu(outputs, references, tokenize=tokenize),
            'bleu_decoded_reference': corpus_bleu(outputs, decoded_references, tokenize=tokenize),
            'bleu_examples': count,
            'final_exact_match': float(np.mean(np.asarray(exact_match(generated, targets)))),
        }
        metrics.update(
            self._showcase(
                variables, records, sources, targets, generated, outputs, references, vocabularies
            )
        )
        return metrics

    def _picture_indices(self, sources: np.ndarray) -> list[int]:
        """The first few examples whose source is short enough for readable axes."""
        short = [
            i for i, row in enumerate(sources) if np.sum(row != PAD_ID) <= MAX_PICTURE_SOURCE_TOKENS
        ]
        return (short or list(range(len(sources))))[:NUM_ALIGNMENT_PICTURES]

    def _showcase(
        self, variables, records, sources, targets, generated, outputs, references, vocabularies
    ) -> dict[str, float]:
        """Keeps the decoded examples (and attention of a few) for `write_pictures`."""
        del targets  # pictures show what the model wrote, not the reference
        indices = self._picture_indices(sources)
        attention = []
        if indices and has_attention(self.model):
            weights = np.asarray(
                self._jit_attention(variables, sources[indices], generated[indices])
            )
            attention = list(weights)
        source_vocab = vocabularies.get('inputs')
        self.showcase = Showcase(
            sources=[
                _text(r['source_text']) if 'source_text' in r else None
                for r in records[:NUM_SAMPLE_TEXTS]
            ],
            references=references[:NUM_SAMPLE_TEXTS],
            outputs=outputs[:NUM_SAMPLE_TEXTS],
            indices=indices,
            source_tokens=[
                token_labels(source_vocab, sources[i]) if source_vocab else [] for i in indices
            ],
            output_tokens=[token_labels(vocabularies['targets'], generated[i]) for i in indices],
            attention=attention,
            images=[],
        )
        return {}

    # ------------------------------------------------------------------ pictures

    def write_samples_text(self, path: Path) -> Path:
        """source / reference / output of the first decoded examples."""
        showcase = self.showcase
        blocks = []
        for k, (source, reference, output) in enumerate(
            zip(showcase.sources, showcase.references, showcase.outputs)
        ):
            lines = [f'[{k}]'] + ([f'source:    {source}'] if source is not None else [])
            lines += [f'reference: {reference}', f'output:    {output}']
            blocks.append('\n'.join(lines))
        search = 'greedy search' if self.beam_size == 1 else f'beam search, beam {self.beam_size}'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'# {type(self.model).__name__} on {self.info.name} ({search})\n\n'
            + '\n\n'.join(blocks)
            + '\n',
            encoding='utf-8',
        )
        return path

    def write_pictures(self, picture_dir: Path, sums: dict[str, np.ndarray]) -> list[Path]:
        """Alignment heat maps and samples.txt of what `final_eval` decoded (nothing if it has
        not run)."""
        del sums  # the pictures come from the decoded examples
        if self.showcase is None:
            return []
        written = [self.write_samples_text(picture_dir / 'samples.txt')]
        for k, (index, weights) in enumerate(zip(self.showcase.indices, self.showcase.attention)):
            model = ' '.join([type(self.model).__name__, getattr(self.model, 'form', '')]).strip()
            title = f'{model} · eval example {index}'
            written.append(
                plot_alignment(
                    weights,
                    self.showcase.source_tokens[k],
                    self.showcase.output_tokens[k],
                    picture_dir / f'alignment_{k}.png',
                    title=title,
                )
            )
        return written
