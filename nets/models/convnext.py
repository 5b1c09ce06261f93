"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s").

Layout: patchify stem (4x4 stride-4 conv + LayerNorm); stages of blocks
x + DropPath(γ · Dense(GELU(Dense_4x(LN(dwconv7x7(x)))))) with a per-channel
layer scale γ (init 1e-6); between stages LayerNorm + 2x2 stride-2 conv; then
global average pool, LayerNorm and the linear head. The two Dense layers are
the paper's 1x1 convs, applied channels-last. Registered variants match
torchvision's parameter counts exactly (224 px, 1000 classes): convnext_t
28,589,128, convnext_s 50,223,688, convnext_b 88,591,464, convnext_l 197,767,336;
they default to the paper's ImageNet-1k stochastic depth (0.1/0.4/0.5/0.5),
rising linearly from 0 in the first block to `drop_path_rate` in the last.

Initialisation as the paper's code: truncated normal (std 0.02) for conv and
Dense kernels, zero biases. LayerNorm epsilon 1e-6.

stem='small' is a 2x2 stride-2 patchify (+ LayerNorm) for 28-32 px images:
with four stages a 28x28 input runs at 14, 7, 3 and 1 px. The smallest input
is the total stride: 32 px for 'imagenet', 16 px for 'small' (four stages).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.conv import Conv
from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any

STEMS = ('imagenet', 'small')
_STEM_STRIDE = {'imagenet': 4, 'small': 2}


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, Dense 4x, GELU, Dense, layer scale, stochastic depth,
    residual."""

    kernel_size: int = 7
    mlp_ratio: int = 4
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = dict(kernel_init=blocks.initializer('truncated_normal'), **dims)
        k = self.kernel_size
        y = Conv(
            dim,
            (k, k),
            padding=[(k // 2, k // 2)] * 2,
            feature_group_count=dim,
            name='dwconv',
            **init,
        )(x)
        y = blocks.layer_norm(name='norm', **dims)(y)
        y = Dense(self.mlp_ratio * dim, name='pwconv1', **init)(y)
        y = blocks.activation('gelu')(y)
        y = Dense(dim, name='pwconv2', **init)(y)
        if self.layer_scale_init > 0:
            # Tiny γ: every block starts close to the identity, so deep stacks train from the start.
            gamma = self.param(
                'layer_scale',
                nn.initializers.constant(self.layer_scale_init),
                (dim,),
                self.param_dtype,
            )
            y = y * gamma.astype(self.dtype)
        return x + blocks.DropPath(self.drop_path_rate)(y, train=train)


class ConvNeXt(nn.Module):
    """ConvNeXt classifier on (N, H, W, C) images; see the module docstring.

    Stage i has `depths[i]` blocks of width `dims[i]`. `layer_scale_init=0`
    removes the layer scale. `drop_path_rate` is the stochastic-depth rate of
    the last block (0 for the first, linear in between).
    """

    num_classes: int = 1000
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    stem: str = 'imagenet'
    kernel_size: int = 7
    mlp_ratio: int = 4
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('stem', self.stem, STEMS)
        blocks.check_rate('drop_path_rate', self.drop_path_rate)
        if (
            not self.depths
            or len(self.depths) != len(self.dims)
            or min(self.depths) < 1
            or min(self.dims) < 1
        ):
            raise ValueError(
                f'depths and dims must be non-empty tuples of positive ints of equal length, '
                f'got depths={self.depths!r}, dims={self.dims!r}'
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.mlp_ratio < 1:
            raise ValueError(
                f'kernel_size must be a positive odd int and mlp_ratio positive, got '
                f'kernel_size={self.kernel_size}, mlp_ratio={self.mlp_ratio}'
            )
        if self.layer_scale_init < 0:
            raise ValueError(
                f'layer_scale_init must be >= 0 (0: no layer scale), got {self.layer_scale_init!r}'
            )
        super().__post_init__()

    def min_input_size(self) -> int:
        """Smallest H and W: the stem stride times 2 per downsampling between stages."""
        return _STEM_STRIDE[self.stem] * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'ConvNeXt expects (N, H, W, C) images, got shape {x.shape}')
        minimum = self.min_input_size()
        if min(x.shape[1:3]) < minimum:
            raise ValueError(
                f'Input size {x.shape[1]}x{x.shape[2]} is too small for stem {self.stem!r} and '
                f'{len(self.depths)} stages: minimum {minimum}x{minimum}'
            )
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = dict(kernel_init=blocks.initializer('truncated_normal'), **dims)
        s = _STEM_STRIDE[self.stem]
        x = x.astype(self.dtype)
        x = Conv(self.dims[0], (s, s), strides=(s, s), padding='VALID', name='stem', **init)(x)
        x = blocks.layer_norm(name='stem_norm', **dims)(x)

        total_blocks = sum(self.depths)
        index = 0
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if stage > 0:
                x = blocks.layer_norm(name=f'downsample{stage}_norm', **dims)(x)
                x = Conv(
                    dim, (2, 2), strides=(2, 2), padding='VALID', name=f'downsample{stage}', **init
                )(x)
            for i in range(depth):
                rate = self.drop_path_rate * index / max(total_blocks - 1, 1)
                x = ConvNeXtBlock(
                    self.kernel_size,
                    self.mlp_ratio,
                    drop_path_rate=rate,
                    layer_scale_init=self.layer_scale_init,
                    name=f'stage{stage}_block{i}',
                    **dims,
                )(x, train=train)
                index += 1
        x = jnp.mean(x, axis=(1, 2))
        x = blocks.layer_norm(name='head_norm', **dims)(x)
        x = Dense(self.num_classes, name='head', **init)(x)
        return x.astype(jnp.float32)


_VARIANTS = {
    # name: (depths, dims, ImageNet-1k stochastic depth)
    'convnext_t': ((3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    'convnext_s': ((3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    'convnext_b': ((3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    'convnext_l': ((3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
}
for _name, (_depths, _dims, _drop_path) in _VARIANTS.items():
    register(
        _name, ConvNeXt, family='convnext', depths=_depths, dims=_dims, drop_path_rate=_drop_path
    )
