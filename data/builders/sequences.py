"""What the sequence builders share: token-id features and vocabularies kept in the metadata.

Every sequence data set names its token features the same way so one loader and one task
can serve them all: `inputs` (what the model reads; an `image` instead for captions) and
`targets` (what it predicts), int32 ids padded with PAD_ID to a fixed length, with the
vocabulary of each stored in the builder's metadata (`metadata.json` next to the
array_record files, restored by TFDS whenever the prepared data set is opened).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from data.tokenizers import Vocabulary, vocabulary_from_dict

VOCABULARIES_KEY = 'vocabularies'


def token_ids_feature(length: int) -> tfds.features.Tensor:
    """int32 token ids of a fixed length (PAD_ID after the end)."""
    return tfds.features.Tensor(shape=(length,), dtype=np.int32)


def store_vocabularies(info: tfds.core.DatasetInfo, vocabularies: Mapping[str, Vocabulary]) -> None:
    """Records feature name -> vocabulary in `info.metadata` (written when the data is).

    The builder's `_info` must pass `metadata=tfds.core.MetadataDict()`.
    """
    if info.metadata is None:
        raise ValueError(
            f'{info.name}: DatasetInfo needs metadata=tfds.core.MetadataDict() to hold vocabularies'
        )
    info.metadata[VOCABULARIES_KEY] = {
        feature: vocab.to_dict() for feature, vocab in vocabularies.items()
    }


def vocabularies_of(info: tfds.core.DatasetInfo) -> dict[str, Vocabulary]:
    """Feature name -> vocabulary of a prepared data set; empty for sets without any."""
    stored = (info.metadata or {}).get(VOCABULARIES_KEY, {})
    return {feature: vocabulary_from_dict(description) for feature, description in stored.items()}
