"""Multi-layer perceptron classifier.

Flattens whatever it is given (images, 1-D signals, vectors) and applies
Dense [-BatchNorm] -activation -dropout per hidden layer, then a linear head.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any


class MLP(nn.Module):
    """Fully connected classifier.

    Hidden widths are `hidden_sizes` when non-empty, otherwise `depth` layers of
    `width` units (`depth=0` gives a linear/logistic-regression model).
    `kernel_init=None` picks the initialiser matched to the activation
    (He for ReLU-like, LeCun for SELU, Glorot otherwise; see
    `blocks.default_initializer_name`). With `batch_norm` the hidden Dense
    layers drop their bias and BatchNorm sits before the activation.
    """

    num_classes: int = 10
    hidden_sizes: tuple[int, ...] = ()
    depth: int = 2
    width: int = 256
    activation: str = 'relu'
    dropout_rate: float = 0.0
    batch_norm: bool = False
    kernel_init: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        if self.kernel_init is not None:
            blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if self.depth < 0 or self.width < 1 or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(
                f'Layer sizes must be positive: hidden_sizes={self.hidden_sizes}, '
                f'depth={self.depth}, width={self.width}'
            )
        super().__post_init__()

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The hidden widths actually used."""
        return tuple(self.hidden_sizes) if self.hidden_sizes else (self.width,) * self.depth

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init_name = self.kernel_init or blocks.default_initializer_name(self.activation)
        act = blocks.activation(self.activation)
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, size in enumerate(self.layer_sizes):
            x = Dense(
                size,
                use_bias=not self.batch_norm,
                kernel_init=blocks.initializer(init_name),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f'dense{i}',
            )(x)
            if self.batch_norm:
                x = blocks.batch_norm(
                    train=train, dtype=self.dtype, param_dtype=self.param_dtype, name=f'norm{i}'
                )(x)
            x = act(x)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


register('mlp', MLP, family='mlp', depth=2, width=256)
