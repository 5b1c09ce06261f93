"""Tests for the encoded-image input path: the imagenet_standin builder, data/jpeg.py's crops
and decoders, and the grain loaders on encoded sources (workers, resuming, corrupt records)."""

from __future__ import annotations

import dataclasses
import importlib
import io
import logging

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import catalog, jpeg, pipeline
from data.builders import imagenet_standin
from data.prepare import prepare
from train.loop import train_and_evaluate

TINY = 'imagenet_standin/tiny'
SMALL = jpeg.ImageOptions(image_size=32)


@pytest.fixture(scope='module')
def standin_dir(tmp_path_factory) -> str:
    """The stand-in's 'tiny' config (48 train / 16 validation JPEGs) prepared once."""
    data_dir = str(tmp_path_factory.mktemp('tfds_jpeg'))
    prepare([TINY], data_dir, verbose=False)
    return data_dir


@pytest.fixture(scope='module')
def train_source(standin_dir) -> jpeg.EncodedImageSource:
    return catalog.load_source(TINY, 'train', standin_dir, image_options=SMALL)


def _jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', quality=quality)
    return buffer.getvalue()


def test_builder_writes_variable_size_jpegs_with_imagenet_features(standin_dir):
    builder = catalog.prepared_builder(TINY, standin_dir)
    features = builder.info.features
    assert tuple(features['image'].shape) == (None, None, 3)
    assert features['image'].encoding_format == 'jpeg'
    assert isinstance(features['label'], tfds.features.ClassLabel)
    assert features['label'].num_classes == 10
    assert isinstance(features['file_name'], tfds.features.Text)
    assert set(builder.info.splits) == {'train', 'validation'}
    assert jpeg.has_encoded_images(builder.info)
    source = catalog.load_source(TINY, 'train', standin_dir)
    assert isinstance(source, jpeg.EncodedImageSource) and len(source) == 48
    sizes, labels, names = set(), set(), set()
    for record in source.__getitems__(range(len(source))):
        assert record['image'][:2] == b'\xff\xd8'  # JPEG start-of-image marker
        with Image.open(io.BytesIO(record['image'])) as image:
            assert image.format == 'JPEG'
            image.load()  # decodes completely
            sizes.add(image.size)
            assert all(160 <= side <= 224 for side in image.size)
        labels.add(int(record['label']))
        names.add(record['file_name'])
    assert len(sizes) > 10 and len(labels) > 5 and len(names) == len(source)
    assert labels <= set(range(10))


def test_builder_examples_are_a_function_of_the_seed():
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    first = imagenet_standin.render_example(digit, np.random.default_rng(7), 160, 512)
    again = imagenet_standin.render_example(digit, np.random.default_rng(7), 160, 512)
    other = imagenet_standin.render_example(digit, np.random.default_rng(8), 160, 512)
    assert first == again and first[0] != other[0]


def test_fixed_size_image_sets_are_not_encoded_sources(tmp_path):
    assert not jpeg.has_encoded_images(catalog.get_builder('digits', tmp_path).info)


def test_dataset_info_gives_the_crop_shape(standin_dir):
    info = catalog.dataset_info(TINY, standin_dir, image_size=32)
    assert info.example_shape == (32, 32, 3) and info.image_dtype == 'uint8'
    assert info.num_classes == 10 and info.splits == {'train': 48, 'validation': 16}
    assert len(info.mean) == 3 and all(0 < m < 1 for m in info.mean)
    assert all(0 < s < 0.5 for s in info.std)


@pytest.mark.parametrize('height,width', [(160, 512), (512, 160), (300, 300), (37, 45)])
def test_random_resized_crops_are_in_range_and_deterministic(height, width):
    low_area, high_area = jpeg.DEFAULT_CROP_AREA_RANGE
    low_aspect, high_aspect = jpeg.DEFAULT_CROP_ASPECT_RANGE
    boxes = set()
    for index in range(200):
        box = jpeg.random_resized_crop_box(jpeg.crop_rng(0, 1, index), height, width)
        assert box == jpeg.random_resized_crop_box(jpeg.crop_rng(0, 1, index), height, width)
        left, top, right, bottom = box
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        # Sides are rounded to whole pixels: allow half a pixel either way.
        assert (w + 0.5) * (h + 0.5) >= low_area * height * width
        assert (w - 0.5) * (h - 0.5) <= high_area * height * width
        assert (w + 0.5) / max(h - 0.5, 0.5) >= low_aspect
        assert (w - 0.5) / (h + 0.5) <= high_aspect
        boxes.add(box)
    assert len(boxes) > 100  # the crops do vary


def test_train_images_are_a_function_of_seed_epoch_and_index(train_source):
    encoded = train_source[3]['image']

    def image(seed: int, epoch: int, index: int) -> np.ndarray:
        return jpeg.train_image(encoded, jpeg.crop_rng(seed, epoch, index), SMALL)

    first = image(0, 0, 3)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, image(0, 0, 3))
    for other in (image(1, 0, 3), image(0, 1, 3), image(0, 0, 4)):
        assert not np.array_equal(first, other)


def test_eval_crop_is_the_centre_of_the_short_side_resize():
    ys, xs = np.mgrid[0:240, 0:360]
    pixels = np.stack([xs * 255 // 359, ys * 255 // 239, (xs + ys) % 256 // 2], -1)
    encoded = _jpeg_bytes(pixels.astype(np.uint8))
    box = jpeg.centre_crop_box(240, 360, 0.875)
    assert box == pytest.approx((75.0, 15.0, 285.0, 225.0))
    options = jpeg.ImageOptions(image_size=64, eval_crop_fraction=0.875)
    # The reference: resize the short side to 64 / 0.875, cut the centre 64 x 64.
    with Image.open(io.BytesIO(encoded)) as image:
        short = round(64 / 0.875)
        resized = np.asarray(image.resize((round(short * 360 / 240), short), Image.BILINEAR))
    top, left = (resized.shape[0] - 64) // 2, (resized.shape[1] - 64) // 2
    reference = resized[top : top + 64, left : left + 64].astype(float)
    for decoder in jpeg.available_decoders():
        got = jpeg.eval_image(encoded, dataclasses.replace(options, decoder=decoder))
        assert got.shape == (64, 64, 3)
        assert np.abs(got[..., :2] - reference[..., :2]).mean() < 3, decoder


def test_decoders_agree_and_grayscale_becomes_rgb():
    rng = np.random.default_rng(0)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (60, 80, 3)), 8, 0), 8, 1).astype(np.uint8)
    for encoded in (_jpeg_bytes(pixels), _jpeg_bytes(pixels[..., 0])):
        outputs = [
            jpeg.train_image(encoded, jpeg.crop_rng(0, 0, 5), dataclasses.replace(SMALL, decoder=d))
            for d in jpeg.available_decoders()
        ]
        for output in outputs:
            assert output.shape == (32, 32, 3)
            assert np.abs(output.astype(float) - outputs[0]).mean() < 2


def test_loader_with_workers_gives_uint8_batches_and_resumes_exactly(train_source):
    def loader():
        return pipeline.train_loader(
            train_source, global_batch_size=8, seed=3, worker_count=2, shard=False
        )

    iterator = iter(loader())
    first = next(iterator)
    assert first['image'].shape == (8, 32, 32, 3) and first['image'].dtype == np.uint8
    assert first['label'].dtype == np.int32 and set(first) == {'image', 'label'}
    # The workers computed what the pure function of (seed, epoch, index) gives here.
    indices = pipeline._epoch_permutation(len(train_source), 3, 0)[:8]
    expected = train_source.train_batch(indices, seed=3, epoch=0)
    np.testing.assert_array_equal(first['image'], expected['image'])
    for _ in range(6):  # 6 steps per epoch: the state is taken inside the second epoch
        next(iterator)
    state = iterator.get_state()
    following = [next(iterator) for _ in range(3)]
    iterator.close()
    restored = iter(loader())
    restored.set_state(state)
    for want in following:
        got = next(restored)
        np.testing.assert_array_equal(got['image'], want['image'])
        np.testing.assert_array_equal(got['label'], want['label'])
    restored.close()


def test_eval_batches_are_centre_crops_with_a_mask(standin_dir):
    source = catalog.load_source(TINY, 'validation', standin_dir, image_options=SMALL)
    batches = list(
        pipeline.eval_batches(
            source, global_batch_size=6, worker_count=0, process_index=0, process_count=1
        )
    )
    assert len(batches) == 3 and [int(b['mask'].sum()) for b in batches] == [6, 6, 4]
    images = np.concatenate([b['image'][b['mask']] for b in batches])
    for index in (0, 15):
        np.testing.assert_array_equal(images[index], jpeg.eval_image(source[index]['image'], SMALL))
    assert not batches[-1]['image'][~batches[-1]['mask']].any()


def _source_with_corrupt(train_source, corrupt: dict[int, bytes], fraction: float):
    records = [dict(r) for r in train_source.__getitems__(range(10))]
    for index, payload in corrupt.items():
        records[index]['image'] = payload
    options = dataclasses.replace(SMALL, max_corrupt_fraction=fraction)
    return jpeg.EncodedImageSource(records, options, channels=3), records


def test_a_corrupt_record_is_skipped_with_a_warning(train_source, caplog):
    truncated = train_source[4]['image'][:300]
    source, records = _source_with_corrupt(train_source, {4: truncated}, fraction=0.1)
    with caplog.at_level(logging.WARNING):
        batch = source.train_batch([2, 4, 6], seed=0, epoch=0)
    assert 'Skipping record 4 of 10' in caplog.text
    assert batch['image'].shape == (3, 32, 32, 3)
    # The slot is filled by the next record, with the slot's own crop.
    np.testing.assert_array_equal(batch['label'], [records[i]['label'] for i in (2, 5, 6)])
    expected = jpeg.train_image(records[5]['image'], jpeg.crop_rng(0, 0, 4), SMALL)
    np.testing.assert_array_equal(batch['image'][1], expected)
    evaluated = source.eval_batch([3, 4, 5])
    np.testing.assert_array_equal(evaluated['valid'], [True, False, True])
    assert not evaluated['image'][1].any()


def test_too_many_corrupt_records_raise_naming_the_record(train_source):
    corrupt = {3: b'not an image', 7: train_source[7]['image'][:100]}
    source, _ = _source_with_corrupt(train_source, corrupt, fraction=0.1)
    source.train_batch([0, 1, 2, 3], seed=0, epoch=0)  # one of ten: allowed
    with pytest.raises(jpeg.CorruptImageError, match=r'record 7 of 10.*max_corrupt_fraction=0.1'):
        source.train_batch([7, 8], seed=0, epoch=0)
    source.train_batch([7, 8], seed=0, epoch=1)  # a new epoch, a new allowance


def test_encoded_sources_stay_encoded_and_refuse_in_memory(train_source):
    assert pipeline.maybe_in_memory(train_source) is train_source
    with pytest.raises(ValueError, match='in_memory=True'):
        pipeline.train_loader(train_source, global_batch_size=8, seed=0, in_memory=True)


def test_options_are_checked_and_read_from_a_config():
    config = ml_collections.ConfigDict(
        {'name': TINY, 'image_size': 48, 'crop_area_range': [0.5, 1]}
    )
    options = jpeg.options_from_config(config)
    assert options.image_size == 48 and options.crop_area_range == (0.5, 1.0)
    assert options.eval_crop_fraction == jpeg.DEFAULT_EVAL_CROP_FRACTION
    for bad, message in [
        ({'image_size': 0}, 'image_size'),
        ({'crop_area_range': (0.5, 0.1)}, 'crop_area_range'),
        ({'crop_aspect_range': (0, 1)}, 'crop_aspect_range'),
        ({'eval_crop_fraction': 1.5}, 'eval_crop_fraction'),
        ({'max_corrupt_fraction': -0.1}, 'max_corrupt_fraction'),
        ({'decoder': 'libjpeg'}, "unknown decoder 'libjpeg'; choices: auto, "),
    ]:
        with pytest.raises(ValueError, match=message):
            jpeg.ImageOptions(**bad)


@pytest.mark.parametrize('config_file', ['imagenet_resnet50', 'imagenet_vit'])
def test_imagenet_configs_run_their_smoke_argument_on_the_standin(
    standin_dir, tmp_path, config_file
):
    """The ImageNet configs, unchanged but for their `:smoke` argument's sizes, train, evaluate
    and checkpoint through the JPEG path on the stand-in."""
    module = importlib.import_module(f'experiments.{config_file}')
    config = module.get_config('smoke')
    config.dataset.data_dir = standin_dir
    summary = train_and_evaluate(config, tmp_path / config_file)
    assert summary['stop_reason'] == 'finished' and summary['step'] == 6
    assert np.isfinite(summary['eval']['loss'])
    full = module.get_config('')
    assert (full.dataset.name, full.dataset.image_size, full.batch_size) == (
        'imagenet2012',
        224,
        1024,
    )
