"""Where datasets live and how to open them: names -> TFDS builders -> sources.

Every dataset, local or from the TFDS catalogue, is read the same way: a TFDS
builder prepared in array_record format under a data dir, opened as a
random-access `ArrayRecordDataSource` per split. Nothing here downloads; an
unprepared dataset fails fast with the command that prepares it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data import jpeg
from data.builders.sequences import vocabularies_of
from data.tokenizers import Vocabulary

DEFAULT_DATA_DIR: str = os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
    '~/tensorflow_datasets'
)

# Datasets whose builders ship in this repo and prepare offline: name -> 'module:Class' in
# data/builders/, imported on first use (a run imports its own builder, not all ten).
LOCAL_DATASETS: dict[str, str] = {
    'fashion_mnist': 'fashion_mnist:FashionMnist',
    'mnist5k': 'mnist5k:Mnist5k',
    'digits': 'digits:Digits',
    'mnist1d': 'mnist1d:Mnist1d',
    'mnist1d_shuffled': 'mnist1d:Mnist1dShuffled',
    'char_corpus': 'char_corpus:CharCorpus',
    'translation': 'translation:Translation',
    'addition': 'addition:Addition',
    'digit_captions': 'digit_captions:DigitCaptions',
    'imagenet_standin': 'imagenet_standin:ImagenetStandin',
}


def local_builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """The builder class of local data set `name` (a key of LOCAL_DATASETS)."""
    module, _, cls = LOCAL_DATASETS[name].partition(':')
    return getattr(importlib.import_module(f'data.builders.{module}'), cls)


# Mean/std cache written next to the prepared array_record files.
STATS_FILENAME = 'image_stats.json'
# Standard TFDS sets can be huge; their stats come from an evenly spaced subset (as do those of
# sets whose images are encoded JPEGs, decoded one by one).
MAX_STATS_EXAMPLES_STANDARD = 10_000

_REQUIRED_FORMAT = 'array_record'


class DatasetNotPreparedError(RuntimeError):
    """The dataset is not on disk under the data dir in array_record format."""


class UnknownDatasetError(ValueError):
    """No local builder and no TFDS catalogue entry has this name."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and trainer need to know about a prepared dataset.

    Normalise on device as (x / 255 - mean) / std when image_dtype == 'uint8',
    else (x - mean) / std; mean/std are per channel over the train split.

    Sequence data sets (no `label`; see data/builders/sequences.py) describe their
    per-token outputs: num_classes / class_names are the `targets` vocabulary, and
    example_shape / image_dtype the `image` or else the `inputs` feature; mean/std are
    empty for token inputs. vocab_sizes maps each token feature to its vocabulary size
    (`load_vocabularies` gives the vocabularies themselves).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    example_shape: tuple[int | None, ...]
    image_dtype: str
    splits: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    vocab_sizes: dict[str, int] = dataclasses.field(default_factory=dict)


def list_datasets() -> list[str]:
    """Names of the datasets this repo can prepare offline."""
    return sorted(LOCAL_DATASETS)


def is_local(name: str) -> bool:
    """Whether `name` is a local data set, or one of its configs ('imagenet_standin/large')."""
    return name.partition('/')[0] in LOCAL_DATASETS


# Where datasets under a gs:// data dir are copied to (ArrayRecord's reader opens local files
# only): $DEEPNETS_GCS_CACHE, else ~/.cache/deepnets/gcs.
GCS_CACHE_DIR = os.environ.get('DEEPNETS_GCS_CACHE') or os.path.expanduser('~/.cache/deepnets/gcs')


def _resolve_data_dir(data_dir: str | os.PathLike | None, name: str | None = None) -> str:
    """The data dir to read from: a gs:// URL's dataset `name` is copied, once, to a local cache
    (GCS_CACHE_DIR/<bucket>/<path>) and that folder returned; without `name` the URL itself."""
    data_dir = os.fspath(os.path.expanduser(data_dir)) if data_dir else DEFAULT_DATA_DIR
    if not data_dir.startswith('gs://') or name is None:
        return data_dir
    local = os.path.join(GCS_CACHE_DIR, data_dir[len('gs://') :].strip('/'))
    _copy_missing(epath.Path(data_dir) / _base_name(name), epath.Path(local) / _base_name(name))
    return local


def _copy_missing(source: epath.Path, target: epath.Path) -> None:
    """Copies every file under `source` that `target` lacks or holds at another size (a partial
    copy of a killed run is completed; a finished one costs one listing)."""
    if not source.is_dir():
        return  # nothing there: the builder's "not prepared" error names the URL's copy
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_missing(entry, target / entry.name)
            continue
        local = target / entry.name
        if local.exists() and local.stat().length == entry.stat().length:
            continue
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f'{entry.name}.partial'
        with entry.open('rb') as remote, open(partial, 'wb') as copy:
            shutil.copyfileobj(remote, copy, 1 << 24)
        partial.rename(local)  # whole or absent


def get_builder(
    name: str, data_dir: str | os.PathLike | None = None, **builder_kwargs: Any
) -> tfds.core.DatasetBuilder:
    """The array_record TFDS builder for `name` (local builders first); never downloads.

    `builder_kwargs` go to the builder, e.g. `source_dir=` for fashion_mnist.
    """
    data_dir = _resolve_data_dir(data_dir, name)
    if is_local(name):
        base, _, config = name.partition('/')
        if config:  # 'name/config' picks a builder config, as TFDS names do.
            builder_kwargs = {'config': config, **builder_kwargs}
        make = functools.partial(
            local_builder_class(base),
            data_dir=data_dir,
            file_format=_REQUIRED_FORMAT,
            **builder_kwargs,
        )
    else:
        # Check the registry by class lookup first: it is local and instant, and
        # keeps names like "ns:dataset" away from TFDS's community (GCS) index.
        try:
            tfds.builder_cls(_base_name(name))
        except tfds.core.registered.DatasetNotFoundError:
            raise UnknownDatasetError(
                f'Unknown dataset {name!r}. Local datasets: {", ".join(list_datasets())}. '
                'Any TFDS catalogue name (e.g. mnist, cifar10, imagenet2012) also works once '
                'it is prepared in array_record format under the data dir.'
            ) from None
        # try_gcs=False: never look for pre-built data on Google Cloud Storage.
        make = functools.partial(
            tfds.builder,
            name,
            data_dir=data_dir,
            file_format=_REQUIRED_FORMAT,
            try_gcs=False,
            **builder_kwargs,
        )
    try:
        return make()
    except ValueError as e:
        # TFDS refuses to open data written in another format as array_record.
        if 'File format is already set' not in str(e):
            raise
        found = re.search(r'already set to FileFormat\.(\w+)', str(e))
        detail = f'found {found.group(1).lower()} files' if found else str(e)
        raise DatasetNotPreparedError(_wrong_format_message(name, data_dir, detail)) from None


def _base_name(name: str) -> str:
    return name.split('/')[0].split(':')[0]


def _prepare_hint(name: str, data_dir: str) -> str:
    if is_local(name):
        return (
            f'Prepare it with `python -m data.prepare --datasets={name} --data_dir={data_dir}` '
            '(or `make data`).'
        )
    return (
        f'On a machine with internet access run `tfds build {name} --file_format=array_record '
        f'--data_dir=SOME_DIR`, then copy SOME_DIR/{_base_name(name)} into {data_dir}.'
    )


def _wrong_format_message(name: str, data_dir: str, detail: str) -> str:
    return (
        f'Dataset {name!r} under {data_dir} is not in {_REQUIRED_FORMAT} format ({detail}); '
        'this project reads only array_record (random access). Delete that dataset folder or use '
        'another data dir, then rebuild it. ' + _prepare_hint(name, data_dir)
    )


def _prepared_file_formats(builder: tfds.core.DatasetBuilder) -> set[str]:
    # Read the on-disk metadata: builder.info reports the format we asked for,
    # not the one the files were written in.
    info = json.loads((builder.data_path / 'dataset_info.json').read_text())
    return {info.get('fileFormat') or 'tfrecord', *info.get('alternativeFileFormats', [])}


def _split_names(split: str) -> list[str]:
    # "train[:90%]+test" -> ["train", "test"]; TFDS handles the slicing itself.
    return [re.sub(r'\[.*\]$', '', part.strip()) for part in split.split('+')]


def prepared_builder(
    name: str, data_dir: str | os.PathLike | None = None
) -> tfds.core.DatasetBuilder:
    """`get_builder`, raising DatasetNotPreparedError unless array_record data is on disk."""
    data_dir = _resolve_data_dir(data_dir)
    builder = get_builder(name, data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f'Dataset {name!r} is not prepared under {data_dir} (looked in {builder.data_dir}). '
            + _prepare_hint(name, data_dir)
        )
    formats = _prepared_file_formats(builder)
    if _REQUIRED_FORMAT not in formats:
        raise DatasetNotPreparedError(
            _wrong_format_message(
                name, data_dir, f'{builder.data_dir} holds {", ".join(sorted(formats))} files'
            )
        )
    return builder


def load_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_options: jpeg.ImageOptions | None = None,
) -> Sequence[dict[str, Any]]:
    """Random-access source (`ArrayRecordDataSource`) of decoded records for one split.

    `split` may use TFDS slicing, e.g. "train[:90%]". A set whose `image` is encoded and varies
    in size (imagenet2012, imagenet_standin) gives a `jpeg.EncodedImageSource` instead: images
    stay encoded and the loaders crop and decode them as `image_options` say (default
    `jpeg.ImageOptions()`).
    """
    builder = prepared_builder(name, data_dir)
    available = list(builder.info.splits)
    unknown = [s for s in _split_names(split) if s not in available]
    if unknown:
        raise ValueError(
            f'Unknown split {split!r} for {name!r}; available splits: {", ".join(available)}.'
        )
    if jpeg.has_encoded_images(builder.info):
        return _encoded_source(builder, split, image_options or jpeg.ImageOptions())
    return builder.as_data_source(split=split)


def _encoded_source(
    builder: tfds.core.DatasetBuilder, split: str, options: jpeg.ImageOptions
) -> jpeg.EncodedImageSource:
    # SkipDecoding: the records carry the encoded bytes; the loaders' workers decode them.
    records = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    return jpeg.EncodedImageSource(records, options, jpeg.image_channels(builder.info))


def compute_image_stats(
    source: Sequence[dict[str, Any]], max_examples: int | None = None, chunk_size: int = 2048
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel (mean, std, num_examples_used) of `image`; uint8 scaled to [0, 1].

    With `max_examples`, uses that many evenly spaced examples (deterministic).
    """
    n = len(source)
    if n == 0:
        raise ValueError('cannot compute image statistics of an empty split')
    count = n if max_examples is None else min(n, max_examples)
    indices = np.linspace(0, n - 1, count).round().astype(np.int64) if count < n else np.arange(n)
    total = total_sq = None
    num_values = 0
    for start in range(0, count, chunk_size):
        chunk = [int(i) for i in indices[start : start + chunk_size]]
        images = np.stack([r['image'] for r in source.__getitems__(chunk)])
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        # float64 sums keep the variance exact enough over millions of pixels.
        values = images.reshape(-1, images.shape[-1]).astype(np.float64) / scale
        total = values.sum(0) + (0 if total is None else total)
        total_sq = (values**2).sum(0) + (0 if total_sq is None else total_sq)
        num_values += len(values)
    mean = total / num_values
    std = np.sqrt(np.maximum(total_sq / num_values - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), count


def _load_or_compute_stats(name: str, builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
    path = builder.data_path / STATS_FILENAME
    if path.exists():
        return json.loads(path.read_text())
    if 'train' not in builder.info.splits:
        raise ValueError(f'{name!r} has no train split to compute normalisation statistics from')
    if jpeg.has_encoded_images(builder.info):
        mean, std, used = jpeg.image_stats(
            _encoded_source(builder, 'train', jpeg.ImageOptions()), MAX_STATS_EXAMPLES_STANDARD
        )
    else:
        max_examples = None if is_local(name) else MAX_STATS_EXAMPLES_STANDARD
        mean, std, used = compute_image_stats(builder.as_data_source(split='train'), max_examples)
    stats = {'split': 'train', 'num_examples': used, 'mean': mean, 'std': std}
    try:
        path.write_text(json.dumps(stats, indent=2))
    except OSError as e:  # Read-only data dirs (e.g. shared buckets) still work, uncached.
        logging.warning('Could not cache image stats at %s: %s', path, e)
    return stats


def dataset_info(
    name: str, data_dir: str | os.PathLike | None = None, *, image_size: int | None = None
) -> DatasetInfo:
    """Shapes, classes, split sizes and train mean/std of a prepared dataset.

    Statistics are computed once (at prepare time for local sets, else on the
    first call) and cached as image_stats.json in the dataset's folder. Sets whose images
    are encoded and vary in size (see `load_source`) have examples of shape
    (image_size, image_size, channels), image_size defaulting to jpeg.DEFAULT_IMAGE_SIZE.
    """
    data_dir = _resolve_data_dir(data_dir)
    builder = prepared_builder(name, data_dir)
    features = builder.info.features
    vocabularies = vocabularies_of(builder.info)
    input_name = 'image' if 'image' in features else 'inputs'
    if input_name not in features or ('label' not in features and 'targets' not in vocabularies):
        raise ValueError(
            f"{name!r} has features {list(features)}; this project needs 'image' and 'label', "
            "or 'image'/'inputs' and 'targets' with a vocabulary"
        )
    if 'label' in features:
        num_classes, class_names = (
            int(features['label'].num_classes),
            tuple(features['label'].names),
        )
    else:  # A sequence model's classes are the target tokens.
        num_classes, class_names = len(vocabularies['targets']), vocabularies['targets'].tokens
    example = features[input_name]
    example_shape = tuple(example.shape)
    if input_name == 'image' and jpeg.has_encoded_images(builder.info):
        size = image_size or jpeg.DEFAULT_IMAGE_SIZE
        example_shape = (size, size, jpeg.image_channels(builder.info))
    stats = (
        _load_or_compute_stats(name, builder) if input_name == 'image' else {'mean': (), 'std': ()}
    )
    return DatasetInfo(
        name=name,
        num_classes=num_classes,
        class_names=class_names,
        example_shape=example_shape,
        image_dtype=np.dtype(example.np_dtype).name,
        splits={split: int(info.num_examples) for split, info in builder.info.splits.items()},
        mean=tuple(stats['mean']),
        std=tuple(stats['std']),
        vocab_sizes={feature: len(vocab) for feature, vocab in vocabularies.items()},
    )


def load_vocabularies(
    name: str, data_dir: str | os.PathLike | None = None
) -> dict[str, Vocabulary]:
    """Token feature name ('inputs', 'targets') -> data.tokenizers vocabulary of a prepared
    sequence data set; empty for image sets."""
    return vocabularies_of(prepared_builder(name, data_dir).info)
