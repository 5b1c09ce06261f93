"""The encoded-image input path: JPEG records cropped and decoded inside the loaders' workers.

Data sets whose `image` feature is stored encoded and varies in size (imagenet2012 and its
offline stand-in `imagenet_standin`) cannot be decoded into RAM or stacked as they are. For
those, `data.catalog.load_source` returns an `EncodedImageSource` (the records with their image
bytes left encoded) and the loaders of data/pipeline.py call its `train_batch` / `eval_batch`
in grain worker processes, so the training process only receives uint8 batches:

- train: an Inception-style random-resized crop (a fraction of the area and an aspect ratio
  drawn from ranges, placed uniformly; torchvision's centre-crop fallback after 10 misses),
  chosen on the size read from the encoded header, decoded at the smallest DCT scale that keeps
  the crop at least `image_size` wide (JPEG decoders scale by 1/2, 1/4, 1/8 for almost free),
  resized with antialiasing to `image_size` x `image_size`, flipped left-right half the time;
- eval: the centred square of side `eval_crop_fraction` x the short side (what resizing the
  short side to image_size / eval_crop_fraction and cutting the centre gives), same decoding.

Every random choice comes from numpy's generator seeded by (seed, epoch, record index), so a
batch is a pure function of the step and a restored grain iterator repeats it bit for bit. A
record that fails to decode is logged, counted and replaced by the next decodable record (train)
or masked out (eval); past `max_corrupt_fraction` of a reader's share of an epoch the loader
stops with an error naming the record. Decoders are interchangeable functions in `DECODERS`;
`'auto'` takes the fastest one installed (docs/input_benchmark.md measures them), and any
record the fast decoder refuses (PNG, CMYK JPEGs) is retried with Pillow before it is
declared corrupt.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

try:  # The fastest decoder measured; optional, Pillow does everything it does.
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

Batch = dict[str, np.ndarray]
# (left, top, right, bottom) in pixels of the encoded image; floats allowed.
Box = tuple[float, float, float, float]
# (height, width) -> the crop box; called once the header has given the size.
ChooseBox = Callable[[int, int], Box]

DEFAULT_IMAGE_SIZE = 224
DEFAULT_CROP_AREA_RANGE = (0.08, 1.0)
DEFAULT_CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
DEFAULT_EVAL_CROP_FRACTION = 0.875
DEFAULT_MAX_CORRUPT_FRACTION = 0.001
CROP_ATTEMPTS = 10  # Inception's and torchvision's number of tries before the fallback.
# Mixed into every crop's seed, so crops and the epoch permutation (seeded by (seed, epoch))
# are independent streams.
_CROP_STREAM = 0x4A504547


class CorruptImageError(RuntimeError):
    """More records of an epoch failed to decode than `max_corrupt_fraction` allows."""


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How encoded images become uint8 [image_size, image_size, C] examples."""

    image_size: int = DEFAULT_IMAGE_SIZE
    crop_area_range: tuple[float, float] = DEFAULT_CROP_AREA_RANGE
    crop_aspect_range: tuple[float, float] = DEFAULT_CROP_ASPECT_RANGE
    eval_crop_fraction: float = DEFAULT_EVAL_CROP_FRACTION
    flip: bool = True
    max_corrupt_fraction: float = DEFAULT_MAX_CORRUPT_FRACTION
    decoder: str = 'auto'

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f'image_size must be a positive integer, got {self.image_size!r}')
        for name, upper in (('crop_area_range', 1.0), ('crop_aspect_range', math.inf)):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                low, high = math.nan, math.nan
            if not 0 < low <= high <= upper:
                bound = f' <= {upper:g}' if upper < math.inf else ''
                raise ValueError(
                    f'{name} must be (low, high) with 0 < low <= high{bound}, got {value!r}'
                )
            object.__setattr__(self, name, (low, high))
        if not 0 < self.eval_crop_fraction <= 1:
            raise ValueError(f'eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}')
        if not 0 <= self.max_corrupt_fraction <= 1:
            raise ValueError(
                f'max_corrupt_fraction must be in [0, 1], got {self.max_corrupt_fraction}'
            )
        if self.decoder != 'auto' and self.decoder not in DECODERS:
            raise ValueError(
                f'unknown decoder {self.decoder!r}; choices: auto, {", ".join(DECODERS)}'
            )
        if self.decoder in DECODERS and not decoder_available(self.decoder):
            raise ValueError(
                f'decoder {self.decoder!r} is not installed; available: '
                f'auto, {", ".join(available_decoders())}'
            )


def options_from_config(dataset_config: Any) -> ImageOptions:
    """`ImageOptions` from a config's `dataset` block; keys it lacks keep their defaults."""
    fields = {f.name for f in dataclasses.fields(ImageOptions)}
    return ImageOptions(**{k: dataset_config[k] for k in fields if k in dataset_config})


def has_encoded_images(info: tfds.core.DatasetInfo) -> bool:
    """Whether `image` is an encoded Image feature whose height or width varies: the sets that
    go through this module instead of being decoded whole."""
    image = info.features['image'] if 'image' in info.features else None
    return isinstance(image, tfds.features.Image) and None in tuple(image.shape)[:2]


def image_channels(info: tfds.core.DatasetInfo) -> int:
    """Channels the decoded examples have (3 unless the feature says 1)."""
    channels = tuple(info.features['image'].shape)[-1]
    return 1 if channels == 1 else 3


def default_worker_count() -> int:
    """Worker processes for decoding when the config says 0: every core but one, at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------- crop boxes


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_range: tuple[float, float] = DEFAULT_CROP_AREA_RANGE,
    aspect_range: tuple[float, float] = DEFAULT_CROP_ASPECT_RANGE,
) -> tuple[int, int, int, int]:
    """Inception's random crop: area fraction and aspect ratio (width / height, drawn
    log-uniformly) from the ranges, placed uniformly; after CROP_ATTEMPTS misses the centred
    crop of the whole image with its aspect clamped to the range (as torchvision does)."""
    area = height * width
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_width = int(round(math.sqrt(target * aspect)))
        crop_height = int(round(math.sqrt(target / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            left = int(rng.integers(0, width - crop_width + 1))
            top = int(rng.integers(0, height - crop_height + 1))
            return left, top, left + crop_width, top + crop_height
    ratio = width / height
    crop_width, crop_height = width, height
    if ratio < aspect_range[0]:
        crop_height = max(1, int(round(width / aspect_range[0])))
    elif ratio > aspect_range[1]:
        crop_width = max(1, int(round(height * aspect_range[1])))
    left, top = (width - crop_width) // 2, (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


def centre_crop_box(height: int, width: int, crop_fraction: float) -> Box:
    """The centred square of side crop_fraction x the short side: resizing the short side to
    S / crop_fraction and cutting the centre S x S keeps exactly this window."""
    side = min(height, width) * crop_fraction
    return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2


def _reduced_size(height: int, width: int, box: Box, image_size: int) -> tuple[int, int]:
    """The smallest (height, width) to decode at so the box still spans >= image_size pixels;
    (0, 0) when no reduction is possible (decoders pick the nearest DCT scale above it)."""
    scale = min(box[2] - box[0], box[3] - box[1]) / image_size
    if scale < 2:  # JPEG scales by halves: nothing to gain below a factor of 2.
        return 0, 0
    return math.ceil(height / scale), math.ceil(width / scale)


def resize_box(image: Image.Image, box: Box, full_size: tuple[int, int], size: int) -> np.ndarray:
    """Crops `box` (in full-size pixels) out of a possibly reduced `image` and resizes it to
    size x size; Pillow's resampling widens its filter when shrinking, so this antialiases."""
    scale_x, scale_y = image.width / full_size[1], image.height / full_size[0]
    # Clamped: rounding in the scaling must not push the box past the edge (Pillow refuses).
    scaled = (
        max(0.0, box[0] * scale_x),
        max(0.0, box[1] * scale_y),
        min(float(image.width), box[2] * scale_x),
        min(float(image.height), box[3] * scale_y),
    )
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=scaled))


# ---------------------------------------------------------------- decoders
# Each reads the size from the header, asks `choose_box` for the crop, decodes and resizes;
# each returns uint8 [size, size] ('L') or [size, size, 3] ('RGB').


def _decode_pillow(
    data: bytes, choose_box: ChooseBox, size: int, mode: str, reduce: bool = True
) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        full_size = (image.height, image.width)
        box = choose_box(*full_size)
        reduced = _reduced_size(*full_size, box, size)
        if reduce and reduced[0] and image.format == 'JPEG':
            image.draft(mode, reduced[::-1])  # Pillow sizes are (width, height).
        return resize_box(image.convert(mode), box, full_size, size)


def _decode_pillow_full(data: bytes, choose_box: ChooseBox, size: int, mode: str) -> np.ndarray:
    return _decode_pillow(data, choose_box, size, mode, reduce=False)


def _decode_simplejpeg(data: bytes, choose_box: ChooseBox, size: int, mode: str) -> np.ndarray:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace in ('CMYK', 'YCCK'):  # Pillow undoes Adobe's inverted CMYK; this does not.
        return _decode_pillow(data, choose_box, size, mode)
    box = choose_box(height, width)
    min_height, min_width = _reduced_size(height, width, box, size)
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace='GRAY' if mode == 'L' else 'RGB',
        min_height=min_height,
        min_width=min_width,
    )
    image = Image.fromarray(pixels[..., 0] if mode == 'L' else pixels, mode)
    return resize_box(image, box, (height, width), size)


DECODERS: dict[str, Callable[..., np.ndarray]] = {
    'simplejpeg': _decode_simplejpeg,  # libjpeg-turbo with DCT scaling, no Python in between
    'pillow': _decode_pillow,  # Pillow with Image.draft's DCT scaling
    'pillow_full': _decode_pillow_full,  # Pillow at full resolution (for comparison)
}
# 'auto' takes the first installed one of these (fastest first, docs/input_benchmark.md).
AUTO_ORDER = ('simplejpeg', 'pillow')


def decoder_available(name: str) -> bool:
    return name != 'simplejpeg' or simplejpeg is not None


def available_decoders() -> list[str]:
    return [name for name in DECODERS if decoder_available(name)]


def resolve_decoder(name: str) -> str:
    """The decoder `name` stands for ('auto': the fastest installed)."""
    if name == 'auto':
        return next(n for n in AUTO_ORDER if decoder_available(n))
    return name


def decode_crop(
    data: bytes, choose_box: ChooseBox, size: int, channels: int = 3, decoder: str = 'auto'
) -> np.ndarray:
    """uint8 [size, size, channels]: the box `choose_box(height, width)` picks, decoded and
    resized. Records the chosen decoder refuses are retried with Pillow; raises what Pillow
    raises (OSError, ValueError, SyntaxError, ...) when the bytes are not a readable image."""
    mode = 'L' if channels == 1 else 'RGB'
    name = resolve_decoder(decoder)
    try:
        pixels = DECODERS[name](data, choose_box, size, mode)
    except Exception:
        # simplejpeg refuses PNG and CMYK JPEGs that Pillow reads; a truly corrupt record
        # fails again below and the caller counts it.
        if name in ('pillow', 'pillow_full'):
            raise
        pixels = _decode_pillow(data, choose_box, size, mode)
    return pixels.reshape(size, size, channels)


def train_image(
    data: bytes, rng: np.random.Generator, options: ImageOptions, channels: int = 3
) -> np.ndarray:
    """A random-resized crop of the encoded image, flipped left-right with probability 1/2 when
    options.flip (the flip is drawn after the crop)."""

    def choose(height: int, width: int) -> Box:
        return random_resized_crop_box(
            rng, height, width, options.crop_area_range, options.crop_aspect_range
        )

    pixels = decode_crop(data, choose, options.image_size, channels, options.decoder)
    if options.flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return pixels


def eval_image(data: bytes, options: ImageOptions, channels: int = 3) -> np.ndarray:
    """The centre crop of the encoded image (no randomness)."""

    def choose(height: int, width: int) -> Box:
        return centre_crop_box(height, width, options.eval_crop_fraction)

    return decode_crop(data, choose, options.image_size, channels, options.decoder)


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of record `index`'s crop and flip in `epoch`."""
    return np.random.default_rng((seed, epoch, int(index), _CROP_STREAM))


# ---------------------------------------------------------------- the source


class _CorruptCounter:
    """Distinct corrupt record indices per epoch in this process (thread-safe). Pickles empty:
    each grain worker process counts what it reads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[Any, set[int]] = collections.defaultdict(set)

    def add(self, epoch: Any, index: int) -> int:
        with self._lock:
            self._seen[epoch].add(index)
            return len(self._seen[epoch])

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class EncodedImageSource:
    """A split whose records keep `image` as encoded bytes (random access like any source);
    `train_batch` / `eval_batch` turn records into uint8 batches as `options` say."""

    def __init__(self, records: Sequence[dict[str, Any]], options: ImageOptions, channels: int):
        self.records = records
        self.options = options
        self.channels = channels
        self._corrupt = _CorruptCounter()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [int(i) for i in indices]
        if hasattr(self.records, '__getitems__'):  # One array_record call for the batch.
            return list(self.records.__getitems__(indices))
        return [self.records[i] for i in indices]

    def _skip(self, index: int, error: Exception, epoch: Any, readers: int) -> None:
        """Logs a corrupt record and raises CorruptImageError once this reader's share of the
        epoch holds more of them than max_corrupt_fraction allows."""
        count = self._corrupt.add(epoch, index)
        allowed = math.ceil(self.options.max_corrupt_fraction * len(self) / max(1, readers))
        where = 'evaluation' if epoch is None else f'epoch {epoch}'
        if count > allowed:
            raise CorruptImageError(
                f'record {index} of {len(self)}: image does not decode ({error!r}); that makes '
                f'{count} corrupt records in {where} for this reader, more than '
                f'max_corrupt_fraction={self.options.max_corrupt_fraction} allows ({allowed} of '
                f'its ~{len(self) // max(1, readers)} records). Check or rebuild the data set, '
                'or raise config.dataset.max_corrupt_fraction.'
            ) from error
        logging.warning(
            'Skipping record %d of %d in %s: image does not decode (%r); corrupt records for '
            'this reader so far: %d (at most %d).',
            index, len(self), where, error, count, allowed,
        )  # fmt: skip

    def train_batch(
        self, indices: Sequence[int], *, seed: int, epoch: int, readers: int = 1
    ) -> Batch:
        """Random-resized crops of the records at `indices` (seeded by (seed, epoch, index));
        a corrupt record is replaced by the next decodable one after it in the split."""
        images, records = [], []
        for index, record in zip(indices, self.__getitems__(indices)):
            index = int(index)
            for attempt in range(len(self)):
                try:
                    # The slot's generator, whichever record fills it: a pure function still.
                    rng = crop_rng(seed, epoch, index)
                    images.append(train_image(record['image'], rng, self.options, self.channels))
                    records.append(record)
                    break
                except Exception as error:
                    self._skip((index + attempt) % len(self), error, epoch, readers)
                    record = self[(index + attempt + 1) % len(self)]
        return self._batch(np.stack(images), records)

    def eval_batch(self, indices: Sequence[int], *, readers: int = 1) -> Batch:
        """Centre crops of the records at `indices`; 'valid' (bool) is False where a record did
        not decode (its image is zeros)."""
        size, records = self.options.image_size, self.__getitems__(indices)
        images = np.zeros((len(records), size, size, self.channels), np.uint8)
        valid = np.ones(len(records), bool)
        for row, (index, record) in enumerate(zip(indices, records)):
            try:
                images[row] = eval_image(record['image'], self.options, self.channels)
            except Exception as error:
                self._skip(int(index), error, None, readers)
                valid[row] = False
        batch = self._batch(images, records)
        batch['valid'] = valid
        return batch

    @staticmethod
    def _batch(images: np.ndarray, records: Sequence[dict[str, Any]]) -> Batch:
        """The images and every other numeric feature ('label' as int32); strings are left out
        as data/pipeline.py leaves them out."""
        batch = {'image': images}
        for name, value in records[0].items():
            if name != 'image' and np.asarray(value).dtype.kind in 'biuf':
                batch[name] = np.stack([np.asarray(r[name]) for r in records])
        if 'label' in batch:
            batch['label'] = batch['label'].astype(np.int32)
        return batch


def image_stats(
    source: EncodedImageSource, max_examples: int | None = None
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel (mean, std, examples used) of the full decoded images scaled to [0, 1], over
    `max_examples` evenly spaced records (all when None); records that do not decode are left
    out."""
    n = len(source)
    if n == 0:
        raise ValueError('cannot compute image statistics of an empty split')
    count = n if max_examples is None else min(n, max_examples)
    indices = np.linspace(0, n - 1, count).round().astype(np.int64)
    mode = 'L' if source.channels == 1 else 'RGB'
    total = np.zeros(source.channels)
    total_sq = np.zeros(source.channels)
    pixels = used = 0
    for index in indices:
        try:
            with Image.open(io.BytesIO(source[int(index)]['image'])) as image:
                values = np.asarray(image.convert(mode), np.float64).reshape(-1, source.channels)
        except Exception as error:
            logging.warning('Image statistics skip record %d: %r', index, error)
            continue
        values /= 255.0
        total += values.sum(0)
        total_sq += (values**2).sum(0)
        pixels += len(values)
        used += 1
    if not used:
        raise ValueError('no image of the split decodes; cannot compute image statistics')
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), used
