"""Pictures of what a trained ViT or Swin attends to, written next to the run's metrics.

    python -m experiments.analysis.show_attention --workdir=workdirs/convnets/vit [--num_images=6]

For a ViT run (registered family 'vit'), writes to `<workdir>/pictures/`:
- `vit_attention_heads.png`: per test image, the last block's attention of the pooling
  query (class token, the MAP probe, or the mean patch query for GAP) over the patch
  grid, one column per head, laid over the image;
- `vit_attention_rollout.png`: attention rollout (Abnar & Zuidema 2020) through every
  block, the same query's share of each input patch.
For a Swin run: `swin_windows.png`, each stage's regular and shifted (cyclically
rolled) window partitions drawn on a test image, with the mask regions that keep tokens
from attending across the wrapped border; and `swin_attention.png`, the attention of
one token in a regular and in a shifted block over its window.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from train import cli


def define_flags() -> None:
    """Flags of the command line only: tests import this module beside other absl programs
    that define --workdir too."""
    flags.DEFINE_string('workdir', None, 'A training workdir of a ViT or Swin run.')
    flags.DEFINE_integer('num_images', 6, 'How many test images to draw.')
    flags.DEFINE_string('split', None, 'Split to take images from (default: the eval split).')


# --------------------------------------------------------------------------- reading the model


def test_images(run, count: int, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` examples of the eval split: raw images and labels."""
    import data

    source = data.load_source(
        run.config.dataset.name,
        split or run.config.dataset.eval_split,
        run.config.dataset.data_dir or None,
    )
    records = [source[i] for i in range(min(count, len(source)))]
    return (
        np.stack([np.asarray(r['image']) for r in records]),
        np.asarray([int(r['label']) for r in records]),
    )


def sown_attention(run, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits and the 'intermediates' tree of attention weights for raw images."""
    apply = jax.jit(functools.partial(run.model.apply, train=False, mutable=['intermediates']))
    logits, state = apply(run.variables, run.task.normalise(jnp.asarray(images)))
    return np.asarray(logits), jax.tree.map(np.asarray, state['intermediates'])


def grid_shape(num_patches: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of an image whose `num_patches` tokens keep its aspect ratio."""
    scale = (height * width / num_patches) ** 0.5
    rows, cols = round(height / scale), round(width / scale)
    if rows * cols != num_patches:
        raise ValueError(f'{num_patches} patch tokens do not tile a {height}x{width} image')
    return rows, cols


def vit_query_maps(model, intermediates: dict) -> tuple[np.ndarray, np.ndarray]:
    """(last block per-head maps (B, heads, P), rollout map (B, P)) of the pooling query."""
    blocks = [
        intermediates[f'encoderblock_{i}']['attention']['attention_weights'][0]
        for i in range(model.depth)
    ]
    prefix = 1 if model.pool == 'token' else 0
    rollout = np.asarray(_rollout(blocks))
    if model.pool == 'token':
        heads = blocks[-1][:, :, 0, prefix:]
        rolled = rollout[:, 0, prefix:]
    elif model.pool == 'map':
        probe = intermediates['map_head']['attention']['attention_weights'][0][:, :, 0, :]
        heads = probe
        # The probe reads the encoder output; route its (head-averaged) weights back through it.
        rolled = np.einsum('bp,bpq->bq', probe.mean(1), rollout)
    else:  # gap: every patch token is a query with equal say
        heads = blocks[-1].mean(2)
        rolled = rollout.mean(1)
    return heads, rolled


def _rollout(blocks: Sequence[np.ndarray]) -> jax.Array:
    from nets.layers.attention import attention_rollout

    return attention_rollout(list(blocks))


# --------------------------------------------------------------------------- drawing


def _plt():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    image = image.astype(np.float32)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    if image.shape[-1] == 1:
        return image[..., 0], 'gray'
    return image, None


def _upsample(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(
        jax.image.resize(jnp.asarray(grid_map, jnp.float32), (height, width), 'nearest')
    )


def draw_vit(
    run,
    images: np.ndarray,
    labels: np.ndarray,
    logits: np.ndarray,
    intermediates: dict,
    out_dir: Path,
) -> list[Path]:
    plt = _plt()
    model = run.model
    heads, rolled = vit_query_maps(model, intermediates)
    height, width = images.shape[1:3]
    rows, cols = grid_shape(heads.shape[-1], height, width)
    names = run.info.class_names or [str(i) for i in range(run.info.num_classes)]
    predicted = logits.argmax(-1)
    query = {'token': 'class token', 'map': 'MAP probe', 'gap': 'mean patch query'}[model.pool]
    written = []

    n, num_heads = len(images), heads.shape[1]
    fig, axes = plt.subplots(
        n, num_heads + 1, figsize=(1.6 * (num_heads + 1), 1.7 * n), squeeze=False
    )
    for i in range(n):
        shown, cmap = _display(images[i])
        axes[i, 0].imshow(shown, cmap=cmap)
        axes[i, 0].set_title(f'{names[labels[i]]}\n-> {names[predicted[i]]}', fontsize=7)
        for h in range(num_heads):
            attention_map = _upsample(heads[i, h].reshape(rows, cols), height, width)
            axes[i, h + 1].imshow(shown, cmap=cmap)
            axes[i, h + 1].imshow(attention_map, cmap='inferno', alpha=0.6)
            if i == 0:
                axes[i, h + 1].set_title(f'head {h}', fontsize=8)
    for ax in axes.ravel():
        ax.axis('off')
    fig.suptitle(
        f'{run.config.model.name}: last block, {query} over {rows}x{cols} patches', fontsize=9
    )
    fig.tight_layout()
    written.append(_save(fig, out_dir / 'vit_attention_heads.png'))

    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for i in range(n):
        shown, cmap = _display(images[i])
        axes[0, i].imshow(shown, cmap=cmap)
        axes[0, i].set_title(names[labels[i]], fontsize=8)
        axes[1, i].imshow(shown, cmap=cmap)
        axes[1, i].imshow(
            _upsample(rolled[i].reshape(rows, cols), height, width), cmap='inferno', alpha=0.6
        )
    for ax in axes.ravel():
        ax.axis('off')
    fig.suptitle(f'attention rollout through {model.depth} blocks ({query})', fontsize=9)
    fig.tight_layout()
    written.append(_save(fig, out_dir / 'vit_attention_rollout.png'))
    return written


def swin_stage_geometry(model, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Per stage: (token rows, token cols, window, shift of the odd blocks), as the model cuts
    it."""
    from nets.models import swin

    return swin.stage_windows(height, width, model.patch_size, len(model.depths), model.window_size)


def swin_block_weights(intermediates: dict, stage: int, num_blocks: int) -> list[np.ndarray]:
    """Attention weights (batch*windows, heads, N, N) of each block of one stage."""
    return [
        intermediates[f'stage{stage}_block{i}']['window_attention']['attention'][
            'attention_weights'
        ][0]
        for i in range(num_blocks)
    ]


def swin_token_attention(
    window_weights: np.ndarray,
    rows: int,
    cols: int,
    window: int,
    shift: int,
    token: tuple[int, int],
) -> np.ndarray:
    """(rows, cols) map of how much `token` (original coordinates) attends to every token.

    `window_weights`: one image's (windows, heads, N, N), windows numbered row-major on the
    map rolled by -shift (as nets.models.swin cuts it); heads are averaged. Tokens outside the
    token's window get 0.
    """
    r, c = (token[0] - shift) % rows, (token[1] - shift) % cols  # where the roll put it
    windows_per_row = cols // window
    win = (r // window) * windows_per_row + c // window
    weights = window_weights[win].mean(0)[(r % window) * window + c % window]  # (N,)
    attention_map = np.zeros((rows, cols), np.float32)
    top, left = (win // windows_per_row) * window, (win % windows_per_row) * window
    for m, weight in enumerate(weights):
        rolled_r, rolled_c = top + m // window, left + m % window
        attention_map[(rolled_r + shift) % rows, (rolled_c + shift) % cols] = weight
    return attention_map


def draw_swin(
    run, images: np.ndarray, labels: np.ndarray, intermediates: dict, out_dir: Path
) -> list[Path]:
    from nets.models import swin

    plt = _plt()
    model = run.model
    height, width = images.shape[1:3]
    geometry = swin_stage_geometry(model, height, width)
    shown, cmap = _display(images[0])
    fig, axes = plt.subplots(2, len(geometry), figsize=(3.2 * len(geometry), 6.4), squeeze=False)
    for stage, (rows, cols, window, shift) in enumerate(geometry):
        for row, (kind, this_shift) in enumerate((('regular', 0), ('shifted', shift))):
            ax = axes[row, stage]
            index = swin.window_index_map(rows, cols, window, this_shift)
            # One colour per group of tokens that may attend to each other.
            groups = swin.attention_group_map(rows, cols, window, this_shift)
            ax.imshow(shown, cmap=cmap, extent=(0, cols, rows, 0))
            ax.imshow(
                groups, cmap='tab20', alpha=0.45, extent=(0, cols, rows, 0), interpolation='nearest'
            )
            _draw_boundaries(ax, index, color='white', width=2.0)
            _draw_boundaries(ax, groups, color='black', width=0.8, dashed=True)
            ax.set_title(
                f'stage {stage + 1}: {rows}x{cols} tokens, window {window}, '
                f'{kind}' + (f' (shift {this_shift})' if this_shift else ''),
                fontsize=7,
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        'Swin windows: white lines = attention windows; dashed = mask regions inside a\n'
        'shifted window (tokens attend only within their colour)',
        fontsize=8,
    )
    fig.tight_layout()
    written = [_save(fig, out_dir / 'swin_windows.png')]

    # One token's attention over its window in the first regular and the first shifted block.
    rows, cols, window, shift = geometry[0]
    block_weights = swin_block_weights(intermediates, 0, min(model.depths[0], 2))
    fig, axes = plt.subplots(
        1, 1 + len(block_weights), figsize=(3.2 * (1 + len(block_weights)), 3.2), squeeze=False
    )
    axes[0, 0].imshow(shown, cmap=cmap)
    axes[0, 0].set_title(
        f'{run.info.class_names[labels[0]] if run.info.class_names else labels[0]}', fontsize=8
    )
    # A token just inside the first shifted window's border, so the shifted block shows
    # its window spanning the regular windows' boundary.
    token = (window - 1, window - 1) if rows > window else (0, 0)
    for b, weights in enumerate(block_weights):
        block_shift = shift if b % 2 else 0
        attention_map = swin_token_attention(
            weights[: len(weights) // len(images)], rows, cols, window, block_shift, token
        )
        ax = axes[0, b + 1]
        ax.imshow(shown, cmap=cmap, extent=(0, cols, rows, 0))
        ax.imshow(
            attention_map,
            cmap='inferno',
            alpha=0.65,
            extent=(0, cols, rows, 0),
            interpolation='nearest',
        )
        ax.plot(token[1] + 0.5, token[0] + 0.5, 'c+', markersize=10)
        ax.set_title(
            f'block {b} ({"shifted" if block_shift else "regular"}): token {token}', fontsize=8
        )
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    written.append(_save(fig, out_dir / 'swin_attention.png'))
    return written


def _draw_boundaries(
    ax, labels: np.ndarray, *, color: str, width: float, dashed: bool = False
) -> None:
    """Lines between horizontally or vertically adjacent cells with different labels."""
    rows, cols = labels.shape
    style = dict(color=color, linewidth=width, linestyle='--' if dashed else '-')
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and labels[r, c] != labels[r, c + 1]:
                ax.plot([c + 1, c + 1], [r, r + 1], **style)
            if r + 1 < rows and labels[r, c] != labels[r + 1, c]:
                ax.plot([c, c + 1], [r + 1, r + 1], **style)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# --------------------------------------------------------------------------- entry point


def show_attention(
    workdir: str | Path, num_images: int = 6, split: str | None = None
) -> list[Path]:
    """Writes the pictures for the run in `workdir`; returns their paths."""
    import nets
    from experiments.analysis.runs import load_run

    run = load_run(workdir)
    family = nets.model_family(run.config.model.name)
    if family not in ('vit', 'swin'):
        raise ValueError(
            f'{str(workdir)!r} trained {run.config.model.name!r} (family {family!r}); '
            "show_attention draws families 'vit' and 'swin'"
        )
    images, labels = test_images(run, num_images, split)
    logits, intermediates = sown_attention(run, images)
    out_dir = Path(workdir) / 'pictures'
    if family == 'vit':
        return draw_vit(run, images, labels, logits, intermediates, out_dir)
    return draw_swin(run, images, labels, intermediates, out_dir)


def main(argv: Sequence[str]) -> None:
    del argv
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    options = flags.FLAGS
    if not options.workdir:
        raise app.UsageError('--workdir is required: a training workdir of a ViT or Swin run')
    for path in show_attention(options.workdir, options.num_images, options.split):
        print(path)


if __name__ == '__main__':
    define_flags()
    cli.run(main)
