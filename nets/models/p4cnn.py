"""P4-CNN: a ConvNet whose logits do not change when the image turns by a multiple of 90°
(Cohen & Welling 2016, "Group Equivariant Convolutional Networks").

The layout of the course's `cnn` (stages of conv - BatchNorm - activation, 2x2 max pooling
between stages, a global-average-pooling head) built from the p4 layers of
`nets.layers.group_conv`: the first convolution lifts the image to p4 feature maps
(N, H, W, 4, C), every other one is a p4 group convolution, and before the head the
orientations are pooled away (`rotation_pool`, max by default) and the positions averaged.
Every layer up to the pools is exactly equivariant to quarter turns, the pools make the
features exactly invariant, so the logits of a turned image equal the logits of the image
(to float rounding). BatchNorm keeps one mean and variance per channel over the positions and
the orientations alike (a statistic per orientation would break the equivariance).

Exactness holds where a quarter turn permutes the pixels of every map: square images, odd
kernels, stride-1 'SAME' convolutions, and maps of even size wherever they are pooled (there is
no pooling after the last stage): 28x28 images with three stages pool 28 -> 14 -> 7. Other
sizes raise a ValueError naming the sizes. Turns by other angles are not covered: the model
is as rotation-sensitive between the quarter turns as any CNN.

Parameters: a p4 -> p4 filter holds 4x the weights of a plain filter with the same channels
(one slice per input orientation), so the registered 'p4cnn' halves the `cnn`'s widths,
(16, 32, 64) for (32, 64, 128): about the parameters of the plain net (~0.29M on 28x28x1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.group_conv import ROTATION_POOLS, GroupConv, LiftingConv, rotation_pool
from nets.registry import register

Dtype = Any


class P4ConvNormAct(nn.Module):
    """A lifting (`lift=True`) or p4 group convolution, BatchNorm over positions and
    orientations, and the activation."""

    features: int
    kernel_size: int = 3
    lift: bool = False
    use_norm: bool = True
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = LiftingConv if self.lift else GroupConv
        x = conv(
            self.features,
            self.kernel_size,
            use_bias=not self.use_norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='conv',
        )(x)
        if self.use_norm:
            # Feature axis last: the statistics pool (N, H, W) and the 4 orientations.
            x = blocks.batch_norm(
                train=train, dtype=self.dtype, param_dtype=self.param_dtype, name='norm'
            )(x)
        return blocks.activation(self.activation)(x)


def _pool_spatially(x: jax.Array) -> jax.Array:
    """2x2/2 max pooling of every orientation's map of a (N, H, W, 4, C) p4 map."""
    batch, height, width, orientations, channels = x.shape
    pooled = nn.max_pool(
        x.reshape(batch, height, width, orientations * channels), (2, 2), strides=(2, 2)
    )
    return pooled.reshape(*pooled.shape[:3], orientations, channels)


class P4CNN(nn.Module):
    """Rotation-invariant (by quarter turns) classifier on square (N, H, W, C) images; see the
    module docstring. `channels` are the stages' widths per orientation."""

    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int = 2
    kernel_size: int = 3
    batch_norm: bool = True
    activation: str = 'relu'
    rotation_pool: str = 'max'
    dropout_rate: float = 0.0
    kernel_init: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        blocks.check_choice('rotation_pool', self.rotation_pool, ROTATION_POOLS)
        if self.kernel_init is not None:
            blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(
                f'channels must be a non-empty tuple of positive ints, got {self.channels!r}'
            )
        if self.convs_per_stage < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f'convs_per_stage must be positive and kernel_size odd, got '
                f'convs_per_stage={self.convs_per_stage}, kernel_size={self.kernel_size}'
            )
        super().__post_init__()

    def _check_image(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4 or shape[1] != shape[2]:
            raise ValueError(f'P4CNN expects square (N, H, W, C) images, got shape {shape}')
        size = shape[1]
        for stage in range(len(self.channels) - 1):
            if size % 2:
                raise ValueError(
                    f'P4CNN pools 2x2 after each of its first {len(self.channels) - 1} stages and '
                    f'needs an even map there (a quarter turn must map pooling windows onto '
                    f'pooling windows); image {shape[1]}x{shape[2]} gives {size}x{size} after '
                    f'stage {stage}'
                )
            size //= 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        self._check_image(x.shape)
        init_name = self.kernel_init or blocks.default_initializer_name(self.activation)
        x = x.astype(self.dtype)
        for stage, features in enumerate(self.channels):
            if stage > 0:
                x = _pool_spatially(x)
            for i in range(self.convs_per_stage):
                x = P4ConvNormAct(
                    features,
                    self.kernel_size,
                    lift=stage == 0 and i == 0,
                    use_norm=self.batch_norm,
                    activation=self.activation,
                    kernel_init=init_name,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f'stage{stage}_conv{i}',
                )(x, train=train)
        x = jnp.mean(rotation_pool(x, self.rotation_pool), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


register('p4cnn', P4CNN, family='p4cnn')
