"""Prepare the offline datasets in array_record format (no downloads).

    python -m data.prepare --datasets=fashion_mnist,mnist5k,digits,mnist1d,mnist1d_shuffled \
        --data_dir=DIR [--fashion_mnist_dir=DIR_WITH_IDX_FILES]
    python -m data.prepare imagenet_standin imagenet_standin/large   # names as arguments

Idempotent: prepared datasets are reported and skipped. Also computes the
train-split mean/std cached next to the data (see data.catalog.dataset_info).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app, flags, logging

from data import catalog
from train import cli


def prepare(
    names: Sequence[str] | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    fashion_mnist_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> dict[str, catalog.DatasetInfo]:
    """Prepares each local dataset (skipping prepared ones) and returns its DatasetInfo."""
    names = list(names) if names is not None else catalog.list_datasets()
    unknown = [n for n in names if not catalog.is_local(n)]
    if unknown:
        raise ValueError(
            f'Cannot prepare {", ".join(unknown)} offline; local datasets: '
            f'{", ".join(catalog.list_datasets())}. Standard TFDS datasets are built elsewhere: '
            '`tfds build NAME --file_format=array_record`.'
        )
    tfds.disable_progress_bar()  # Per-example bars drown the summary lines.
    results = {}
    for name in names:
        start = time.perf_counter()
        kwargs = {'source_dir': fashion_mnist_dir} if name == 'fashion_mnist' else {}
        builder = catalog.get_builder(name, data_dir, **kwargs)
        already = builder.is_prepared()
        if not already:
            builder.download_and_prepare()
        info = catalog.dataset_info(name, data_dir)  # Computes and caches mean/std once.
        results[name] = info
        if verbose:
            sizes = ', '.join(f'{split} {n:,}' for split, n in info.splits.items())
            status = (
                'already prepared' if already else f'prepared in {time.perf_counter() - start:.1f}s'
            )
            print(f'{name}: {status} at {builder.data_dir} ({sizes})', flush=True)
    return results


def _define_flags() -> None:
    # Defined only when run as a script: importing prepare() from a trainer
    # must not claim global flag names such as --data_dir.
    flags.DEFINE_list(
        'datasets', catalog.list_datasets(), 'Comma-separated local dataset names to prepare.'
    )
    flags.DEFINE_string('data_dir', None, f'TFDS data dir (default {catalog.DEFAULT_DATA_DIR}).')
    flags.DEFINE_string(
        'fashion_mnist_dir',
        None,
        'Directory with the four Fashion-MNIST idx files (default $FASHION_MNIST_DIR, '
        'else /usr/share/datasets/fashion-mnist).',
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1 and flags.FLAGS['datasets'].present:
        raise app.UsageError(f'Name the datasets either as arguments or with --datasets: {argv}')
    if not flags.FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # TFDS INFO lines bury the summary.
    prepare(
        argv[1:] or flags.FLAGS.datasets,
        flags.FLAGS.data_dir,
        fashion_mnist_dir=flags.FLAGS.fashion_mnist_dir,
    )


if __name__ == '__main__':
    _define_flags()
    cli.run(main)
