"""Fashion-MNIST built offline from the four original idx files.

The files come from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist) or from any directory holding the same four
files, gzipped or not. Nothing is ever downloaded. Records keep the idx order
(TFDS shuffling is disabled), so test example i is idx test image i.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data.builders.image_arrays import generate_image_examples, image_label_features

DEFAULT_SOURCE_DIR = '/usr/share/datasets/fashion-mnist'
SOURCE_DIR_ENV = 'FASHION_MNIST_DIR'

# split -> (images file, labels file), names as published by Zalando.
IDX_FILES: dict[str, tuple[str, str]] = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

CLASS_NAMES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)

# idx magic numbers: two zero bytes, type code 0x08 (uint8), number of dims.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


def resolve_source_dir(source_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $FASHION_MNIST_DIR, else the Debian location."""
    return Path(source_dir or os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR)


def find_idx_files(source_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Maps each idx file stem to its path (`.gz` or plain) in `source_dir`.

    Raises FileNotFoundError naming the missing files and how to get them.
    """
    directory = resolve_source_dir(source_dir)
    found, missing = {}, []
    for stem in (name for pair in IDX_FILES.values() for name in pair):
        candidates = [directory / f'{stem}.gz', directory / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(stem)
        else:
            found[stem] = path
    if missing:
        all_names = ', '.join(f'{n}[.gz]' for pair in IDX_FILES.values() for n in pair)
        raise FileNotFoundError(
            f'Fashion-MNIST idx files missing from {directory}: {", ".join(missing)}. '
            'Install them with `apt-get install dataset-fashion-mnist` '
            f'(they go to {DEFAULT_SOURCE_DIR}), or point at a directory holding '
            f'the four files ({all_names}) with --fashion_mnist_dir, '
            f'${SOURCE_DIR_ENV} or FashionMnist(source_dir=...).'
        )
    return found


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Parses one uint8 idx file (optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f'{path}: too short to be an idx file')
    magic = int.from_bytes(raw[:4], 'big')
    if magic != expected_magic:
        raise ValueError(
            f'{path}: bad idx magic number {magic:#010x}, expected {expected_magic:#010x}'
        )
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if data.size != int(np.prod(dims)):
        raise ValueError(f'{path}: header says {dims} but holds {data.size} bytes')
    return data.reshape(dims)


def load_split(source_dir: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N,28,28,1], labels int64 [N]) for one split."""
    files = find_idx_files(source_dir)
    images_stem, labels_stem = IDX_FILES[split]
    images = read_idx(files[images_stem], _IMAGES_MAGIC)
    labels = read_idx(files[labels_stem], _LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f'{files[images_stem]}: expected [N,28,28] images, got {images.shape}')
    if len(images) != len(labels):
        raise ValueError(f'{split}: {len(images)} images but {len(labels)} labels')
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f'{files[labels_stem]}: label {labels.max()} out of range')
    return images[..., None], labels.astype(np.int64)


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST (60k train / 10k test, 28x28 grayscale, 10 classes)."""

    # TFDS ships its own (downloading) `fashion_mnist`; skip_registration keeps
    # that one registered and ours reachable through data.catalog only.
    name = 'fashion_mnist'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Built offline from the original idx files.'}

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        # Resolved lazily: a prepared dataset must load without the idx files.
        self._source_dir = source_dir
        super().__init__(**kwargs)
        # TFDS pickles builders by re-calling __init__ with _original_state.
        self._original_state['source_dir'] = source_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Zalando's Fashion-MNIST article images, read from local idx files.",
            features=image_label_features((28, 28, 1), CLASS_NAMES),
            supervised_keys=('image', 'label'),
            homepage='https://github.com/zalandoresearch/fashion-mnist',
            # Keep idx order so records can be checked against the source files.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Never downloads.
        find_idx_files(self._source_dir)  # Fail early, with the install hint.
        return {split: self._generate_examples(split) for split in IDX_FILES}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        return generate_image_examples(*load_split(self._source_dir, split))
