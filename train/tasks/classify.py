"""Classification: softmax cross-entropy, accuracy, and a confusion matrix over the eval split.

Training images may pass through an on-device augmenter (data/augment) between scaling to
[0, 1] and standardising; with mixup/cutmix it returns mixed label distributions, and the loss
is the cross-entropy against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import DatasetInfo
from train import pictures
from train.tasks.base import Task

# fold_in stream of the step key that augmentation draws from (dropout uses the key itself).
_AUGMENT_STREAM = 1


class ClassificationTask(Task):
    """Loss and metrics of an image (or 1-D signal) classifier."""

    def __init__(self, model: nn.Module, info: DatasetInfo, augmenter: Any = None):
        if augmenter is not None and len(info.example_shape) != 3:
            raise ValueError(
                f'augmentation needs images (H, W, C); data set {info.name!r} has '
                f'examples of shape {info.example_shape}'
            )
        super().__init__(model, info, augmenter)
        self.num_classes = info.num_classes
        self._mean = np.asarray(info.mean, np.float32)
        self._std = np.asarray(info.std, np.float32)
        self._scale = 255.0 if info.image_dtype == 'uint8' else 1.0

    @property
    def init_batch_shape(self) -> tuple[int, ...]:
        return (1, *self.info.example_shape)

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """Initialised in training mode, so that layers used only in training (auxiliary
        classifiers) get their parameters too."""
        dummy = jnp.zeros(self.init_batch_shape, jnp.float32)
        return self.model.init({'params': rng, 'dropout': rng}, dummy, train=True)

    def to_unit_range(self, images: jax.Array) -> jax.Array:
        """Raw pixels (uint8) -> float32 in [0, 1]; float signals stay as they are."""
        return images.astype(jnp.float32) / self._scale

    def standardise(self, images: jax.Array) -> jax.Array:
        return (images - self._mean) / self._std

    def normalise(self, images: jax.Array) -> jax.Array:
        """Raw pixels (uint8) or signals (float) -> standardised float32, on device."""
        return self.standardise(self.to_unit_range(images))

    def _apply(self, params, model_state, images, *, train: bool, rng=None):
        """-> (logits, new model state, auxiliary logits sown by the model in training)."""
        variables = {'params': params, **model_state}
        if not train:
            return self.model.apply(variables, images, train=False), model_state, []
        # Auxiliary classifiers (GoogLeNet, Inception v3) sow their logits in training only.
        logits, updated = self.model.apply(
            variables,
            images,
            train=True,
            rngs={'dropout': rng},
            mutable=[*model_state, 'aux_logits'],
        )
        updated = dict(updated)
        aux = [a for values in updated.pop('aux_logits', {}).values() for a in values]
        return logits, updated, aux

    def train_loss(self, params, model_state, batch, rng):
        images, labels = self.to_unit_range(batch['image']), batch['label']
        if self.augmenter is not None:
            images, targets = self.augmenter(
                jax.random.fold_in(rng, _AUGMENT_STREAM), images, labels
            )
        else:
            targets = jax.nn.one_hot(labels, self.num_classes)
        logits, new_state, aux_logits = self._apply(
            params, model_state, self.standardise(images), train=True, rng=rng
        )
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        metrics = {}
        if aux_logits:
            aux_loss = sum(
                optax.softmax_cross_entropy(a.astype(jnp.float32), targets).mean()
                for a in aux_logits
            )
            metrics['aux_loss'] = aux_loss
            loss = loss + self.model.aux_loss_weight * aux_loss
        # With mixed labels, "correct" means predicting the larger share.
        accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
        return loss, (new_state, {'loss': loss, 'accuracy': accuracy, **metrics})

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        images = self.normalise(batch['image'])
        logits, _, _ = self._apply(params, model_state, images, train=False)
        logits = logits.astype(jnp.float32)
        labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        predicted = jnp.argmax(logits, -1)
        # confusion[true, predicted], counted with one-hot products so it stays one fused op.
        confusion = jnp.einsum(
            'n,ni,nj->ij',
            mask,
            jax.nn.one_hot(labels, self.num_classes),
            jax.nn.one_hot(predicted, self.num_classes),
        )
        return {
            'loss_sum': jnp.sum(losses * mask),
            'correct': jnp.sum((predicted == labels) * mask),
            'count': jnp.sum(mask),
            'confusion': confusion,
        }

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        count = max(float(sums['count']), 1.0)
        return {
            'loss': float(sums['loss_sum']) / count,
            'accuracy': float(sums['correct']) / count,
            'examples': int(sums['count']),
        }

    def write_pictures(self, picture_dir: Path, sums: dict[str, np.ndarray]) -> list[Path]:
        path = picture_dir / 'confusion_matrix.png'
        pictures.plot_confusion_matrix(np.asarray(sums['confusion']), self.info.class_names, path)
        return [path]
