"""MNIST-1D (Greydanus 2020), generated locally with the `mnist1d` package.

We call `mnist1d.data.make_dataset` with the package's published default
arguments (`get_dataset_args()`: 5,000 signals, 80/20 split, final length 40,
seed 42), which is what the package itself would regenerate; the pickle URL in
those arguments is never fetched. Result: 4,000 train / 1,000 test float32
signals, stored as `image` of shape (40, 1) so every dataset shares one input
path.

`mnist1d_shuffled` is the package's own `shuffle_seq=True` variant used in the
paper's local-connectivity experiment: the same signals (same seed 42 stream)
with one fixed permutation of the 40 positions applied to every signal. The
package draws that permutation with `np.random.permutation(40)` right after
shuffling the examples; it is recorded in `SHUFFLE_PERMUTATION` (and checked by
the tests), so `shuffled[..., i] == plain[..., SHUFFLE_PERMUTATION[i]]`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

SEQUENCE_LENGTH = 40

# The 40-position permutation mnist1d draws for shuffle_seq=True with seed 42.
SHUFFLE_PERMUTATION = (
    19,
    22,
    4,
    32,
    17,
    18,
    28,
    31,
    11,
    24,
    23,
    7,
    25,
    35,
    34,
    6,
    3,
    13,
    12,
    26,
    1,
    27,
    20,
    10,
    36,
    9,
    37,
    29,
    8,
    30,
    5,
    38,
    16,
    15,
    33,
    39,
    14,
    21,
    0,
    2,
)


def generate(shuffle_seq: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (signals float32 [N,40,1], labels int64 [N]) from the package defaults."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.shuffle_seq = shuffle_seq
    # make_dataset reseeds numpy's and python's global RNGs; put them back so
    # preparing data never changes the caller's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        'train': (raw['x'].astype(np.float32)[..., None], raw['y'].astype(np.int64)),
        'test': (raw['x_test'].astype(np.float32)[..., None], raw['y_test'].astype(np.int64)),
    }


class Mnist1d(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """MNIST-1D: 4,000 train / 1,000 test length-40 signals, 10 classes."""

    name = 'mnist1d'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Generated with mnist1d.make_dataset(get_dataset_args()), seed 42.'}
    SHUFFLE_SEQ = False

    def _info(self) -> tfds.core.DatasetInfo:
        variant = ' with spatially shuffled positions' if self.SHUFFLE_SEQ else ''
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f'MNIST-1D{variant}, generated locally by the mnist1d package (default args).'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Tensor(shape=(SEQUENCE_LENGTH, 1), dtype=np.float32),
                    'label': tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=('image', 'label'),
            homepage='https://github.com/greydanus/mnist1d',
            disable_shuffling=True,  # Keep the package's example order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated, never downloaded.
        arrays = generate(shuffle_seq=self.SHUFFLE_SEQ)
        return {split: self._generate_examples(*arrays[split]) for split in arrays}

    def _generate_examples(
        self, signals: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for i, (signal, label) in enumerate(zip(signals, labels)):
            yield i, {'image': signal, 'label': int(label)}


class Mnist1dShuffled(Mnist1d, skip_registration=True):
    """MNIST-1D with one fixed permutation of the 40 positions (shuffle_seq=True)."""

    name = 'mnist1d_shuffled'
    RELEASE_NOTES = {
        '1.0.0': 'mnist1d shuffle_seq=True, seed 42; permutation = SHUFFLE_PERMUTATION.'
    }
    SHUFFLE_SEQ = True
