"""Contact sheet of augmentations: real images, then several random draws of each op.

    python -m data.augment_preview --dataset=fashion_mnist \\
        --ops=rotate,translate,flip_lr,color_jitter \\
        --ops_json='[{"op": "rotate", "degrees": 30}, {"op": "mixup", "alpha": 0.4}]' \\
        --out=augment_preview.png --num_images=4 --draws=5 --seed=0

--ops: comma-separated op names, each with its default parameters (see
`data.augment.describe_ops()`, or `--ops=help` to print the table).
--ops_json: a JSON list of op dicts. An entry whose op is named in --ops overrides that op's
parameters (the first not yet overridden, if it is named twice); any other entry is appended.
Either flag alone is enough. Names and parameters get the same checks, and the same error
messages, as an experiment config's `augment` list.

Layout: one row per op, applied alone, plus a last row with the whole list in order (the
pipeline a config would run). In each row, every original image is followed by `--draws`
augmented versions of it. Draw d runs the row's pipeline on the batch of the N images with key
fold_in(fold_in(PRNGKey(seed), row), d); mixing ops (mixup, cutmix) pair image i with image
N-1-i of that batch, with one mixing weight per draw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from train import cli

DEFAULT_OPS = (
    'rotate,translate,scale,flip_lr,shear,stretch,random_resized_crop,brightness,contrast,'
    'gaussian_noise,gaussian_blur,cutout,random_erasing,randaugment,mixup,cutmix'
)

_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist', 'Prepared image data set to read.')
_SPLIT = flags.DEFINE_string('split', 'train', 'Split to take the images from.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: data.DEFAULT_DATA_DIR).')
_OPS = flags.DEFINE_string(
    'ops',
    DEFAULT_OPS,
    "Comma-separated op names with default parameters; 'help' prints every op's parameters.",
)
_OPS_JSON = flags.DEFINE_string(
    'ops_json', '', 'JSON list of op dicts overriding or extending --ops.'
)
_OUT = flags.DEFINE_string('out', 'augment_preview.png', 'Where to write the PNG.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 4, 'Original images per row.', lower_bound=1)
_DRAWS = flags.DEFINE_integer('draws', 5, 'Augmented draws of each image.', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Picks the images and the augmentation keys.')

GAP = 2  # pixels between images
GROUP_GAP = 8  # pixels between one image's group and the next


def parse_ops(names: str, ops_json: str) -> list[dict[str, Any]]:
    """--ops and --ops_json -> a checked op list; ValueError with the config check's message."""
    from data import augment

    ops = [{'op': name.strip()} for name in names.split(',') if name.strip()]
    if ops_json:
        try:
            extra = json.loads(ops_json)
        except json.JSONDecodeError as error:
            raise ValueError(f'--ops_json is not valid JSON ({error}): {ops_json!r}') from None
        if isinstance(extra, dict):
            extra = [extra]
        if not isinstance(extra, list) or not all(isinstance(e, dict) for e in extra):
            raise ValueError(
                f'--ops_json must be a JSON list of objects like {{"op": "rotate"}}, '
                f'got {ops_json!r}'
            )
        overridden: set[int] = set()
        for entry in extra:
            target = next(
                (
                    i
                    for i, op in enumerate(ops)
                    if op['op'] == entry.get('op') and i not in overridden
                ),
                None,
            )
            if target is None:
                ops.append(dict(entry))
            else:
                ops[target].update(entry)
                overridden.add(target)
    if not ops:
        raise ValueError('no ops given: use --ops=rotate,flip_lr,... and/or --ops_json=[...]')
    augment.check_ops(ops)
    return ops


def load_images(
    dataset: str, split: str, data_dir: str | None, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """`count` images picked at random (by seed) as float32 in [0, 1], their labels, class names."""
    import data

    info = data.dataset_info(dataset, data_dir)
    if len(info.example_shape) != 3:
        raise ValueError(
            f'augmentation previews need images (H, W, C); {dataset!r} examples have '
            f'shape {info.example_shape}'
        )
    source = data.load_source(dataset, split, data_dir)
    indices = np.random.default_rng(seed).choice(
        len(source), size=min(count, len(source)), replace=False
    )
    records = [source[int(i)] for i in sorted(indices)]
    images = np.stack([np.asarray(r['image']) for r in records])
    images = (
        images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    )
    return images, np.array([int(r['label']) for r in records], np.int32), info.class_names


def augmented_rows(
    ops: Sequence[dict[str, Any]],
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    draws: int,
    seed: int,
) -> list[tuple[str, np.ndarray]]:
    """(label, draws (N, D, H, W, C)) per op alone and for the whole list."""
    import jax

    from data import augment

    rows = [(_describe(op), [op]) for op in ops]
    if len(ops) > 1:
        rows.append(('all of the above, in order', list(ops)))
    out = []
    for row, (label, row_ops) in enumerate(rows):
        augmenter = jax.jit(augment.make_augmenter(row_ops, num_classes=num_classes))
        row_key = jax.random.fold_in(jax.random.PRNGKey(seed), row)
        # Draw d is one batch of the N images under its own key: mixing ops draw one weight
        # per batch, so this shows a different mix in every draw.
        augmented = [
            np.asarray(augmenter(jax.random.fold_in(row_key, d), images, labels)[0])
            for d in range(draws)
        ]
        out.append((label, np.stack(augmented, axis=1)))
    return out


def _describe(op: dict[str, Any]) -> str:
    params = ', '.join(f'{k}={v}' for k, v in op.items() if k != 'op')
    return f'{op["op"]}({params})' if params else op['op']


def contact_sheet(images: np.ndarray, rows: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """One RGB canvas: per row, each original then its draws; white gaps between them."""
    n, height, width = images.shape[:3]
    draws = rows[0][1].shape[1]
    group_width = (draws + 1) * (width + GAP) - GAP
    canvas_width = n * group_width + (n - 1) * GROUP_GAP
    canvas = np.ones((len(rows) * (height + GAP) - GAP, canvas_width, 3), np.float32)
    for r, (_, augmented) in enumerate(rows):
        top = r * (height + GAP)
        for i in range(n):
            left = i * (group_width + GROUP_GAP)
            for j, tile in enumerate([images[i], *augmented[i]]):
                x = left + j * (width + GAP)
                canvas[top : top + height, x : x + width] = _rgb(tile)
    return canvas


def _rgb(image: np.ndarray) -> np.ndarray:
    # Greyscale is shown as grey; RGB(A...) shows its first three channels.
    if image.shape[-1] >= 3:
        return np.clip(image[..., :3], 0, 1)
    return np.repeat(np.clip(image[..., :1], 0, 1), 3, axis=-1)


def save_sheet(
    path: str,
    canvas: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    rows: list[tuple[str, np.ndarray]],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n, height, width = images.shape[:3]
    draws = rows[0][1].shape[1]
    scale = max(1, round(96 / height))  # small images are enlarged so each tile is ~96 px
    dpi = 100
    label_width = 2.6  # inches for the row labels
    fig_w = canvas.shape[1] * scale / dpi + label_width + 0.3
    fig_h = canvas.shape[0] * scale / dpi + 0.9
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes(
        (
            label_width / fig_w,
            0.2 / fig_h,
            canvas.shape[1] * scale / dpi / fig_w,
            canvas.shape[0] * scale / dpi / fig_h,
        )
    )
    ax.imshow(canvas, interpolation='nearest')
    ax.set_yticks([r * (height + GAP) + height / 2 for r in range(len(rows))])
    ax.set_yticklabels([label for label, _ in rows], fontsize=8)
    group_width = (draws + 1) * (width + GAP) - GAP
    ax.set_xticks([i * (group_width + GROUP_GAP) + width / 2 for i in range(n)])
    ax.set_xticklabels(
        [
            f'original: {class_names[label]}' if label < len(class_names) else str(label)
            for label in labels
        ],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title, fontsize=9, y=1 - 0.12 / fig_h, va='top')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from data import augment

    if _OPS.value.strip() == 'help':
        print(augment.describe_ops())
        return
    try:
        ops = parse_ops(_OPS.value, _OPS_JSON.value)
    except ValueError as error:
        # The config check's message alone: absl's usage dump would bury it.
        raise SystemExit(f'augment_preview: {error}') from None
    images, labels, class_names = load_images(
        _DATASET.value, _SPLIT.value, _DATA_DIR.value, _NUM_IMAGES.value, _SEED.value
    )
    rows = augmented_rows(ops, images, labels, len(class_names), _DRAWS.value, _SEED.value)
    title = (
        f'{_DATASET.value} ({_SPLIT.value}), seed {_SEED.value}: each original, then '
        f'{_DRAWS.value} independent draws'
    )
    save_sheet(_OUT.value, contact_sheet(images, rows), images, labels, class_names, rows, title)
    print(f'wrote {_OUT.value} ({len(rows)} rows x {len(images)} images x {_DRAWS.value} draws)')


if __name__ == '__main__':
    cli.run(main)
