"""PNG pictures written next to a run's metrics: training curves, confusion matrices and
grids of (generated) images; `figure` and `save_figure` for every other picture the trainer
draws (matplotlib's non-interactive Agg backend: no display on servers). Paths may be local
or gs:// URLs (train/storage.py)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.storage import as_path  # noqa: E402


def figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """A new figure and its axes (`plt.subplots`), drawn off screen."""
    return plt.subplots(nrows, ncols, **kwargs)


def save_figure(fig, out_path: Path, dpi: int = 110) -> Path:
    """Lays out, writes and closes `fig` as `out_path` (folders created); returns the path."""
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Through a file object: matplotlib writes to local paths only.
    with as_path(out_path).open('wb') as f:
        fig.savefig(f, dpi=dpi, format=out_path.suffix.lstrip('.') or 'png')
    plt.close(fig)
    return out_path


def read_metrics(metrics_file: Path) -> dict[str, list[dict]]:
    """metrics.jsonl -> records grouped by their 'kind' ('train', 'eval', ...); a null value
    (how the writer stores a non-finite number) reads as NaN."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    with as_path(metrics_file).open() as f:
        for line in f:
            if line.strip():
                record = {k: math.nan if v is None else v for k, v in json.loads(line).items()}
                grouped[record.get('kind', 'train')].append(record)
    return dict(grouped)


def plot_training_curves(metrics_file: Path, out_path: Path) -> Path:
    """One panel per metric that train and eval share (loss, accuracy, ...), against step."""
    records = read_metrics(metrics_file)
    train, evals = records.get('train', []), records.get('eval', [])
    names = [n for n in ('loss', 'accuracy') if any(n in r for r in train + evals)]
    fig, axes = plt.subplots(
        1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.6), squeeze=False
    )
    for ax, name in zip(axes[0], names):
        for label, rows, style in (('train', train, '-'), ('eval', evals, 'o-')):
            rows = [r for r in rows if name in r]
            if rows:
                ax.plot(
                    [r['step'] for r in rows],
                    [r[name] for r in rows],
                    style,
                    label=label,
                    markersize=3,
                )
        ax.set_xlabel('step')
        ax.set_ylabel(name)
        if name == 'loss':
            ax.set_yscale('log')
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, out_path)


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str] | None, out_path: Path
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts printed."""
    n = confusion.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                int(confusion[i, j]),
                ha='center',
                va='center',
                fontsize=7,
                color='white' if rates[i, j] > 0.5 else 'black',
            )
    ax.set_xticks(range(n), names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f'confusion matrix (accuracy {accuracy:.2%})')
    return save_figure(fig, out_path)


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) images in [0, 1] -> one (rows·(H+pad)+pad, columns·(W+pad)+pad, C) uint8
    mosaic on a white background, row by row; `columns` defaults to a square grid."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, height, width, channels = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full(
        (rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8
    )
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = np.round(image * 255).astype(np.uint8)
    return grid


def save_image_grid(
    images: np.ndarray, out_path: Path, *, columns: int | None = None, zoom: int = 3
) -> Path:
    """Writes `image_grid(images)` as a PNG, each pixel drawn `zoom` x `zoom` (nearest
    neighbour) so that 8x8 and 28x28 samples are visible at a glance."""
    from PIL import Image  # pillow comes with matplotlib

    grid = image_grid(images, columns)
    grid = grid.repeat(zoom, axis=0).repeat(zoom, axis=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with as_path(out_path).open('wb') as f:  # through a file object: gs:// URLs too
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(f, format='PNG')
    return out_path
