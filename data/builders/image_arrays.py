"""What the image builders share: image + label features, and examples from in-memory arrays.

Every embedded image data set here arrives as whole arrays (idx files, a wheel, scikit-learn);
these helpers turn (images uint8 [N, H, W, 1], labels [N]) into TFDS features and examples, and
make the fixed shuffled train/test split that the sets without an official split use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def image_label_features(
    image_shape: tuple[int, int, int], class_names: Sequence[str]
) -> tfds.features.FeaturesDict:
    """TFDS's usual `image` (PNG-encoded uint8) and `label` features."""
    return tfds.features.FeaturesDict(
        {
            'image': tfds.features.Image(shape=image_shape, dtype=np.uint8, encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(class_names)),
        }
    )


def generate_image_examples(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[int, dict]]:
    """(key, example) pairs in array order; PIL images are PNG-encoded by the Image feature
    without TensorFlow."""
    for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {'image': Image.fromarray(image[..., 0], mode='L'), 'label': int(label)}


def shuffled_train_test(
    images: np.ndarray, labels: np.ndarray, *, seed: int, num_train: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One fixed permutation (numpy default_rng(seed)), then the first `num_train` as train and
    the rest as test."""
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order].astype(np.int64)
    return {
        'train': (images[:num_train], labels[:num_train]),
        'test': (images[num_train:], labels[num_train:]),
    }
