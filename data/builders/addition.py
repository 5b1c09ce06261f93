"""addition: the seq2seq sanity task of the Flax examples, "123+45" -> "168", in characters.

Operands are whole numbers 0..999 (up to 3 digits), as in flax/examples/seq2seq. The
(a, b) pairs are drawn without replacement from all 1,000,000 ordered pairs by
numpy default_rng(SEED): the first `num_train` (default 50,000) are train, the next
`num_test` (default 1,000) test, so no ordered pair is in both (b+a may be where a+b is
not: commutativity is something a model may learn).

`inputs` is "a+b" then EOS_ID, `targets` the sum's digits then EOS_ID, each padded with
PAD_ID to INPUT_LENGTH / TARGET_LENGTH; `source_text` / `target_text` hold the strings.
The vocabulary is the characters "+0123456789" after the four special ids (15 ids).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from data.builders.sequences import store_vocabularies, token_ids_feature
from data.tokenizers import CharVocabulary

SEED = 0
MAX_OPERAND = 999
NUM_TRAIN = 50_000
NUM_TEST = 1_000
INPUT_LENGTH = 2 * len(str(MAX_OPERAND)) + 1 + 1  # "999+999" + eos
TARGET_LENGTH = len(str(2 * MAX_OPERAND)) + 1  # "1998" + eos
VOCABULARY = CharVocabulary(sorted('+0123456789'))


def sample_pairs(
    num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, seed: int = SEED
) -> dict[str, np.ndarray]:
    """split -> int64 [N, 2] operand pairs, distinct across and within splits."""
    num_values = MAX_OPERAND + 1
    if num_train + num_test > num_values**2:
        raise ValueError(
            f'only {num_values**2} distinct pairs exist; asked for {num_train} + {num_test}'
        )
    codes = np.random.default_rng(seed).choice(
        num_values**2, size=num_train + num_test, replace=False
    )
    pairs = np.stack(np.divmod(codes, num_values), axis=1)
    return {'train': pairs[:num_train], 'test': pairs[num_train:]}


class Addition(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Character-level addition of two numbers 0..999 (50,000 train / 1,000 test)."""

    name = 'addition'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': f'Operands 0..{MAX_OPERAND}, distinct ordered pairs, seed {SEED}.'}

    def __init__(self, *, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, **kwargs):
        # Sizes only change how many examples are written (tests use small ones); a prepared
        # data set is read back with whatever sizes it was written with.
        self._num_train, self._num_test = num_train, num_test
        super().__init__(**kwargs)
        self._original_state.update(
            num_train=num_train, num_test=num_test
        )  # TFDS re-inits from this.

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='Sums of two numbers 0..999 written as characters: "123+45" -> "168".',
            features=tfds.features.FeaturesDict(
                {
                    'inputs': token_ids_feature(INPUT_LENGTH),
                    'targets': token_ids_feature(TARGET_LENGTH),
                    'source_text': tfds.features.Text(),
                    'target_text': tfds.features.Text(),
                }
            ),
            supervised_keys=('inputs', 'targets'),
            homepage='https://github.com/google/flax/tree/main/examples/seq2seq',
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # Records keep the sampled order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated, never downloaded.
        store_vocabularies(self.info, {'inputs': VOCABULARY, 'targets': VOCABULARY})
        pairs = sample_pairs(self._num_train, self._num_test)
        return {split: self._generate_examples(pairs[split]) for split in pairs}

    def _generate_examples(self, pairs: np.ndarray) -> Iterator[tuple[int, dict]]:
        for i, (a, b) in enumerate(pairs.tolist()):
            question, answer = f'{a}+{b}', str(a + b)
            yield (
                i,
                {
                    'inputs': VOCABULARY.encode_padded(question, INPUT_LENGTH),
                    'targets': VOCABULARY.encode_padded(answer, TARGET_LENGTH),
                    'source_text': question,
                    'target_text': answer,
                },
            )
