"""Datasets for every model: TFDS array_record sources read through grain.

    from data import load_source, dataset_info, train_loader, eval_batches
    info = dataset_info("fashion_mnist")
    train = train_loader(load_source("fashion_mnist", "train"), global_batch_size=128, seed=0)
    batch = next(iter(train))  # {'image': uint8 [B,28,28,1], 'label': int32 [B]}

Prepare the offline datasets first: `python -m data.prepare`, or from code
`data.prepare(["digits"], data_dir)` (same as `from data.prepare import prepare`).
"""

import importlib

from data.catalog import (
    DEFAULT_DATA_DIR,
    LOCAL_DATASETS,
    DatasetInfo,
    DatasetNotPreparedError,
    dataset_info,
    get_builder,
    list_datasets,
    load_source,
)
from data.pipeline import (
    InMemorySource,
    eval_batches,
    maybe_in_memory,
    steps_per_epoch,
    stream_loader,
    train_loader,
)


def __getattr__(name: str):
    # Imported on first use, not here, so `python -m data.prepare` does not
    # find its module already loaded (runpy warns). The module is callable.
    if name == 'prepare':
        return importlib.import_module('data.prepare')
    raise AttributeError(f"module 'data' has no attribute {name!r}")


__all__ = [
    'DEFAULT_DATA_DIR',
    'LOCAL_DATASETS',
    'DatasetInfo',
    'DatasetNotPreparedError',
    'InMemorySource',
    'stream_loader',
    'dataset_info',
    'eval_batches',
    'get_builder',
    'list_datasets',
    'load_source',
    'maybe_in_memory',
    'prepare',
    'steps_per_epoch',
    'train_loader',
]
