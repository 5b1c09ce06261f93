"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set, 1,797).

Pixels are counts in 0..16; we rescale to uint8 0..255 with round(v * 255 / 16)
so every image pipeline treats them like other 8-bit images. Shuffled once with
`SHUFFLE_SEED` (numpy default_rng permutation), then split 80/20:
1,437 train / 360 test.
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
NUM_TEST = 360  # 20% of 1,797, rounded up; the rest (1,437) is train.


def load_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 [N,8,8,1], labels int64 [N]), after the fixed shuffle."""
    from sklearn.datasets import load_digits  # Lazy: sklearn import is slow.

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return shuffled_train_test(
        images, digits.target, seed=SHUFFLE_SEED, num_train=len(digits.target) - NUM_TEST
    )


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """1,797 8x8 grayscale digits (1,437 train / 360 test)."""

    name = 'digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {
        '1.0.0': f'sklearn digits scaled to 0..255, shuffled with seed {SHUFFLE_SEED}, 80/20 split.'
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's 8x8 digits, pixel counts 0..16 rescaled to 0..255.",
            features=image_label_features((8, 8, 1), [str(d) for d in range(10)]),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
            disable_shuffling=True,  # Records keep the documented shuffled order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Data ships with scikit-learn.
        arrays = load_arrays()
        return {split: self._generate_examples(*arrays[split]) for split in arrays}

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        return generate_image_examples(images, labels)
