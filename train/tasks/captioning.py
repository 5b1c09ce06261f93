"""Image captioning with attention (Xu et al. 2015, `nets.models.captioning.ShowAttendTell`).

The batch holds `image` (batch, H, W, C) uint8 and `targets` (batch, T) caption ids (eos, then
pad; no bos). Images are scaled and standardised on device as in classification,
(x / 255 - mean) / std with the train split's statistics. The training objective is the
paper's eq. 14, the caption's negative log-likelihood plus λ times the doubly stochastic
attention penalty, averaged per target token:

    J = (1 / N) [ Σ_{b,t: y_bt ≠ pad} -log ŷ_bt[y_bt]  +  λ Σ_b Σ_i (1 - Σ_t α_bti)² ]

where α_bt is the attention over the L = h·w grid locations at caption step t (steps after
eos excluded) and N the number of non-padding tokens. Summing both terms per caption and
then dividing by N keeps the paper's balance between them (its loss is per caption) while
the numbers stay per token. λ = `attention_penalty` (config.captioning; 1.0 as in the
paper). The logged `loss` is the cross-entropy alone, comparable between train and eval;
`attention_penalty` is reported per caption. With fewer words than locations the penalty
cannot reach 0; its gradient through the softmax only discourages attending to a location
that earlier words already attended to.

Evaluation as `train.tasks.seq2seq` (teacher-forced loss and token accuracy, exact match of
the greedily generated caption, BLEU once at the end), plus, once at the end on digit_captions
(which records the digit in each slot), `attention_in_digit_slot`: over the exactly correct
captions, the share of words whose attention has most of its mass in the slot of the digit the
word names. Pictures: `caption_attention.png`, per test image the image and one panel per
generated word with that step's (h, w) attention upsampled over it; and `samples.txt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import DatasetInfo
from data.tokenizers import PAD_ID
from nets.models import captioning as captioning_nets
from nets.models import seq2seq as seq2seq_nets
from train import pictures
from train.tasks.seq2seq import (
    FINAL_EVAL_EXAMPLES,
    GENERATION_CHUNK,
    NUM_SAMPLE_TEXTS,
    Seq2SeqTask,
    Showcase,
    exact_match,
    token_labels,
    token_sums,
)

ATTENTION_PENALTY = 1.0  # λ of Xu et al. 2015, eq. 14
NUM_ATTENTION_PICTURES = 4
EMPTY_SLOT = -1  # digit_captions' slot_labels value of a slot without a digit


def attention_slot_hits(maps: np.ndarray, slot_labels: np.ndarray, num_words: int) -> np.ndarray:
    """(num_words,) bool: whether word t's attention map (T, h, w) has most of its mass in the
    horizontal slot holding the t-th digit from the left. Columns are divided among the
    len(slot_labels) slots in order; `slot_labels` holds EMPTY_SLOT for empty slots."""
    num_slots, width = len(slot_labels), maps.shape[-1]
    column_mass = maps[:num_words].sum(axis=1)  # (words, w)
    slot_of_column = np.arange(width) * num_slots // width
    slot_mass = np.stack(
        [column_mass[:, slot_of_column == s].sum(-1) for s in range(num_slots)], -1
    )
    filled = np.flatnonzero(np.asarray(slot_labels) != EMPTY_SLOT)[:num_words]
    return np.argmax(slot_mass[: len(filled)], axis=-1) == filled


def upsample(attention_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) attention -> (H, W) by bilinear interpolation, for drawing over the image."""
    return np.asarray(jax.image.resize(jnp.asarray(attention_map, jnp.float32), shape, 'linear'))


def plot_word_attention(
    images: Sequence[np.ndarray],
    words: Sequence[Sequence[str]],
    maps: Sequence[np.ndarray],
    out_path: Path,
    references: Sequence[str] | None = None,
) -> Path:
    """One row per image: the image (titled with its reference caption), then one panel per
    generated word with its attention map upsampled and laid over the image."""
    columns = 1 + max((len(w) for w in words), default=0)
    height, width = images[0].shape[:2]
    panel = 2.2 * width / max(height, width)
    fig, axes = pictures.figure(
        len(images),
        columns,
        squeeze=False,
        figsize=(panel * columns, 2.2 * height / max(height, width) * len(images) + 0.6),
    )
    for row, (image, row_words, row_maps) in enumerate(zip(images, words, maps)):
        gray = np.asarray(image, np.float32)[..., 0]
        axes[row, 0].imshow(gray, cmap='gray')
        axes[row, 0].set_title(
            f'reference: {references[row]}' if references else 'image', fontsize=8
        )
        for t, word in enumerate(row_words):
            ax = axes[row, 1 + t]
            ax.imshow(gray, cmap='gray')
            ax.imshow(upsample(row_maps[t], (height, width)), cmap='magma', alpha=0.6)
            ax.set_title(word, fontsize=8)
        for ax in axes[row]:
            ax.axis('off')
    fig.suptitle('attention per generated word (Show, Attend and Tell)', fontsize=9)
    return pictures.save_figure(fig, out_path)


class CaptioningTask(Seq2SeqTask):
    """Loss (cross-entropy + λ · doubly stochastic penalty), metrics and attention pictures of
    an image captioner called `model.apply(variables, images, captions, train=...)`."""

    source_feature = 'image'
    logged_train_metrics = ('loss', 'accuracy', 'grad_norm', 'attention_penalty')

    options_block = 'captioning'

    @classmethod
    def default_options(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {
                'beam_size': 1,  # decoding for exact match and BLEU; 1 = greedy search
                # eval examples decoded for BLEU at the end
                'final_eval_examples': FINAL_EVAL_EXAMPLES,
                'attention_penalty': ATTENTION_PENALTY,  # λ of the doubly stochastic penalty
            }
        )

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
        *,
        beam_size: int = 1,
        final_eval_examples: int = FINAL_EVAL_EXAMPLES,
        attention_penalty: float = ATTENTION_PENALTY,
    ):
        super().__init__(
            model, info, augmenter, beam_size=beam_size, final_eval_examples=final_eval_examples
        )
        self._check_ranges(attention_penalty=attention_penalty)
        self.attention_penalty = attention_penalty
        self._mean = np.asarray(info.mean, np.float32)
        self._std = np.asarray(info.std, np.float32)
        self._scale = 255.0 if info.image_dtype == 'uint8' else 1.0

    def _check_data(self, info: DatasetInfo) -> None:
        if len(info.example_shape) != 3 or 'targets' not in info.vocab_sizes:
            raise ValueError(
                f'captioning needs (H, W, C) images and a targets vocabulary; data set '
                f'{info.name!r} has examples of shape {info.example_shape} and '
                f'vocabularies {sorted(info.vocab_sizes)}'
            )

    def _dummy_source(self) -> jax.Array:
        return jnp.zeros(self.init_batch_shape, jnp.float32)

    def prepare_source(self, source: jax.Array) -> jax.Array:
        """uint8 images -> standardised float32, on device (as classification does)."""
        return (source.astype(jnp.float32) / self._scale - self._mean) / self._std

    def _penalty(self, intermediates: dict[str, Any], targets: jax.Array) -> jax.Array:
        """(batch,) doubly stochastic penalty over the caption's steps through eos."""
        weights = seq2seq_nets.sown_attention(intermediates)
        return captioning_nets.doubly_stochastic_penalty(weights, targets != PAD_ID)

    def train_loss(self, params, model_state, batch, rng):
        images, targets = self.prepare_source(batch['image']), batch['targets']
        logits, new_state, intermediates = self._apply(
            params, model_state, images, targets, train=True, rng=rng, sow=True
        )
        sums = token_sums(logits, targets)
        penalty = self._penalty(intermediates, targets)
        tokens = jnp.maximum(sums['tokens'], 1)
        loss = (sums['nll_sum'] + self.attention_penalty * jnp.sum(penalty)) / tokens
        metrics = {
            'loss': sums['nll_sum'] / tokens,
            'accuracy': sums['correct_tokens'] / tokens,
            'attention_penalty': jnp.mean(penalty),
        }
        return loss, (new_state, metrics)

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        images, targets = self.prepare_source(batch['image']), batch['targets']
        mask = batch['mask'].astype(bool)
        logits, _, intermediates = self._apply(
            params, model_state, images, targets, train=False, sow=True
        )
        generated = self._generate({'params': params, **model_state}, images, targets.shape[1])
        penalty = self._penalty(intermediates, targets)
        return {
            **token_sums(logits, targets, mask),
            'exact': jnp.sum(jnp.where(mask, exact_match(generated, targets), False)),
            'penalty_sum': jnp.sum(jnp.where(mask, penalty, 0.0)),
            'count': jnp.sum(mask),
        }

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        metrics = super().summarize(sums)
        metrics['attention_penalty'] = float(sums['penalty_sum']) / max(float(sums['count']), 1.0)
        return metrics

    def attention(
        self, variables: dict[str, Any], source: jax.Array, targets: jax.Array
    ) -> jax.Array:
        """(batch, T, h, w): where the model looked while predicting each of `targets`."""
        return captioning_nets.attention_maps(self.model, variables, source, targets)

    def _attention_all(self, variables, images: np.ndarray, captions: np.ndarray) -> np.ndarray:
        chunk = min(GENERATION_CHUNK, len(images))
        maps = []
        for start in range(0, len(images), chunk):
            rows = len(images[start : start + chunk])
            pad = chunk - rows  # same shape for every call: one compilation
            part_images = np.concatenate(
                [images[start : start + chunk], np.repeat(images[:1], pad, 0)]
            )
            part_captions = np.concatenate(
                [captions[start : start + chunk], np.repeat(captions[:1], pad, 0)]
            )
            maps.append(
                np.asarray(self._jit_attention(variables, part_images, part_captions))[:rows]
            )
        return np.concatenate(maps)

    def _showcase(
        self, variables, records, sources, targets, generated, outputs, references, vocabularies
    ) -> dict[str, float]:
        """Keeps a few images with their per-word attention for `write_pictures`; on data with
        `slot_labels`, measures whether each word's attention sits on its digit."""
        maps = self._attention_all(variables, sources, generated)
        vocab = vocabularies['targets']
        indices = list(range(min(NUM_ATTENTION_PICTURES, len(records))))
        self.showcase = Showcase(
            sources=[None] * min(NUM_SAMPLE_TEXTS, len(records)),
            references=references[:NUM_SAMPLE_TEXTS],
            outputs=outputs[:NUM_SAMPLE_TEXTS],
            indices=indices,
            source_tokens=[[] for _ in indices],
            output_tokens=[token_labels(vocab, generated[i]) for i in indices],
            attention=[maps[i] for i in indices],
            images=[sources[i] for i in indices],
        )
        if 'slot_labels' not in records[0]:
            return {}
        correct = np.asarray(exact_match(generated, targets))
        hits = [
            attention_slot_hits(
                maps[i],
                np.asarray(records[i]['slot_labels']),
                int(np.sum(targets[i] != PAD_ID)) - 1,
            )  # words, eos excluded
            for i in np.flatnonzero(correct)
        ]
        hits = np.concatenate(hits) if hits else np.zeros(0, bool)
        if not hits.size:  # no caption is right yet: nothing to measure
            return {}
        return {'attention_in_digit_slot': float(np.mean(hits)), 'attention_words': int(hits.size)}

    def write_pictures(self, picture_dir: Path, sums: dict[str, np.ndarray]) -> list[Path]:
        """caption_attention.png and samples.txt of what `final_eval` decoded."""
        del sums
        if self.showcase is None:
            return []
        showcase = self.showcase
        return [
            self.write_samples_text(picture_dir / 'samples.txt'),
            plot_word_attention(
                showcase.images,
                showcase.output_tokens,
                showcase.attention,
                picture_dir / 'caption_attention.png',
                references=[showcase.references[i] for i in showcase.indices],
            ),
        ]
