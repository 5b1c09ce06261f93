"""translation: English -> Spanish verse pairs from two public-domain Bibles.

Source: Debian's `sword-text-web` (World English Bible, SWORD module engWEB2015eb, 2020
stable text) and `sword-text-sparv` (Reina-Valera 1909, module spaRV1909eb), both in the
Public Domain (see /usr/share/doc/sword-text-{web,sparv}/copyright), read from the SWORD
library at /usr/share/sword, $SWORD_PATH or Translation(source_dir=...). Install with
`apt-get install sword-text-web sword-text-sparv` (6.7 MB, no other packages). Chosen
over the gettext catalogues under /usr/share/locale (about 25,000 short English/French
UI strings, but spread over ~80 packages with as many licences and versions, and changing
with whatever is installed): two pinned packages give ~30,000 real, aligned sentences.

Pairs are the verses both modules have under the same reference ("John.3.16"; see
data.builders.sword), as plain text (footnotes and headings dropped). Kept: both sides
non-empty and different, each at most MAX_LENGTH - 1 word tokens (room for EOS_ID), token
counts within a factor MAX_LENGTH_RATIO of each other (the 1909 edition sometimes draws
verse boundaries elsewhere, which shows up as a lopsided pair), and the first pair of each
English text (repeated verses such as "Yahweh spoke to Moses, saying," stay in one split).
The kept pairs, in canonical order, are shuffled once with numpy default_rng(SEED): the
first NUM_VALIDATION are validation, the next NUM_TEST test, the rest train.

Tokens: lower-cased words and single punctuation marks (data.tokenizers.WordVocabulary),
one vocabulary per language built from the train split only (words seen at least
MIN_COUNT times, at most MAX_VOCAB_SIZE ids). `inputs` (English) and `targets` (Spanish)
are the ids then EOS_ID, padded with PAD_ID to MAX_LENGTH; `source_text` / `target_text`
keep the cased strings (for BLEU) and `reference` the verse.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data.builders import sword
from data.builders.sequences import store_vocabularies, token_ids_feature
from data.tokenizers import WordVocabulary

SOURCE_MODULE = 'engWEB2015eb'  # World English Bible (English)
TARGET_MODULE = 'spaRV1909eb'  # Reina-Valera 1909 (Spanish)
INSTALL_HINT = 'apt-get install sword-text-web sword-text-sparv'
MAX_LENGTH = 64
MAX_LENGTH_RATIO = 2.0
SEED = 0
NUM_VALIDATION = 1_000
NUM_TEST = 1_000
MIN_COUNT = 2
MAX_VOCAB_SIZE = 16_000

# The word tokenizer used for filtering and for the vocabularies (before any vocabulary).
_TOKENIZER = WordVocabulary((), lowercase=True)


def load_pairs(source_dir: str | os.PathLike | None = None) -> list[tuple[str, str, str]]:
    """(reference, English, Spanish) plain-text verse pairs present in both modules, in
    canonical order, before any filtering.

    Raises FileNotFoundError with the install command when a module is missing.
    """
    library = sword.resolve_library(source_dir)
    try:
        english = sword.read_verses(library, SOURCE_MODULE)
        spanish = sword.read_verses(library, TARGET_MODULE)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}. The translation data set reads the Bibles of Debian's sword-text-web and "
            f'sword-text-sparv: `{INSTALL_HINT}` (they go to {sword.DEFAULT_LIBRARY}), or point '
            f'${sword.LIBRARY_ENV} or Translation(source_dir=...) at a SWORD library holding '
            f'{SOURCE_MODULE} and {TARGET_MODULE}.'
        ) from None
    return [
        (ref, sword.plain_text(english[ref]), sword.plain_text(spanish[ref]))
        for ref in english
        if ref in spanish
    ]


def clean_pairs(pairs: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The pairs kept by the rules in the module docstring, in their given order."""
    kept, seen_sources = [], set()
    for reference, source, target in pairs:
        source_length, target_length = len(_TOKENIZER.split(source)), len(_TOKENIZER.split(target))
        if not source_length or not target_length or source.casefold() == target.casefold():
            continue
        if max(source_length, target_length) > MAX_LENGTH - 1:
            continue
        if max(source_length, target_length) > MAX_LENGTH_RATIO * min(source_length, target_length):
            continue
        if source in seen_sources:
            continue
        seen_sources.add(source)
        kept.append((reference, source, target))
    return kept


def split_pairs(
    pairs: Sequence[tuple[str, str, str]],
    *,
    num_validation: int = NUM_VALIDATION,
    num_test: int = NUM_TEST,
    seed: int = SEED,
) -> dict[str, list[tuple[str, str, str]]]:
    """One fixed shuffle, then validation, test and the rest as train."""
    if num_validation + num_test >= len(pairs):
        raise ValueError(
            f'{len(pairs)} pairs leave nothing to train on after '
            f'{num_validation} validation + {num_test} test'
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    return {
        'train': shuffled[num_validation + num_test :],
        'validation': shuffled[:num_validation],
        'test': shuffled[num_validation : num_validation + num_test],
    }


def build_vocabularies(train: Sequence[tuple[str, str, str]]) -> dict[str, WordVocabulary]:
    """inputs (English) and targets (Spanish) vocabularies from the train pairs only."""
    return {
        feature: WordVocabulary.build(
            (pair[column] for pair in train),
            min_count=MIN_COUNT,
            max_size=MAX_VOCAB_SIZE,
            lowercase=True,
        )
        for feature, column in (('inputs', 1), ('targets', 2))
    }


class Translation(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """English -> Spanish Bible verses (WEB -> Reina-Valera 1909), word tokens, <= 64 ids."""

    name = 'translation'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': f'{SOURCE_MODULE} -> {TARGET_MODULE} verse pairs, seed {SEED}.'}

    def __init__(
        self,
        *,
        source_dir: str | os.PathLike | None = None,
        num_validation: int = NUM_VALIDATION,
        num_test: int = NUM_TEST,
        **kwargs,
    ):
        # Resolved lazily: a prepared data set must load without the SWORD modules. The
        # split sizes are for tests on tiny libraries; a prepared set keeps its own.
        self._source_dir = source_dir
        self._num_validation, self._num_test = num_validation, num_test
        super().__init__(**kwargs)
        # TFDS re-creates builders from _original_state.
        self._original_state.update(
            source_dir=source_dir, num_validation=num_validation, num_test=num_test
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                'English -> Spanish verse pairs: World English Bible -> Reina-Valera 1909 '
                '(public domain, Debian sword-text-web / sword-text-sparv).'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'inputs': token_ids_feature(MAX_LENGTH),
                    'targets': token_ids_feature(MAX_LENGTH),
                    'source_text': tfds.features.Text(),
                    'target_text': tfds.features.Text(),
                    'reference': tfds.features.Text(),
                }
            ),
            supervised_keys=('inputs', 'targets'),
            homepage='https://ebible.org/web/',
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # Records keep the documented shuffled order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Never downloads.
        splits = split_pairs(
            clean_pairs(load_pairs(self._source_dir)),
            num_validation=self._num_validation,
            num_test=self._num_test,
        )
        vocabularies = build_vocabularies(splits['train'])
        store_vocabularies(self.info, vocabularies)
        self.info.metadata['source'] = {'modules': [SOURCE_MODULE, TARGET_MODULE]}
        return {
            split: self._generate_examples(pairs, vocabularies) for split, pairs in splits.items()
        }

    def _generate_examples(
        self, pairs: Sequence[tuple[str, str, str]], vocabularies: dict[str, WordVocabulary]
    ) -> Iterator[tuple[int, dict]]:
        for i, (reference, source, target) in enumerate(pairs):
            yield (
                i,
                {
                    'inputs': vocabularies['inputs'].encode_padded(source, MAX_LENGTH),
                    'targets': vocabularies['targets'].encode_padded(target, MAX_LENGTH),
                    'source_text': source,
                    'target_text': target,
                    'reference': reference,
                },
            )
