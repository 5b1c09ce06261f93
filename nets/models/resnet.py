"""Residual networks (He et al. 2015), torchvision "v1.5" layout.

ImageNet variants resnet18/34/50/101/152 match torchvision's parameter counts
exactly (convs without bias, BatchNorm with scale and bias, Dense head with
bias). The bottleneck puts the stride on its 3x3 conv (v1.5); a shortcut that
changes shape is a 1x1 conv + BatchNorm (option B).

CIFAR variants resnet20/32/44/56/110 follow §4.2 of the paper: a 3x3 stem,
three stages of n = (depth - 2) / 6 basic blocks with 16/32/64 filters. They
use projection shortcuts (option B) by default, which adds a few thousand
parameters over the paper's zero-padding shortcuts (option A: resnet20 has
269,722 parameters with `shortcut='pad'` and 272,474 with 'projection');
`shortcut='pad'` reproduces option A.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any

BLOCKS = ('basic', 'bottleneck')
STEMS = ('imagenet', 'cifar')
SHORTCUTS = ('projection', 'pad')


class Shortcut(nn.Module):
    """Identity, or a shape-matching shortcut when stride or width changes.

    'projection': 1x1 conv (strided) + BatchNorm. 'pad': subsample by the stride
    and append zero channels (parameter-free, option A of the paper).
    """

    features: int
    strides: int = 1
    kind: str = 'projection'
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.strides == 1 and x.shape[-1] == self.features:
            return x
        if self.kind == 'projection':
            return blocks.ConvNormAct(
                self.features,
                1,
                strides=self.strides,
                activation='identity',
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name='proj',
            )(x, train=train)
        if x.shape[-1] > self.features:
            raise ValueError(
                f"'pad' shortcut cannot reduce channels ({x.shape[-1]} -> {self.features})"
            )
        spatial = (slice(None, None, self.strides),) * (x.ndim - 2)
        x = x[(slice(None),) + spatial + (slice(None),)]
        pad = [(0, 0)] * (x.ndim - 1) + [(0, self.features - x.shape[-1])]
        return jnp.pad(x, pad)


class BasicBlock(nn.Module):
    """Two 3x3 convs; output width `features`."""

    features: int
    strides: int = 1
    activation: str = 'relu'
    shortcut: str = 'projection'
    zero_init_residual: bool = False
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion = 1  # output width / features

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        y = blocks.ConvNormAct(
            self.features, 3, strides=self.strides, activation=self.activation, name='conv1', **conv
        )(x, train=train)
        y = blocks.ConvNormAct(
            self.features,
            3,
            activation='identity',
            zero_init_norm=self.zero_init_residual,
            name='conv2',
            **conv,
        )(y, train=train)
        residual = Shortcut(self.features, self.strides, self.shortcut, name='shortcut', **conv)(
            x, train=train
        )
        return blocks.activation(self.activation)(y + residual)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, v1.5), 1x1 expand; output width 4·`features`."""

    features: int
    strides: int = 1
    activation: str = 'relu'
    shortcut: str = 'projection'
    zero_init_residual: bool = False
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        out_features = self.features * self.expansion
        y = blocks.ConvNormAct(self.features, 1, activation=self.activation, name='conv1', **conv)(
            x, train=train
        )
        y = blocks.ConvNormAct(
            self.features, 3, strides=self.strides, activation=self.activation, name='conv2', **conv
        )(y, train=train)
        y = blocks.ConvNormAct(
            out_features,
            1,
            activation='identity',
            zero_init_norm=self.zero_init_residual,
            name='conv3',
            **conv,
        )(y, train=train)
        residual = Shortcut(out_features, self.strides, self.shortcut, name='shortcut', **conv)(
            x, train=train
        )
        return blocks.activation(self.activation)(y + residual)


_BLOCK_CLASSES = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class ResNet(nn.Module):
    """ResNet classifier.

    Stage i has `stage_sizes[i]` blocks of base width `width * 2**i`; every stage
    after the first halves the resolution. Stems: 'imagenet' = 7x7/2 conv +
    3x3/2 max pool (224 px inputs); 'cifar' = 3x3/1 conv, no pooling (28-32 px).
    `zero_init_residual` starts the last BatchNorm scale of each block at zero.
    """

    num_classes: int = 1000
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    block: str = 'basic'
    width: int = 64
    stem: str = 'imagenet'
    shortcut: str = 'projection'
    zero_init_residual: bool = False
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('block', self.block, BLOCKS)
        blocks.check_choice('stem', self.stem, STEMS)
        blocks.check_choice('shortcut', self.shortcut, SHORTCUTS)
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        if not self.stage_sizes or any(n < 1 for n in self.stage_sizes) or self.width < 1:
            raise ValueError(
                f'stage_sizes must be non-empty positive ints and width positive, '
                f'got stage_sizes={self.stage_sizes!r}, width={self.width}'
            )
        super().__post_init__()

    def block_class(self, stage: int) -> Any:
        """The residual block of `stage` (a hook: deformable ResNets swap it per stage)."""
        del stage
        return _BLOCK_CLASSES[self.block]

    def check_input(self, x: jax.Array) -> None:
        """Input checks before the stem (a hook for variants with stricter needs)."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        self.check_input(x)
        conv = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        rank = x.ndim - 2
        x = x.astype(self.dtype)
        if self.stem == 'imagenet':
            x = blocks.ConvNormAct(
                self.width, 7, strides=2, activation=self.activation, name='stem', **conv
            )(x, train=train)
            x = nn.max_pool(x, (3,) * rank, strides=(2,) * rank, padding=[(1, 1)] * rank)
        else:
            x = blocks.ConvNormAct(self.width, 3, activation=self.activation, name='stem', **conv)(
                x, train=train
            )
        for stage, num_blocks in enumerate(self.stage_sizes):
            block_cls = self.block_class(stage)
            for i in range(num_blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                x = block_cls(
                    self.width * 2**stage,
                    strides=strides,
                    activation=self.activation,
                    shortcut=self.shortcut,
                    zero_init_residual=self.zero_init_residual,
                    name=f'stage{stage}_block{i}',
                    **conv,
                )(x, train=train)
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


_IMAGENET_VARIANTS = {
    'resnet18': ((2, 2, 2, 2), 'basic'),
    'resnet34': ((3, 4, 6, 3), 'basic'),
    'resnet50': ((3, 4, 6, 3), 'bottleneck'),
    'resnet101': ((3, 4, 23, 3), 'bottleneck'),
    'resnet152': ((3, 8, 36, 3), 'bottleneck'),
}
for _name, (_stages, _block) in _IMAGENET_VARIANTS.items():
    register(_name, ResNet, family='resnet', stage_sizes=_stages, block=_block)

# He et al. §4.2: depth = 6n + 2.
for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    register(
        f'resnet{_depth}',
        ResNet,
        family='resnet',
        num_classes=10,
        stage_sizes=(_n, _n, _n),
        block='basic',
        width=16,
        stem='cifar',
    )
