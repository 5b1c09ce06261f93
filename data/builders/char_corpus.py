"""char_corpus: character-level language modelling on the Python reference documentation.

Source: the standard library's `pydoc_data.topics.topics`, the prose of the Language
Reference that `help("with")` prints (79 topics, about 465,000 characters for Python 3.11;
each Python release ships its own edition, so the version is recorded in the metadata).
Licence: Python Software Foundation License (the Python documentation's licence). Nothing
beyond the standard library is needed.

The topics are joined in sorted-name order into one text, which is split by position, with
no overlap: the first 90% of the characters are train, the next 5% validation, the last 5%
test. Each split is cut into windows of SEQUENCE_LENGTH + 1 characters taken every
SEQUENCE_LENGTH characters (windows share one character, so every character of a split but
its first is a target exactly once; a short tail is dropped); a window gives
`inputs = window[:-1]` and `targets = window[1:]`. The character vocabulary (sorted, after
the four special ids of data.tokenizers) is built from the train split only; characters
seen only in validation/test read UNK_ID.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from data.builders.sequences import store_vocabularies, token_ids_feature
from data.tokenizers import CharVocabulary

SEQUENCE_LENGTH = 256
SPLIT_FRACTIONS = {'train': 0.90, 'validation': 0.05, 'test': 0.05}


def load_text() -> str:
    """The documentation topics joined in sorted-name order, one blank line apart."""
    from pydoc_data.topics import topics

    return '\n\n'.join(topics[name].strip('\n') for name in sorted(topics)) + '\n'


def split_text(text: str) -> dict[str, tuple[int, str]]:
    """split -> (offset in `text`, contiguous piece), in SPLIT_FRACTIONS order."""
    pieces, start = {}, 0
    for i, (split, fraction) in enumerate(SPLIT_FRACTIONS.items()):
        stop = len(text) if i == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * len(text))
        pieces[split] = (start, text[start:stop])
        start = stop
    return pieces


def windows(ids: np.ndarray, length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """[N, length + 1] windows of `ids` starting every `length` ids (the last id of one is
    the first of the next); the tail that does not fill a window is dropped."""
    count = (len(ids) - 1) // length
    starts = np.arange(count) * length
    return ids[starts[:, None] + np.arange(length + 1)]


class CharCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Python documentation prose as 256-character language-modelling windows."""

    name = 'char_corpus'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {
        '1.0.0': 'pydoc_data.topics, 90/5/5 contiguous split, 256+1 character windows.'
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                'Character-level language modelling on the Python Language Reference '
                'topics shipped in the standard library (pydoc_data.topics).'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'inputs': token_ids_feature(SEQUENCE_LENGTH),
                    'targets': token_ids_feature(SEQUENCE_LENGTH),
                    # Character offset of inputs[0] in the joined text: where a window came from.
                    'offset': tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=('inputs', 'targets'),
            homepage='https://docs.python.org/3/reference/',
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # Windows stay in text order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The text ships with Python.
        text = load_text()
        pieces = split_text(text)
        vocab = CharVocabulary.build([pieces['train'][1]])
        store_vocabularies(self.info, {'inputs': vocab, 'targets': vocab})
        self.info.metadata['source'] = {
            'python_version': '.'.join(map(str, sys.version_info[:3])),
            'num_characters': len(text),
            'split_offsets': {
                split: [offset, offset + len(piece)] for split, (offset, piece) in pieces.items()
            },
        }
        return {
            split: self._generate_examples(offset, vocab.encode(piece))
            for split, (offset, piece) in pieces.items()
        }

    def _generate_examples(self, offset: int, ids: list[int]) -> Iterator[tuple[int, dict]]:
        for i, window in enumerate(windows(np.asarray(ids, dtype=np.int32))):
            yield (
                i,
                {
                    'inputs': window[:-1],
                    'targets': window[1:],
                    'offset': offset + i * SEQUENCE_LENGTH,
                },
            )
