"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

Layout, as the official code (microsoft/Swin-Transformer, v1):
patch partition + linear embedding (a conv with stride = patch size, then
LayerNorm) -> stages of Swin blocks -> final LayerNorm -> global average pool
-> linear head. Between stages a patch merging layer concatenates each 2x2
neighbourhood (4C channels), normalises it and projects it to 2C without bias,
halving the resolution. A Swin block is

    x = x + DropPath(Dropout(W-MSA(LN(x))))      W-MSA or SW-MSA, alternating
    x = x + DropPath(MLP_4x(LN(x)))

where W-MSA is multi-head self-attention inside non-overlapping window x window
windows, with Swin's learned relative position bias (nets.layers.position) added to the
logits, computed by `nets.layers.attention.MultiHeadAttention`. Odd blocks of a stage
(1, 3, ...) use shifted windows (SW-MSA): the feature map is rolled by
-window // 2 along both axes (a cyclic shift), partitioned into regular
windows, and a mask (`shifted_window_mask`) stops a token from attending to
tokens that came from the other side of the wrapped border; the result is
rolled back. Where a stage's feature map is not larger than the window, that
stage uses window = the feature map's shorter side and no shift, as the
official code does (at 224 px the last stage is 7x7: one window, no shift).

Image sizes: H and W must be multiples of patch_size * 2**(stages - 1) (so
every patch merging sees an even map) and each stage's map must be a multiple
of its window; multiples of patch_size * window_size * 2**(stages - 1) (224
for the registered variants) always work. Other sizes raise a ValueError that
names the sizes (no padding: padded tokens would need masks of their own). The
relative position bias table has (2w - 1)^2 rows for the window w a stage
actually uses, so images small enough to shrink a stage's window give a model
with smaller tables (as in the official code).

The registered variants (patch 4, window 7, 224 px, 1000 classes) match the
official/timm parameter counts exactly: swin_t 28,288,354, swin_s 49,606,258,
swin_b 87,768,224, swin_l 196,532,476. They default to the paper's stochastic
depth (0.2/0.3/0.5 for T/S/B on ImageNet-1k; 0.2 for L, the official
ImageNet-22k setting, the only one L was trained with). Stochastic depth rises
linearly from 0 in the first block to `drop_path_rate` in the last, over all
stages. Initialisation as the official code: truncated normal (std 0.02) for
Dense kernels and the bias tables; LayerNorm epsilon 1e-5 (PyTorch's default,
which the official code keeps).

The pure numpy helpers `window_partition`, `window_reverse`,
`shifted_window_mask`, `window_index_map`, `region_map`, `attention_group_map`
and `stage_windows` describe the partitions exactly as the model uses them, so
pictures of windows and shifted windows can be drawn from them. The attention
weights of every block, (batch * windows, heads, N, N) with N = window², are
sown into 'intermediates' under 'stage<s>_block<i>'/'window_attention'/
'attention'/'attention_weights' when that collection is mutable.
"""

import numbers
from collections.abc import Sequence
from typing import Any, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets.kernels.conv import Conv
from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.attention import IMPLEMENTATIONS, SCORINGS, MultiHeadAttention
from nets.layers.position import RelativePositionBias
from nets.registry import register

Dtype = Any
ArrayT = TypeVar('ArrayT', np.ndarray, jax.Array)

# PyTorch's LayerNorm default, kept by the official Swin code (the ViT files use 1e-6).
LAYER_NORM_EPSILON = 1e-5
# Number of mask regions per axis under a cyclic shift: the unwrapped part of
# the map, the last window's part before the wrap, and the wrapped-in strip.
_REGIONS_PER_AXIS = 3


# --------------------------------------------------------------------------- windows


def _check_windows(height: int, width: int, window: int, shift: int) -> None:
    if window < 1 or height % window or width % window:
        raise ValueError(
            f'window {window} must be positive and divide the feature map {height}x{width}'
        )
    if not 0 <= shift < window:
        raise ValueError(f'shift must be in [0, window={window}), got {shift}')


def window_partition(x: ArrayT, window: int) -> ArrayT:
    """Cut (batch, H, W, C) maps into (batch * num_windows, window, window, C) windows.

    Windows are non-overlapping squares taken in row-major order over the
    (H / window, W / window) window grid, batch-major: window k of example b
    is row b * num_windows + k, and covers rows (k // (W / window)) * window
    onwards and columns (k % (W / window)) * window onwards. Works on numpy and
    JAX arrays alike (only reshape and transpose); H and W must be multiples of
    `window`. `window_reverse` undoes it.
    """
    batch, height, width, channels = x.shape
    _check_windows(height, width, window, 0)
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)


def window_reverse(windows: ArrayT, window: int, height: int, width: int) -> ArrayT:
    """Stitch (batch * num_windows, window, window, C) windows back into (batch, H, W, C) maps.

    The inverse of `window_partition(x, window)` for maps of size height x width.
    """
    _check_windows(height, width, window, 0)
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def _shifted_region_labels(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(H, W) mask-region labels 0..8 in the SHIFTED (rolled) coordinates, as the official code.

    Along each axis of length L the rolled map has three strips: [0, L - window)
    holds tokens that did not move across the border and whose windows are all
    whole; [L - window, L - shift) is the unwrapped part of the last window;
    [L - shift, L) holds the tokens the roll wrapped round from the start of
    the map. The label is 3 * row strip + column strip. With shift 0 every
    label is 0.
    """

    def strips(length: int) -> np.ndarray:
        labels = np.zeros(length, np.int64)
        if shift:
            labels[length - window : length - shift] = 1
            labels[length - shift :] = 2
        return labels

    return _REGIONS_PER_AXIS * strips(height)[:, None] + strips(width)[None, :]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(num_windows, N, N) boolean attention mask for (shifted) windows; True = may attend.

    N = window². Window k is the k-th window of `window_partition` applied to
    the map AFTER the cyclic shift `roll(x, (-shift, -shift), axes=(H, W))`,
    and the N tokens of a window are in row-major order inside it. Query i may
    attend key j of a window only when both lie in the same region of the
    rolled map (see `region_map`): tokens the roll brought round from the
    opposite border are not neighbours of the tokens they now sit next to.
    Windows away from the bottom and right borders hold one region and are all
    True; with shift = 0 the whole mask is True.
    """
    _check_windows(height, width, window, shift)
    labels = _shifted_region_labels(height, width, window, shift)
    per_window = window_partition(labels[None, :, :, None], window).reshape(-1, window * window)
    return per_window[:, :, None] == per_window[:, None, :]


def window_index_map(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(H, W) int: the attention window each token falls in, in ORIGINAL (unshifted) coordinates.

    Entry [i, j] is the index k (row-major over the (H / window, W / window)
    window grid, as `window_partition` and `shifted_window_mask` number them)
    of the window that token (i, j) lands in after the cyclic shift, i.e. at
    rolled position ((i - shift) mod H, (j - shift) mod W). With shift = 0 this
    is the plain window grid. With a shift the windows of the last row and
    column of the grid wrap round: their tokens come from both borders of the
    original map. Tokens with the same window index attend to each other only
    when they also share a `region_map` label (`attention_group_map` combines
    the two).
    """
    _check_windows(height, width, window, shift)
    rows = (np.arange(height) - shift) % height
    cols = (np.arange(width) - shift) % width
    return (rows // window)[:, None] * (width // window) + (cols // window)[None, :]


def region_map(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(H, W) int mask-region label 0..8 of each token, in ORIGINAL (unshifted) coordinates.

    The labels `shifted_window_mask` compares, moved back to where the tokens
    sit before the roll. Along each axis of length L: the first `shift`
    rows/columns (the ones the roll wraps round) form strip 2, the last
    window - shift form strip 1, the rest strip 0; the label is
    3 * row strip + column strip. All zeros when shift = 0.
    """
    _check_windows(height, width, window, shift)
    # Rolled position r holds original token (r + shift) mod L, so rolling the
    # labels forward by `shift` puts each label back on its token.
    return np.roll(
        _shifted_region_labels(height, width, window, shift), (shift, shift), axis=(0, 1)
    )


def attention_group_map(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(H, W) int, ORIGINAL coordinates: two tokens may attend to each other iff their values are
    equal.

    Combines `window_index_map` and `region_map` into consecutive group ids
    0..G-1 (numbered in order of (window, region)). With shift = 0 the groups
    are the windows; with a shift the wrapped windows split into 2 or 4 groups.
    """
    combined = window_index_map(height, width, window, shift) * _REGIONS_PER_AXIS**2 + region_map(
        height, width, window, shift
    )
    _, groups = np.unique(combined, return_inverse=True)
    return groups.reshape(height, width)


def stage_windows(
    height: int, width: int, patch_size: int, num_stages: int, window_size: int
) -> list[tuple[int, int, int, int]]:
    """(feature height, feature width, window, shift of odd blocks) for each stage of a Swin.

    Stage 0 sees the patch grid (H / patch_size, W / patch_size); each later
    stage half of the previous one. A stage whose shorter side is <= window_size
    uses window = that side and no shift (the official code's rule); others use
    window_size and shift window_size // 2 in their odd blocks. Raises a
    ValueError naming the image size, the feature map and the window when the
    image cannot be cut this way.
    """
    step = patch_size * 2 ** (num_stages - 1)
    always = patch_size * window_size * 2 ** (num_stages - 1)
    hint = (
        f' (patch_size={patch_size}, window_size={window_size}, {num_stages} stages: '
        f'sizes that are multiples of {always} always work)'
    )
    if height % step or width % step:
        raise ValueError(
            f'Swin input size {height}x{width} is not a multiple of patch_size * '
            f'2**(stages - 1) = {step}, which patch merging needs{hint}'
        )
    plan = []
    h, w = height // patch_size, width // patch_size
    for stage in range(num_stages):
        if min(h, w) <= window_size:
            window, shift = min(h, w), 0
        else:
            window, shift = window_size, window_size // 2
        if h % window or w % window:
            raise ValueError(
                f'Swin input size {height}x{width}: the stage {stage} feature map {h}x{w} '
                f'is not a multiple of its window {window}{hint}'
            )
        plan.append((h, w, window, shift))
        h, w = h // 2, w // 2
    return plan


# --------------------------------------------------------------------------- modules


def _layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=param_dtype, name=name)


class WindowAttention(nn.Module):
    """(S)W-MSA on a (batch, H, W, C) map: multi-head self-attention inside (shifted) windows.

    Rolls the map by -shift_size (if any), cuts it into window x window
    windows, runs `MultiHeadAttention` on each with the relative position bias
    and, when shifted, `shifted_window_mask`, then stitches and rolls back.
    Output has the input's shape; token (i, j) of the output is token (i, j)'s
    attention output.
    """

    num_heads: int
    window_size: int
    shift_size: int = 0
    attention_dropout_rate: float = 0.0
    attention_implementation: str = 'auto'
    attention_scoring: str = 'dot'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        batch, height, width, channels = x.shape
        window, shift = self.window_size, self.shift_size
        _check_windows(height, width, window, shift)
        tokens = window * window
        if shift:
            x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
        windows = window_partition(x, window).reshape(-1, tokens, channels)
        bias = RelativePositionBias(
            self.num_heads,
            (window, window),
            param_dtype=self.param_dtype,
            name='relative_position_bias',
        )()
        mask = None
        if shift:
            # A numpy constant: folded into the compiled program, not a parameter.
            per_window = shifted_window_mask(height, width, window, shift)
            num_windows = per_window.shape[0]
            mask = jnp.broadcast_to(
                jnp.asarray(per_window)[None], (batch, num_windows, tokens, tokens)
            )
            mask = mask.reshape(batch * num_windows, 1, tokens, tokens)
        y = MultiHeadAttention(
            self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            kernel_init='truncated_normal',
            implementation=self.attention_implementation,
            scoring=self.attention_scoring,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='attention',
        )(windows, mask=mask, bias=bias[None], train=train)
        y = window_reverse(y.reshape(-1, window, window, channels), window, height, width)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        return y


class SwinBlock(nn.Module):
    """x + DropPath(Dropout((S)W-MSA(LN(x)))), then x + DropPath(MLP(LN(x))), on (batch, H, W, C)
    maps."""

    num_heads: int
    window_size: int
    shift_size: int = 0
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention_implementation: str = 'auto'
    attention_scoring: str = 'dot'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = x.shape[-1]
        y = _layer_norm('norm1', **dims)(x)
        y = WindowAttention(
            self.num_heads,
            self.window_size,
            self.shift_size,
            attention_dropout_rate=self.attention_dropout_rate,
            attention_implementation=self.attention_implementation,
            attention_scoring=self.attention_scoring,
            name='window_attention',
            **dims,
        )(y, train=train)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        # DropPath on whole maps (not windows), so a dropped branch is dropped for the whole
        # example.
        x = x + blocks.DropPath(self.drop_path_rate)(y, train=train)
        y = _layer_norm('norm2', **dims)(x)
        y = blocks.MlpBlock(
            int(channels * self.mlp_ratio),
            activation='gelu',
            dropout_rate=self.dropout_rate,
            kernel_init='truncated_normal',
            name='mlp',
            **dims,
        )(y, train=train)
        return x + blocks.DropPath(self.drop_path_rate)(y, train=train)


class PatchMerging(nn.Module):
    """(batch, H, W, C) -> (batch, H/2, W/2, 2C): concat each 2x2 neighbourhood, LayerNorm,
    Dense 4C->2C (no bias)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        # The official order (top-left, bottom-left, top-right, bottom-right), so weights port
        # directly.
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = _layer_norm('norm', self.dtype, self.param_dtype)(x)
        return Dense(
            2 * channels,
            use_bias=False,
            kernel_init=blocks.initializer('truncated_normal'),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='reduction',
        )(x)


class SwinTransformer(nn.Module):
    """Swin Transformer classifier on (N, H, W, C) images; see the module docstring.

    Stage i has `depths[i]` blocks of width embed_dim * 2**i with
    `num_heads[i]` heads; patch merging sits between stages. Block j of a stage
    uses shifted windows when j is odd (and the stage's map is larger than the
    window). `mlp_ratio` sets the MLP's hidden width; `dropout_rate` applies
    after the patch embedding, the attention projection and in the MLP;
    `attention_dropout_rate` to the attention weights; `drop_path_rate` is the
    stochastic-depth rate of the last block. `attention_scoring='cosine'` scores
    window attention by Swin v2's scaled cosine (`nets.layers.attention`; one
    learned logit scale per head and block) instead of the scaled dot product.
    See `stage_windows` for the accepted image sizes.
    """

    num_classes: int = 1000
    patch_size: int = 4
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention_implementation: str = 'auto'
    attention_scoring: str = 'dot'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice(
            'attention_implementation', self.attention_implementation, IMPLEMENTATIONS
        )
        blocks.check_choice('attention_scoring', self.attention_scoring, SCORINGS)
        for rate in ('dropout_rate', 'attention_dropout_rate', 'drop_path_rate'):
            blocks.check_rate(rate, getattr(self, rate))
        for field in ('num_classes', 'patch_size', 'embed_dim', 'window_size'):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f'{field} must be a positive int, got {value!r}')
        if not self.mlp_ratio > 0:
            raise ValueError(f'mlp_ratio must be positive, got {self.mlp_ratio!r}')
        if (
            not isinstance(self.depths, Sequence)
            or not isinstance(self.num_heads, Sequence)
            or not self.depths
            or len(self.depths) != len(self.num_heads)
            or min(self.depths) < 1
            or min(self.num_heads) < 1
        ):
            raise ValueError(
                f'depths and num_heads must be non-empty tuples of positive ints of equal '
                f'length (one entry per stage), got depths={self.depths!r}, '
                f'num_heads={self.num_heads!r}'
            )
        for stage, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**stage
            if width % heads:
                raise ValueError(
                    f'stage {stage} width {width} (embed_dim {self.embed_dim} * 2**{stage}) '
                    f'is not divisible by its num_heads {heads}'
                )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'SwinTransformer expects (N, H, W, C) images, got shape {x.shape}')
        plan = stage_windows(
            x.shape[1], x.shape[2], self.patch_size, len(self.depths), self.window_size
        )
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.patch_size
        x = x.astype(self.dtype)
        x = Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding='VALID',
            kernel_init=blocks.initializer('lecun_normal'),
            name='patch_embed',
            **dims,
        )(x)
        x = _layer_norm('patch_embed_norm', **dims)(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        total_blocks = sum(self.depths)
        index = 0
        for stage, (depth, heads, (_, _, window, shift)) in enumerate(
            zip(self.depths, self.num_heads, plan)
        ):
            if stage > 0:
                x = PatchMerging(name=f'merge{stage}', **dims)(x)
            for i in range(depth):
                rate = self.drop_path_rate * index / max(total_blocks - 1, 1)
                x = SwinBlock(
                    heads,
                    window,
                    shift if i % 2 else 0,
                    mlp_ratio=self.mlp_ratio,
                    dropout_rate=self.dropout_rate,
                    attention_dropout_rate=self.attention_dropout_rate,
                    drop_path_rate=rate,
                    attention_implementation=self.attention_implementation,
                    attention_scoring=self.attention_scoring,
                    name=f'stage{stage}_block{i}',
                    **dims,
                )(x, train=train)
                index += 1
        x = _layer_norm('norm', **dims)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = Dense(
            self.num_classes,
            kernel_init=blocks.initializer('truncated_normal'),
            name='head',
            **dims,
        )(x)
        return x.astype(jnp.float32)


_VARIANTS = {
    # name: (embed_dim, depths, num_heads, stochastic depth)
    'swin_t': (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    'swin_s': (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
    'swin_b': (128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
    'swin_l': (192, (2, 2, 18, 2), (6, 12, 24, 48), 0.2),
}
for _name, (_embed_dim, _depths, _heads, _drop_path) in _VARIANTS.items():
    register(
        _name,
        SwinTransformer,
        family='swin',
        patch_size=4,
        window_size=7,
        embed_dim=_embed_dim,
        depths=_depths,
        num_heads=_heads,
        drop_path_rate=_drop_path,
    )
