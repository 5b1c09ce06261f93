"""A plain ConvNet (VGG-style stages) for small images and 1-D signals.

Each stage is `convs_per_stage` x (conv - BatchNorm - activation) followed by a
2x pooling; the head is global average pooling (`head='gap'`: any input size
works and the parameter count does not depend on it) or a flatten of the last
feature map (`head='flatten'`: the classic LeNet/Keras layout, more parameters
and position-aware features, which small images reward), then dropout, an
optional hidden Dense layer, and the classifier. The spatial rank comes from the
input: (N, L, C) signals use 1-D convs, (N, H, W, C) images 2-D convs.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any

POOLS = ('max', 'avg')
HEADS = ('gap', 'flatten')


class CNN(nn.Module):
    """Plain convolutional classifier; see the module docstring for the layout.

    `kernel_init=None` picks the initialiser matched to the activation.
    The default (32, 64, 128) stages give ~0.29M parameters on 1-channel inputs.
    """

    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    kernel_size: int = 3
    pool: str = 'max'
    batch_norm: bool = True
    activation: str = 'relu'
    dropout_rate: float = 0.0
    head: str = 'gap'
    head_hidden: int = 0  # 0: no hidden layer in the head
    kernel_init: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('pool', self.pool, POOLS)
        blocks.check_choice('head', self.head, HEADS)
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        if self.kernel_init is not None:
            blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(
                f'channels must be a non-empty tuple of positive ints, got {self.channels!r}'
            )
        if self.convs_per_stage < 1 or self.kernel_size < 1 or self.head_hidden < 0:
            raise ValueError(
                f'Invalid sizes: convs_per_stage={self.convs_per_stage}, '
                f'kernel_size={self.kernel_size}, head_hidden={self.head_hidden}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim < 3:
            raise ValueError(f'CNN expects (N, *spatial, C) inputs, got shape {x.shape}')
        spatial_axes = tuple(range(1, x.ndim - 1))
        min_size = 2 ** len(self.channels)
        if any(x.shape[a] < min_size for a in spatial_axes):
            raise ValueError(
                f'Input spatial size {x.shape[1:-1]} is too small for {len(self.channels)} '
                f'pooling stages (need at least {min_size} per dim)'
            )
        init_name = self.kernel_init or blocks.default_initializer_name(self.activation)
        window = (2,) * len(spatial_axes)
        pool = nn.max_pool if self.pool == 'max' else nn.avg_pool
        x = x.astype(self.dtype)
        for stage, features in enumerate(self.channels):
            for i in range(self.convs_per_stage):
                x = blocks.ConvNormAct(
                    features,
                    self.kernel_size,
                    use_norm=self.batch_norm,
                    activation=self.activation,
                    kernel_init=init_name,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f'stage{stage}_conv{i}',
                )(x, train=train)
            x = pool(x, window, strides=window, padding='VALID')
        if self.head == 'gap':
            x = jnp.mean(x, axis=spatial_axes)
        else:
            x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        if self.head_hidden:
            x = Dense(
                self.head_hidden,
                kernel_init=blocks.initializer(init_name),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name='head_hidden',
            )(x)
            x = blocks.activation(self.activation)(x)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


register('cnn', CNN, family='cnn')
