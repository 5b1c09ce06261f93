"""Position information for attention: sinusoidal, learned, and relative bias.

- `sinusoidal_1d`: Vaswani et al.'s fixed encoding, PE(p, 2i) = sin(p / 10000^(2i/D)),
  PE(p, 2i+1) = cos(...). Defined for any position, so a model can read
  sequences longer than any seen in training, and PE(p)·PE(q) depends only on
  p - q (a sum of cosines of the offset).
- `sincos_2d`: the same idea per image axis (a quarter of the channels each for
  sin/cos of x and y), as in MoCo v3 / big_vision's ViT.
- `AddLearnedPositionEmbedding`: a trainable table, as in BERT and the original ViT;
  `resize_grid_embedding` interpolates a trained grid table to a new image size.
- `RelativePositionBias`: Swin's learned bias B[dy, dx, head] added to the
  attention logits inside a window.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def sinusoidal_1d(
    length: int, features: int, *, max_timescale: float = 10_000.0, offset: int = 0
) -> np.ndarray:
    """(length, features) sinusoidal encodings of positions offset..offset+length-1.

    Even channels hold sines and odd channels cosines of the same frequency, as
    in the paper. `features` must be even.
    """
    if features % 2:
        raise ValueError(f'sinusoidal position encoding needs an even width, got {features}')
    positions = np.arange(offset, offset + length, dtype=np.float64)[:, None]
    inv_freq = 1.0 / max_timescale ** (np.arange(0, features, 2, dtype=np.float64) / features)
    angles = positions * inv_freq[None, :]
    table = np.empty((length, features), np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)
    return table.astype(np.float32)


def sinusoidal_at(
    positions: jax.Array, features: int, *, max_timescale: float = 10_000.0
) -> jax.Array:
    """Sinusoidal encodings of traced integer positions (...,) -> (..., features).

    Same values as `sinusoidal_1d`; used by step-by-step decoding where the
    position is a traced cache index.
    """
    if features % 2:
        raise ValueError(f'sinusoidal position encoding needs an even width, got {features}')
    inv_freq = 1.0 / max_timescale ** (jnp.arange(0, features, 2, dtype=jnp.float32) / features)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(
        *positions.shape, features
    )


def sincos_2d(
    height: int, width: int, features: int, *, temperature: float = 10_000.0
) -> np.ndarray:
    """Fixed 2-D sine-cosine embedding, (height*width, features), row-major grid.

    A quarter of the channels each for sin/cos of the x and y coordinate.
    """
    if features % 4 != 0:
        raise ValueError(
            f'sincos2d position embedding needs a width divisible by 4, got {features}'
        )
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(features // 4) / (features // 4))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class AddLearnedPositionEmbedding(nn.Module):
    """Adds a trainable (1, length, width) table to (batch, length, width) inputs."""

    stddev: float = 0.02
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        table = self.param(
            'pos_embedding',
            nn.initializers.normal(stddev=self.stddev),
            (1, *x.shape[1:]),
            self.param_dtype,
        )
        return x + table.astype(x.dtype)


def resize_grid_embedding(
    table: jax.Array | np.ndarray,
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 0,
    method: str = 'bilinear',
) -> jax.Array:
    """Interpolates a learned (1, prefix + h*w, D) grid embedding to (1, prefix + H*W, D).

    The class-token rows (`num_prefix_tokens`) are kept as they are; the grid
    is assumed square in the old table. This is how a ViT trained at one
    resolution is fine-tuned at another.
    """
    table = jnp.asarray(table)
    if table.ndim != 3 or table.shape[0] != 1:
        raise ValueError(f'expected a (1, length, width) position table, got shape {table.shape}')
    prefix, grid = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    old_side = int(round(grid.shape[1] ** 0.5))
    if old_side * old_side != grid.shape[1]:
        raise ValueError(
            f"the table's {grid.shape[1]} grid rows do not form a square grid; "
            f'check num_prefix_tokens (got {num_prefix_tokens})'
        )
    grid = grid.reshape(old_side, old_side, -1)
    grid = jax.image.resize(grid, (*new_grid, grid.shape[-1]), method=method)
    return jnp.concatenate([prefix, grid.reshape(1, -1, grid.shape[-1])], axis=1)


def relative_position_index(window: tuple[int, int]) -> np.ndarray:
    """(wh*ww, wh*ww) index into a (2wh-1)(2ww-1) bias table for each query/key pair."""
    wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')).reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, N, N), offsets in [-w+1, w-1]
    dy = relative[0] + wh - 1
    dx = relative[1] + ww - 1
    return (dy * (2 * ww - 1) + dx).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Swin's learned relative position bias: returns (heads, N, N) for an N-token window.

    A table of (2·wh − 1)(2·ww − 1) entries per head, indexed by the (dy, dx)
    offset between query and key, so every pair at the same offset shares one
    learned value.
    """

    num_heads: int
    window: tuple[int, int]
    stddev: float = 0.02
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        wh, ww = self.window
        table = self.param(
            'relative_position_bias_table',
            nn.initializers.truncated_normal(self.stddev),
            ((2 * wh - 1) * (2 * ww - 1), self.num_heads),
            self.param_dtype,
        )
        index = relative_position_index(self.window)
        bias = table[index.reshape(-1)].reshape(wh * ww, wh * ww, self.num_heads)
        return jnp.transpose(bias, (2, 0, 1))
