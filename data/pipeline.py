"""The one input path: random-access source -> grain -> per-process numpy batches.

Both loaders are `grain.MapDataset`s over *batch* indices: batch k of epoch e
is a fixed slice of a permutation seeded by (seed, e), and each JAX process
reads only its contiguous part of every global batch. Working per batch
instead of per record (grain.DataLoader + IndexSampler) matters for speed:
grain's per-record overhead alone caps the DataLoader near 20k records/s on
one core, while one vectorised read per batch does not. Everything is a pure
function of (seed, step), so iterator state is just the step and restoring it
reproduces the following batches exactly.

Small splits are decoded once into RAM (`InMemorySource`): PNG decoding costs
~0.1 ms per image, which would otherwise bound throughput at ~10k images/s
per core. Images stay uint8 on the host; normalisation and augmentation are
done on device. Sets of encoded images of varying size (`data.jpeg.EncodedImageSource`,
imagenet2012) are never held in RAM: both loaders crop and decode them in grain worker
processes (data/jpeg.py), random-resized crops for training and centre crops for evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from data.jpeg import EncodedImageSource, default_worker_count

Batch = dict[str, np.ndarray]

# Decode a split into RAM when it takes at most this much (per process).
IN_MEMORY_MAX_BYTES = 2 * 1024**3


def _is_numeric(value: Any) -> bool:
    """Features a batch carries: numbers and arrays, not strings (kept for BLEU etc. only)."""
    array = np.asarray(value)
    return array.dtype.kind in 'biuf'


def _numeric_features(record: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in record.items() if _is_numeric(v))


class InMemorySource:
    """A whole split decoded into one array per numeric feature; random access in O(1).

    Image data sets hold `image` and `label`; sequence data sets `inputs`,
    `targets` and the like. String features are left out (read them from the
    TFDS source where needed, e.g. reference translations for BLEU).
    """

    def __init__(
        self,
        image: np.ndarray | None = None,
        label: np.ndarray | None = None,
        **features: np.ndarray,
    ):
        if image is not None:
            features['image'] = image
        if label is not None:
            features['label'] = label
        if not features:
            raise ValueError('InMemorySource needs at least one feature')
        lengths = {name: len(array) for name, array in features.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f'features have different numbers of examples: {lengths}')
        if 'label' in features:
            features['label'] = np.asarray(features['label']).astype(np.int32, copy=False)
        self.features = features

    @property
    def image(self) -> np.ndarray:
        return self.features['image']

    @property
    def label(self) -> np.ndarray:
        return self.features['label']

    @classmethod
    def from_source(
        cls, source: Sequence[dict[str, Any]], chunk_size: int = 4096
    ) -> InMemorySource:
        """Decodes every numeric feature of every record of `source` (batched reads, one pass)."""
        start_time = time.perf_counter()
        n = len(source)
        if n == 0:
            raise ValueError('cannot load an empty source into memory')
        first = _read_records(source, [0])[0]
        names = _numeric_features(first)
        arrays = {}
        for name in names:
            value = np.asarray(first[name])
            arrays[name] = np.empty((n, *value.shape), np.int32 if name == 'label' else value.dtype)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            records = _read_records(source, range(start, stop))
            # Assigning into the preallocated arrays also checks shapes agree.
            for name in names:
                arrays[name][start:stop] = [r[name] for r in records]
        logging.info(
            'Decoded %d records into memory (%.1f MB) in %.1fs',
            n,
            sum(a.nbytes for a in arrays.values()) / 1e6,
            time.perf_counter() - start_time,
        )
        return cls(**arrays)

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index] for name, array in self.features.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in indices]

    def gather(self, indices: np.ndarray) -> Batch:
        """A batch in one vectorised read."""
        return {name: array[indices] for name, array in self.features.items()}


def decoded_nbytes(source: Sequence[dict[str, Any]]) -> int | None:
    """Estimated RAM for the decoded numeric features of `source`; None if shapes vary."""
    if isinstance(source, InMemorySource):
        return sum(a.nbytes for a in source.features.values())
    if len(source) == 0:
        return 0
    info = getattr(source, 'dataset_info', None)  # TFDS data sources carry their info.
    if info is not None:
        first = _read_records(source, [0])[0]
        total = 0
        for name in _numeric_features(first):
            feature = info.features[name]
            shape = getattr(feature, 'shape', ())
            if any(d is None for d in shape):
                return None
            total += int(np.prod(shape)) * np.dtype(feature.np_dtype).itemsize
        return len(source) * total
    first = _read_records(source, [0])[0]
    return len(source) * sum(np.asarray(first[name]).nbytes for name in _numeric_features(first))


def maybe_in_memory(
    source: Sequence[dict[str, Any]], max_bytes: int = IN_MEMORY_MAX_BYTES
) -> Sequence[dict[str, Any]]:
    """`InMemorySource` of `source` if its decoded images fit in `max_bytes`, else `source`.

    Call once per split and reuse the result when the same split is read many
    times (e.g. evaluation every epoch).
    """
    if isinstance(source, InMemorySource | EncodedImageSource):
        return source  # Encoded images are decoded per batch, cropped anew every epoch.
    nbytes = decoded_nbytes(source)
    if nbytes is None or nbytes > max_bytes:
        return source
    return InMemorySource.from_source(source)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full global batches per epoch (train_loader drops the remainder)."""
    if global_batch_size <= 0:
        raise ValueError(f'global_batch_size must be positive, got {global_batch_size}')
    return num_examples // global_batch_size


def _read_records(
    source: Sequence[dict[str, Any]], indices: Sequence[int]
) -> Sequence[dict[str, Any]]:
    indices = [int(i) for i in indices]
    if hasattr(source, '__getitems__'):  # Batched read: one array_record call.
        return source.__getitems__(indices)
    return [source[i] for i in indices]


def _read_batch(source: Sequence[dict[str, Any]], indices: np.ndarray) -> Batch:
    """Every numeric feature of the records at `indices`, stacked ('label' as int32)."""
    if isinstance(source, InMemorySource):
        return source.gather(indices)
    records = _read_records(source, indices)
    batch = {
        name: np.stack([np.asarray(r[name]) for r in records])
        for name in _numeric_features(records[0])
    }
    if 'label' in batch:
        batch['label'] = batch['label'].astype(np.int32)
    return batch


def _process_share(
    global_batch_size: int, shard: bool, process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    """(offset of this process's rows in a global batch, per-process batch size)."""
    if not shard:
        return 0, global_batch_size
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f'process_index {index} out of range for {count} processes')
    if global_batch_size <= 0 or global_batch_size % count:
        raise ValueError(
            f'global_batch_size {global_batch_size} must be a positive multiple of the '
            f'number of JAX processes ({count})'
        )
    per_process = global_batch_size // count
    return index * per_process, per_process


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    # Seeded by (seed, epoch) so any step can be recomputed from scratch; the
    # cache keeps the current and next epoch hot while threads prefetch.
    permutation = np.random.default_rng((seed, epoch)).permutation(num_records)
    permutation.flags.writeable = False
    return permutation


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """step -> this process's share of global batch `step` (a picklable grain map)."""

    source: Any
    seed: int
    global_batch_size: int
    offset: int
    per_process: int
    readers: int = 1  # worker processes sharing each epoch (their corrupt-image allowance)

    def __call__(self, step: int) -> Batch:
        epoch, index_in_epoch = divmod(step, len(self.source) // self.global_batch_size)
        permutation = _epoch_permutation(len(self.source), self.seed, epoch)
        start = index_in_epoch * self.global_batch_size + self.offset
        indices = permutation[start : start + self.per_process]
        if isinstance(self.source, EncodedImageSource):
            return self.source.train_batch(
                indices, seed=self.seed, epoch=epoch, readers=self.readers
            )
        return _read_batch(self.source, indices)


def _in_workers(dataset: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    """`dataset` run in `worker_count` grain worker processes (in this one when 0)."""
    if worker_count <= 0:
        return dataset
    # grain's worker processes read absl flags; outside an absl app they
    # are unparsed and grain raises, so fall back to the flag defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))


def _training_source(
    source: Sequence[dict[str, Any]],
    global_batch_size: int,
    seed: int,
    shard: bool,
    in_memory: bool | None,
    process_index: int | None,
    process_count: int | None,
) -> tuple[Sequence[dict[str, Any]], int, int, int]:
    """Checks shared by the training loaders; -> (source, steps per epoch, row offset, rows per
    process).

    `in_memory=None` decodes the split into RAM when it fits, True always, False never.
    """
    if seed < 0:
        raise ValueError(f'seed must be non-negative, got {seed}')
    offset, per_process = _process_share(global_batch_size, shard, process_index, process_count)
    steps = steps_per_epoch(len(source), global_batch_size)
    if steps == 0:
        raise ValueError(
            f'split of {len(source)} examples is smaller than global_batch_size {global_batch_size}'
        )
    if in_memory and isinstance(source, EncodedImageSource):
        raise ValueError(
            'in_memory=True cannot hold a source of encoded images: they are cropped anew '
            'every epoch; use in_memory=None or False'
        )
    if in_memory is None:
        source = maybe_in_memory(source)
    elif in_memory and not isinstance(source, InMemorySource):
        source = InMemorySource.from_source(source)
    return source, steps, offset, per_process


def train_loader(
    source: Sequence[dict[str, Any]],
    *,
    global_batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    worker_count: int = 0,
    shard: bool = True,
    in_memory: bool | None = None,
    read_threads: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Shuffled training batches of every numeric feature ('image', 'label' int32; or 'inputs',
    'targets' for sequences) for this JAX process.

    Each epoch is a fresh permutation of the split seeded by (seed, epoch);
    the last incomplete global batch is dropped. Every process reads its own
    `global_batch_size // process_count` rows of each global batch (all rows
    when `shard=False`). `iter(loader)` gives a grain iterator whose
    `get_state()`/`set_state()` checkpoint the position. `num_epochs=None`
    repeats forever. `in_memory=None` decodes the split into RAM now (one
    pass) when it fits in IN_MEMORY_MAX_BYTES, True always, False never;
    `worker_count > 0` reads in that many processes
    (for large datasets with costly decoding); an `EncodedImageSource` is always cropped and
    decoded in worker processes (`data.jpeg.default_worker_count()` of them when 0).
    `process_index`/`process_count` override JAX's (for tests and tools).
    """
    source, steps, offset, per_process = _training_source(
        source, global_batch_size, seed, shard, in_memory, process_index, process_count
    )
    encoded = isinstance(source, EncodedImageSource)
    if encoded and worker_count <= 0:
        worker_count = default_worker_count()
    reader = _TrainBatch(source, seed, global_batch_size, offset, per_process, max(1, worker_count))
    num_steps = sys.maxsize if num_epochs is None else steps * num_epochs
    # In-memory batches are a single gather: extra threads only add overhead. Decoding
    # workers hold one batch in flight each: threads there would only multiply the memory.
    threads = read_threads or (1 if isinstance(source, InMemorySource) or encoded else 4)
    dataset = (
        grain.MapDataset.range(num_steps)
        .map(reader)
        .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    )
    return _in_workers(dataset, worker_count)


@functools.lru_cache(maxsize=4)
def _stream_start(spare: int, seed: int, epoch: int) -> int:
    # Which of the `spare` records left over by B equal streams are skipped at the front this
    # epoch: a pure function of (seed, epoch), so every epoch cuts the streams a little
    # differently and any step can be recomputed.
    return int(np.random.default_rng((seed, epoch)).integers(spare + 1))


@dataclasses.dataclass(frozen=True)
class _StreamBatch:
    """step -> this process's rows of global stream batch `step` (a picklable grain map)."""

    source: Any
    seed: int
    global_batch_size: int
    offset: int
    per_process: int

    def __call__(self, step: int) -> Batch:
        chunks = len(self.source) // self.global_batch_size
        epoch, chunk = divmod(step, chunks)
        start = _stream_start(len(self.source) - chunks * self.global_batch_size, self.seed, epoch)
        rows = np.arange(self.offset, self.offset + self.per_process)
        batch = _read_batch(self.source, start + rows * chunks + chunk)
        batch['reset'] = np.full(self.per_process, chunk == 0)
        return batch


def stream_loader(
    source: Sequence[dict[str, Any]],
    *,
    global_batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard: bool = True,
    in_memory: bool | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Batches of B = `global_batch_size` parallel contiguous streams, for truncated BPTT.

    For sources whose records are consecutive pieces of one long sequence (char_corpus:
    256-character windows in text order). Each epoch splits the records into B streams of
    C = len(source) // B consecutive records; global batch k of the epoch holds record
    (s + row·C + k) in each row, so row r of step k+1 continues exactly where row r of step
    k stopped, and a recurrent model can carry its state from one step to the next. The
    len(source) - B·C spare records are skipped, s of them at the front, s drawn from
    (seed, epoch). Every batch also has 'reset' (bool, per row): True at the first step of
    an epoch, when the streams start over and a carried state must start from zero.

    Epochs have C steps, as `train_loader`'s. Sharding over processes, `num_epochs`,
    `in_memory` and checkpointing (`get_state`/`set_state` of `iter(loader)`) work as in
    `train_loader`; reading is in the main process (text sources are small).
    """
    if isinstance(source, EncodedImageSource):
        raise ValueError('stream_loader reads token streams, not encoded images; use train_loader')
    source, steps, offset, per_process = _training_source(
        source, global_batch_size, seed, shard, in_memory, process_index, process_count
    )
    reader = _StreamBatch(source, seed, global_batch_size, offset, per_process)
    num_steps = sys.maxsize if num_epochs is None else steps * num_epochs
    threads = 1 if isinstance(source, InMemorySource) else 4
    return (
        grain.MapDataset.range(num_steps)
        .map(reader)
        .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    )


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """k -> this process's share of global eval batch k, padded and masked."""

    source: Any
    global_batch_size: int
    offset: int
    per_process: int
    readers: int = 1  # worker processes sharing the pass (their corrupt-image allowance)

    def __call__(self, k: int) -> Batch:
        n = len(self.source)
        start = k * self.global_batch_size + self.offset
        indices = np.arange(start, start + self.per_process)
        mask = indices < n
        # Padding rows re-read example 0 (keeps shapes) and are zeroed below.
        if isinstance(self.source, EncodedImageSource):
            batch = self.source.eval_batch(np.where(mask, indices, 0), readers=self.readers)
            mask &= batch.pop('valid')  # Records that do not decode are left out, as padding.
        else:
            batch = _read_batch(self.source, np.where(mask, indices, 0))
        for array in batch.values():
            array[~mask] = 0
        batch['mask'] = mask
        return batch


def eval_batches(
    source: Sequence[dict[str, Any]],
    *,
    global_batch_size: int,
    read_threads: int = 4,
    worker_count: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """One in-order pass over the split: its numeric features and 'mask' (bool).

    Global batch k holds examples [k*B, (k+1)*B); process i takes rows
    [i*B/P, (i+1)*B/P) of it. Every process yields ceil(N / B) batches of
    B / P rows; rows past the end of the split are zero with mask False, so
    summing masked metrics over all processes counts each example once.
    `worker_count` grain worker processes read the batches (None: in this process, except
    for an `EncodedImageSource`, whose centre crops `data.jpeg.default_worker_count()`
    processes decode; its records that do not decode have mask False).
    """
    offset, per_process = _process_share(global_batch_size, True, process_index, process_count)
    if len(source) == 0:
        return iter(())
    encoded = isinstance(source, EncodedImageSource)
    if worker_count is None:
        worker_count = default_worker_count() if encoded else 0
    num_batches = -(-len(source) // global_batch_size)
    reader = _EvalBatch(source, global_batch_size, offset, per_process, max(1, worker_count))
    threads = 1 if encoded and worker_count > 0 else read_threads
    dataset = (
        grain.MapDataset.range(num_batches)
        .map(reader)
        .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    )
    return iter(_in_workers(dataset, worker_count))
