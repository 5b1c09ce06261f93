"""Images per second of the encoded-image input path (data/jpeg.py), decoders and loaders.

Command:
  python -m experiments.benchmarks.input_benchmark [--dataset=imagenet_standin]
      [--image_size=224] [--small_size=96] [--decode_images=300] [--batch_size=32]
      [--loader_batches=8] [--max_workers=N] [--torch_site=DIR] [--out=docs/input_benchmark.md]
Measures, on the train split of a prepared set of encoded images (prepare the
stand-in with `python -m data.prepare imagenet_standin`):
  * each decoder of `data.jpeg.DECODERS` (and imagecodecs' full-size decode when installed),
    one process, the bytes already in memory: train path (random-resized crop, flip) and eval
    path (centre crop), at `--image_size` and `--small_size` (smaller outputs let the
    decoders scale the DCT more often); the best of 5 alternating passes;
  * `data.train_loader` and `data.eval_batches` with 1, 2, 4, ... `--max_workers` grain worker
    processes, both on the train split: images/s over `--loader_batches` batches once those
    the workers buffered while the first was awaited are drawn (the first batch's wait, worker
    start-up included, is reported apart);
  * the reference: a torchvision DataLoader on the same bytes (PIL decode, RandomResizedCrop,
    RandomHorizontalFlip, PILToTensor; eval: Resize(size / 0.875), CenterCrop) with the same
    worker counts, when torch and torchvision import (`--torch_site` adds a directory such as a
    `pip install --target` folder to the end of sys.path); otherwise the report says the rows
    were skipped.
Hardware and time: any CPU; about 2 minutes on 2 cores at the defaults. Many workers need more
batches than the stand-in's 1,000 records hold: use --dataset=imagenet_standin/large there.
Expected: simplejpeg (when installed) ahead of Pillow with draft, ahead of Pillow at full size;
loader throughput rising with workers up to the core count; the numbers and the machine are in
docs/input_benchmark.md.
"""

from __future__ import annotations

import gc
import io
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

import data
from data import jpeg
from experiments.benchmarks.bench_common import machine, version
from train import cli

_DATASET = flags.DEFINE_string('dataset', 'imagenet_standin', 'A prepared encoded-image set.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: the catalog one).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Output side in pixels.', lower_bound=1)
_SMALL_SIZE = flags.DEFINE_integer(
    'small_size', 96, 'A second output side for the decoder rows, where DCT scaling applies '
    'more often (0: skip).', lower_bound=0,
)  # fmt: skip
_DECODE_IMAGES = flags.DEFINE_integer(
    'decode_images', 300, 'Records per decoder measurement.', lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Images per loader batch.', lower_bound=1)
_LOADER_BATCHES = flags.DEFINE_integer(
    'loader_batches', 8, 'Timed batches per loader measurement.', lower_bound=1
)
_MAX_WORKERS = flags.DEFINE_integer(
    'max_workers', None, 'Most worker processes measured (default: the core count).'
)
_TORCH_SITE = flags.DEFINE_string(
    'torch_site', '', 'Directory appended to sys.path to find torch and torchvision.'
)
_OUT = flags.DEFINE_string('out', 'docs/input_benchmark.md', 'Markdown report path.')

PASSES = 5
# Batches a grain worker (and a torch DataLoader worker: prefetch_factor 2) may hold ready.
BUFFERED_PER_WORKER = 3


def _imagecodecs_decoder() -> Callable[..., np.ndarray] | None:
    """A full-size imagecodecs decode in DECODERS' signature, when imagecodecs is installed
    (it has no DCT scaling, so it is measured, not offered)."""
    try:
        import imagecodecs  # Optional: measured only where it is installed.
    except ImportError:
        return None

    def decode(data: bytes, choose_box: jpeg.ChooseBox, size: int, mode: str) -> np.ndarray:
        pixels = imagecodecs.jpeg8_decode(data)
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        box = choose_box(*pixels.shape[:2])
        return jpeg.resize_box(Image.fromarray(pixels), box, pixels.shape[:2], size)

    return decode


def decoder_rows(images: Sequence[bytes], size: int) -> list[dict[str, Any]]:
    """Images/s of every decoder on the train and the eval path, one process."""
    decoders = {name: jpeg.DECODERS[name] for name in jpeg.available_decoders()}
    extra = _imagecodecs_decoder()
    if extra is not None:
        decoders['imagecodecs (full size)'] = extra
    options = jpeg.ImageOptions(image_size=size)

    def train_pass(decode: Callable[..., np.ndarray]) -> None:
        for index, encoded in enumerate(images):
            rng = jpeg.crop_rng(0, 0, index)

            def choose(height: int, width: int, rng=rng) -> jpeg.Box:
                return jpeg.random_resized_crop_box(
                    rng, height, width, options.crop_area_range, options.crop_aspect_range
                )

            pixels = decode(encoded, choose, size, 'RGB')
            if rng.random() < 0.5:
                pixels = np.ascontiguousarray(pixels[:, ::-1])

    def eval_pass(decode: Callable[..., np.ndarray]) -> None:
        def choose(height: int, width: int) -> jpeg.Box:
            return jpeg.centre_crop_box(height, width, options.eval_crop_fraction)

        for encoded in images:
            decode(encoded, choose, size, 'RGB')

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(PASSES):  # Alternating, so a shared machine's load hits all alike.
        for name, decode in decoders.items():
            for path, run in (('train', train_pass), ('eval', eval_pass)):
                start = time.perf_counter()
                run(decode)
                times.setdefault((name, path), []).append(time.perf_counter() - start)
    return [
        {
            'decoder': name,
            'size': size,
            'path': path,
            'images_per_s': len(images) / min(seconds),
            'auto': name == jpeg.resolve_decoder('auto'),
        }
        for (name, path), seconds in times.items()
    ]


def _time_batches(batches: Any, count: int, batch_size: int, workers: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over `count` batches in the steady state): the
    batches the workers buffered while the first was awaited are drawn before the clock starts,
    else they would count as made in no time."""
    start = time.perf_counter()
    next(batches)
    first = time.perf_counter() - start
    for _ in range(BUFFERED_PER_WORKER * workers):
        next(batches)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return first, count * batch_size / (time.perf_counter() - start)


def batches_needed(count: int, workers: int) -> int:
    return 1 + BUFFERED_PER_WORKER * workers + count


def _close(iterator: Any) -> None:
    if hasattr(iterator, 'close'):
        iterator.close()
    del iterator
    gc.collect()


def loader_rows(
    source: jpeg.EncodedImageSource, workers: Sequence[int], batch_size: int, count: int
) -> list[dict[str, Any]]:
    """Images/s of data.train_loader and data.eval_batches with each worker count (both on
    `source`, so that an eval pass is long enough to reach the steady state)."""
    rows = []
    for worker_count in workers:
        for name in ('deepnets train', 'deepnets eval'):
            if name.endswith('train'):
                iterator = iter(data.train_loader(
                    source, global_batch_size=batch_size, seed=0, worker_count=worker_count,
                    shard=False,
                ))  # fmt: skip
            else:
                iterator = data.eval_batches(
                    source, global_batch_size=batch_size, worker_count=worker_count,
                    process_index=0, process_count=1,
                )  # fmt: skip
            first, rate = _time_batches(iterator, count, batch_size, worker_count)
            _close(iterator)
            rows.append({'loader': name, 'workers': worker_count, 'first_batch_s': first,
                         'images_per_s': rate})  # fmt: skip
    return rows


def torch_rows(
    source: jpeg.EncodedImageSource,
    workers: Sequence[int],
    batch_size: int,
    count: int,
    size: int,
) -> tuple[list[dict[str, Any]], str]:
    """The torchvision reference rows, or ([], why they were skipped)."""
    if _TORCH_SITE.value:
        sys.path.append(_TORCH_SITE.value)
    try:
        import torch  # Optional: the reference is measured only where torch is installed.
        from torchvision import transforms
    except (ImportError, RuntimeError) as error:  # A wheel built for another torch: RuntimeError.
        return [], f'torch/torchvision not importable ({error})'

    class Records(torch.utils.data.Dataset):
        def __init__(self, source: jpeg.EncodedImageSource, transform: Any, shuffle: bool):
            self.source, self.transform = source, transform
            self.order = np.random.default_rng(0).permutation(len(source)) if shuffle else None

        def __len__(self) -> int:
            return len(self.source)

        def __getitem__(self, index: int) -> tuple[Any, int]:
            record = self.source[int(self.order[index]) if self.order is not None else index]
            with Image.open(io.BytesIO(record['image'])) as image:
                return self.transform(image.convert('RGB')), int(record['label'])

    train_transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=jpeg.DEFAULT_CROP_AREA_RANGE,
                                     ratio=jpeg.DEFAULT_CROP_ASPECT_RANGE),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])  # fmt: skip
    eval_transform = transforms.Compose([
        transforms.Resize(round(size / jpeg.DEFAULT_EVAL_CROP_FRACTION)),
        transforms.CenterCrop(size),
        transforms.PILToTensor(),
    ])  # fmt: skip
    rows = []
    for worker_count in workers:
        for name, transform in (
            ('torchvision train', train_transform),
            ('torchvision eval', eval_transform),
        ):
            loader = torch.utils.data.DataLoader(
                Records(source, transform, shuffle=name.endswith('train')),
                batch_size=batch_size, num_workers=worker_count, drop_last=True,
            )  # fmt: skip
            iterator = iter(loader)
            first, rate = _time_batches(iterator, count, batch_size, worker_count)
            del iterator, loader
            gc.collect()
            rows.append({'loader': name, 'workers': worker_count, 'first_batch_s': first,
                         'images_per_s': rate})  # fmt: skip
    return rows, f'torch {torch.__version__}, torchvision {version("torchvision")}'


# One H100's train-step rates at 224 px (docs/benchmarks_gpu.md, bfloat16): what the input path
# must feed.
H100_IMAGES_PER_S = {'ResNet-50': 5654, 'ViT-B/16': 2368}


def feeding_lines(loaders: Sequence[dict[str, Any]], torch: Sequence[dict[str, Any]]) -> list[str]:
    """The per-core comparison with torchvision (one worker process each, so one core each)
    and the cores the train path needs to feed one H100, from the 1-worker rows."""
    ours = {r['loader'].split()[-1]: r['images_per_s'] for r in loaders if r['workers'] == 1}
    theirs = {r['loader'].split()[-1]: r['images_per_s'] for r in torch if r['workers'] == 1}
    lines = ['', '## Per core, and what one H100 needs', '']
    for path in ('train', 'eval'):
        if path in ours and path in theirs:
            lines.append(
                f'- {path}: {ours[path]:.0f} images/s per worker core, '
                f"**{ours[path] / theirs[path]:.2f}x** torchvision's {theirs[path]:.0f}."
            )
    if 'train' in ours:
        for model, rate in H100_IMAGES_PER_S.items():
            lines.append(
                f'- feeding {model} on one H100 ({rate:,} images/s) takes '
                f'**{math.ceil(rate / ours["train"])} cores** of the train path at this rate.'
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    host = report['machine']
    lines = [
        '# Input pipeline: encoded JPEG images',
        '',
        'Written by `python -m experiments.benchmarks.input_benchmark` '
        f'({report["command"]}). Data set `{report["dataset"]}` (its train split, '
        f'{report["train_records"]} records), '
        f"{report['image_size']} px crops, uint8 out. The stand-in's images are 160..512 px a "
        'side, so at 224 px most crops are too small for DCT scaling (a factor of 2 at least) '
        'and `pillow` (with `Image.draft`) decodes like `pillow_full`; the smaller output size '
        'shows what the scaling saves.',
        '',
        f'Machine: {host["cpu_model"]}, {host["cores"]} cores, load average '
        f'{host["load_average"]} at the start (a shared machine: read ratios, not absolutes). '
        f'Pillow {version("pillow")}, simplejpeg {version("simplejpeg")}, imagecodecs '
        f'{version("imagecodecs")}.',
        '',
        '## Decoders, one process',
        '',
        f'{report["decode_images"]} records, bytes already in memory; the best of {PASSES} '
        'alternating passes (the least disturbed by other load). '
        "`auto` marks what `decoder='auto'` uses here.",
        '',
        '| decoder | output px | train path (random-resized crop + flip), images/s | '
        'eval path (centre crop), images/s |',
        '|---|---:|---:|---:|',
    ]
    by_decoder: dict[tuple[str, int], dict[str, Any]] = {}
    for row in report['decoders']:
        by_decoder.setdefault((row['decoder'], row['size']), {})[row['path']] = row
    for (name, size), paths in by_decoder.items():
        mark = ' (auto)' if paths['train']['auto'] else ''
        lines.append(
            f'| {name}{mark} | {size} | {paths["train"]["images_per_s"]:.0f} | '
            f'{paths["eval"]["images_per_s"]:.0f} |'
        )
    lines += [
        '',
        '## Loaders',
        '',
        f'Batches of {report["batch_size"]}; images/s over {report["loader_batches"]} batches '
        f'once the {BUFFERED_PER_WORKER} per worker buffered while the first was awaited are '
        'drawn; first batch: seconds until it arrived (worker start-up included). Both paths '
        'read the train split (eval: centre crops in order), so that an eval pass lasts long '
        'enough.',
        '',
        '| loader | workers | images/s | first batch (s) |',
        '|---|---:|---:|---:|',
    ]
    for row in report['loaders'] + report['torch']:
        lines.append(
            f'| {row["loader"]} | {row["workers"]} | {row["images_per_s"]:.0f} | '
            f'{row["first_batch_s"]:.1f} |'
        )
    if report['torch']:
        lines += ['', f'Reference measured in the same run with {report["torch_note"]}.']
    else:
        lines += ['', f'Reference rows skipped: {report["torch_note"]}.']
    lines += feeding_lines(report['loaders'], report['torch'])
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    size = _IMAGE_SIZE.value
    options = jpeg.ImageOptions(image_size=size)
    train = data.load_source(_DATASET.value, 'train', _DATA_DIR.value, image_options=options)
    if not isinstance(train, jpeg.EncodedImageSource):
        raise app.UsageError(f'{_DATASET.value!r} does not hold encoded images of varying size')
    max_workers = _MAX_WORKERS.value or os.cpu_count() or 1
    workers = sorted({*(2**k for k in range(max_workers.bit_length()) if 2**k <= max_workers),
                      max_workers})  # fmt: skip
    needed = batches_needed(_LOADER_BATCHES.value, max_workers)
    if needed > len(train) // _BATCH_SIZE.value:
        raise app.UsageError(
            f'--loader_batches={_LOADER_BATCHES.value} with {max_workers} workers needs {needed} '
            f'batches of {_BATCH_SIZE.value}, more than the {len(train)} train records hold; '
            'lower --loader_batches or --batch_size'
        )
    report: dict[str, Any] = {
        'command': ' '.join(['python -m experiments.benchmarks.input_benchmark', *sys.argv[1:]]),
        'machine': machine(),
        'dataset': _DATASET.value,
        'train_records': len(train),
        'image_size': size,
        'batch_size': _BATCH_SIZE.value,
        'loader_batches': _LOADER_BATCHES.value,
    }
    count = min(_DECODE_IMAGES.value, len(train))
    images = [record['image'] for record in train.__getitems__(range(count))]
    report['decode_images'] = count
    report['decoders'] = decoder_rows(images, size)
    if _SMALL_SIZE.value:
        report['decoders'] += decoder_rows(images, _SMALL_SIZE.value)
    args = (train, workers, _BATCH_SIZE.value, _LOADER_BATCHES.value)
    report['loaders'] = loader_rows(*args)
    report['torch'], report['torch_note'] = torch_rows(*args, size)
    text = markdown(report)
    print(text)
    path = Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f'wrote {path}')


if __name__ == '__main__':
    cli.run(main)
