"""Inception-ResNet-v2 (Szegedy, Ioffe, Vanhoucke & Alemi 2016), timm's layout.

The Inception v3 stem (`nets.layers.inception_blocks.InceptionV3Stem`), then Mixed_5b
(an Inception-A-like block to 320 channels) and three stages of residual
Inception blocks separated by grid reductions: 10 x Block35 on the 35x35 grid,
Mixed_6a (-> 17x17, 1088 channels), 20 x Block17, Mixed_7a (-> 8x8, 2080
channels), 10 x Block8, then a 1x1 conv to 1536, global average pooling,
dropout and the classifier.

Each residual block concatenates its branches, projects them back to the input
width with a 1x1 conv (bias, no BatchNorm, no activation) and adds them to
the input scaled by a small constant, the paper's §3.3 remedy for instability
with wide residual Inception stacks ("scaling factors between 0.1 and 0.3"):
`residual_scales` = (0.17, 0.10, 0.20) for the three stages, as timm. The
last Block8 has scale 1.0 and no ReLU after the sum (timm's `block8`), so
`num_blocks[2]` counts it (timm: 9 + 1). Other convs are conv (no bias) -
BatchNorm - ReLU. With these choices the model has 55,843,464 parameters at
299x299x3 with 1000 classes, timm's `inception_resnet_v2` exactly. There is no
auxiliary head (timm has none) and dropout is the paper's 0.2 (keep 0.8).

Small images: `stem='small'` is the Inception v3 small stem (stride-1 padded
convs, one max pool), so a 28x28 image runs the three stages at 13x13, 6x6
and 2x2. `width_multiplier` scales every conv (the residual projections
follow the input width), `num_blocks` the depth of each stage.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.inception_blocks import (
    InceptionBlock,
    InceptionV3Stem,
    check_inception_fields,
    inception_v3_stem_output_size,
    max_pool,
)
from nets.registry import register

Dtype = Any

# Residual block kinds of the three stages (35x35, 17x17, 8x8 grids at 299 px).
BLOCK_KINDS = ('block35', 'block17', 'block8')


class Mixed5b(InceptionBlock):
    """1x1 (96) | 1x1-5x5 (64) | 1x1-3x3-3x3 (96) | avg pool-1x1 (64) -> 320 channels."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b0 = self.conv(96, 1, 'branch0')(x, train=train)
        b1 = self.conv(48, 1, 'branch1_0')(x, train=train)
        b1 = self.conv(64, 5, 'branch1_1')(b1, train=train)
        b2 = self.conv(64, 1, 'branch2_0')(x, train=train)
        b2 = self.conv(96, 3, 'branch2_1')(b2, train=train)
        b2 = self.conv(96, 3, 'branch2_2')(b2, train=train)
        # timm pools without counting the zero padding here (unlike Inception v3).
        pooled = nn.avg_pool(
            x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False
        )
        b3 = self.conv(64, 1, 'branch3')(pooled, train=train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ResidualInceptionBlock(InceptionBlock):
    """Branches -> concat -> 1x1 projection to the input width -> x + scale · projection [-> ReLU].

    `kind` picks the branches: 'block35' (35x35 grid: 1x1 | 1x1-3x3 | 1x1-3x3-3x3),
    'block17' (17x17: 1x1 | 1x1-1x7-7x1), 'block8' (8x8: 1x1 | 1x1-1x3-3x1).
    """

    kind: str = 'block35'
    scale: float = 1.0
    final_activation: bool = True

    def __post_init__(self) -> None:
        blocks.check_choice('kind', self.kind, BLOCK_KINDS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.kind == 'block35':
            b0 = self.conv(32, 1, 'branch0')(x, train=train)
            b1 = self.conv(32, 1, 'branch1_0')(x, train=train)
            b1 = self.conv(32, 3, 'branch1_1')(b1, train=train)
            b2 = self.conv(32, 1, 'branch2_0')(x, train=train)
            b2 = self.conv(48, 3, 'branch2_1')(b2, train=train)
            b2 = self.conv(64, 3, 'branch2_2')(b2, train=train)
            branches = [b0, b1, b2]
        else:
            # Block17 factorises a 7x7, Block8 a 3x3, into 1xk then kx1.
            (c1, c2, c3), k = (
                ((128, 160, 192), 7) if self.kind == 'block17' else ((192, 224, 256), 3)
            )
            b0 = self.conv(192, 1, 'branch0')(x, train=train)
            b1 = self.conv(c1, 1, 'branch1_0')(x, train=train)
            b1 = self.conv(c2, (1, k), 'branch1_1')(b1, train=train)
            b1 = self.conv(c3, (k, 1), 'branch1_2')(b1, train=train)
            branches = [b0, b1]
        # The projection feeds a sum, not a norm, so it keeps its bias (as timm's).
        up = blocks.ConvNormAct(
            x.shape[-1],
            1,
            use_norm=False,
            activation='identity',
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='project',
        )(jnp.concatenate(branches, axis=-1), train=train)
        x = x + jnp.asarray(self.scale, x.dtype) * up
        return blocks.activation(self.activation)(x) if self.final_activation else x


class Mixed6a(InceptionBlock):
    """35 -> 17 reduction: 3x3/2 (384) | 1x1-3x3-3x3/2 (256, 256, 384) | max pool -> 1088
    channels."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b0 = self.conv(384, 3, 'branch0', strides=2, padding='VALID')(x, train=train)
        b1 = self.conv(256, 1, 'branch1_0')(x, train=train)
        b1 = self.conv(256, 3, 'branch1_1')(b1, train=train)
        b1 = self.conv(384, 3, 'branch1_2', strides=2, padding='VALID')(b1, train=train)
        return jnp.concatenate([b0, b1, max_pool(x, 3, 2)], axis=-1)


class Mixed7a(InceptionBlock):
    """17 -> 8 reduction: 1x1-3x3/2 (384) | 1x1-3x3/2 (288) | 1x1-3x3-3x3/2 (288, 320) |
    max pool."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b0 = self.conv(384, 3, 'branch0_1', strides=2, padding='VALID')(
            self.conv(256, 1, 'branch0_0')(x, train=train), train=train
        )
        b1 = self.conv(288, 3, 'branch1_1', strides=2, padding='VALID')(
            self.conv(256, 1, 'branch1_0')(x, train=train), train=train
        )
        b2 = self.conv(256, 1, 'branch2_0')(x, train=train)
        b2 = self.conv(288, 3, 'branch2_1')(b2, train=train)
        b2 = self.conv(320, 3, 'branch2_2', strides=2, padding='VALID')(b2, train=train)
        return jnp.concatenate([b0, b1, b2, max_pool(x, 3, 2)], axis=-1)


class InceptionResNetV2(nn.Module):
    """Inception-ResNet-v2 classifier; see the module docstring for layout and small inputs."""

    num_classes: int = 1000
    num_blocks: tuple[int, int, int] = (10, 20, 10)
    residual_scales: tuple[float, float, float] = (0.17, 0.10, 0.20)
    stem: str = 'imagenet'
    width_multiplier: float = 1.0
    dropout_rate: float = 0.2
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_inception_fields(self)
        if len(self.num_blocks) != 3 or any(n < 1 for n in self.num_blocks):
            raise ValueError(
                f'num_blocks must be 3 positive ints (Block35, Block17, Block8 counts), '
                f'got {self.num_blocks!r}'
            )
        if len(self.residual_scales) != 3 or any(not s > 0 for s in self.residual_scales):
            raise ValueError(
                f'residual_scales must be 3 positive numbers, got {self.residual_scales!r}'
            )
        super().__post_init__()

    def _output_size(self, size: int) -> int:
        size = inception_v3_stem_output_size(size, self.stem)
        for _ in range(2):  # Mixed_6a, Mixed_7a
            size = blocks.window_output_size(size, 3, 2)
        return size

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts (75 for 'imagenet', 15 for 'small')."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks.check_images(self, x)
        fields = dict(
            width_multiplier=self.width_multiplier,
            activation=self.activation,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = InceptionV3Stem(stem=self.stem, name='stem', **fields)(
            x.astype(self.dtype), train=train
        )
        x = Mixed5b(name='mixed_5b', **fields)(x, train=train)
        for kind, num_blocks, scale in zip(BLOCK_KINDS, self.num_blocks, self.residual_scales):
            for i in range(num_blocks):
                last = kind == 'block8' and i == num_blocks - 1
                x = ResidualInceptionBlock(
                    kind=kind,
                    scale=1.0 if last else scale,
                    final_activation=not last,
                    name=f'{kind}_{i}',
                    **fields,
                )(x, train=train)
            if kind == 'block35':
                x = Mixed6a(name='mixed_6a', **fields)(x, train=train)
            elif kind == 'block17':
                x = Mixed7a(name='mixed_7a', **fields)(x, train=train)
        x = blocks.ConvNormAct(
            blocks.scale_width(1536, self.width_multiplier),
            1,
            activation=self.activation,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='conv7b',
        )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


register('inception_resnet_v2', InceptionResNetV2, family='inception_resnet')
