"""Datasets for every model: TFDS array_record sources read through grain.

    from data import load_source, dataset_info, train_loader, eval_batches
    info = dataset_info("fashion_mnist")
    train = train_loader(load_source("fashion_mnist", "train"), global_batch_size=128, seed=0)
    batch = next(iter(train))  # {'image': uint8 [B,28,28,1], 'label': int32 [B]}

Prepare the offline datasets first: `python -m data.prepare`, or from code
`from data.prepare import prepare; prepare(['digits'], data_dir)` (not imported here, so that
`python -m data.prepare` runs a module that is not loaded yet).
"""

from data.catalog import (
    DEFAULT_DATA_DIR,
    LOCAL_DATASETS,
    DatasetInfo,
    DatasetNotPreparedError,
    UnknownDatasetError,
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

__all__ = [
    'DEFAULT_DATA_DIR',
    'LOCAL_DATASETS',
    'DatasetInfo',
    'DatasetNotPreparedError',
    'UnknownDatasetError',
    'InMemorySource',
    'stream_loader',
    'dataset_info',
    'eval_batches',
    'get_builder',
    'list_datasets',
    'load_source',
    'maybe_in_memory',
    'steps_per_epoch',
    'train_loader',
]
