"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), torchvision's single-tower layout.

Five convolutions of 64-192-384-256-256 filters (11x11/4, 5x5, then 3x3) with
ReLU, 3x3/2 max pools after conv1, conv2 and conv5, an adaptive average pool
to 6x6, and a classifier of dropout - FC 4096 - ReLU - dropout - FC 4096 -
ReLU - FC classes. At 224x224x3 with 1000 classes it has 61,100,840
parameters, as torchvision's `alexnet`. Convs and FC layers have biases; there
is no batch norm (the network predates it).

`lrn=True` adds the paper's local response normalisation (§3.3: n=5, k=2,
α=1e-4, β=0.75) after the ReLUs of conv1 and conv2, before their pools;
torchvision leaves it out, and it has no parameters.

Small images: `stem='small'` replaces the 11x11/4 conv by a 3x3/1 one and,
unless `pooled_size` says otherwise, pools the last feature map globally
(1x1) instead of to 6x6, so a 28x28 image keeps a 2x2 map before the head and
the first FC layer sees 4·width features instead of 6·6·4·width. `width`
scales every conv (64 gives torchvision's 64-192-384-256-256) and `fc_width`
the two hidden FC layers (e.g. `width=32, fc_width=512` for Fashion-MNIST).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any

STEMS = ('imagenet', 'small')
# Conv widths relative to `width` (64 -> 64, 192, 384, 256, 256).
_WIDTH_FACTORS = (1, 3, 6, 4, 4)
# The 6x6 grid torchvision pools to before the classifier, per stem (None: `pooled_size` default).
_POOLED_SIZE = {'imagenet': 6, 'small': 1}


def local_response_norm(
    x: jax.Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75
) -> jax.Array:
    """AlexNet's across-channel normalisation: x / (k + α Σ x²)^β over `size` neighbouring channels.

    The paper's form (α is not divided by `size`, unlike PyTorch's LocalResponseNorm, so
    PyTorch needs alpha=5e-4 for the same result). Computed in float32: the sum of squares
    overflows bfloat16's precision long before its range.
    """
    x32 = x.astype(jnp.float32)
    squares = jnp.pad(jnp.square(x32), [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
    channels = x.shape[-1]
    window_sum = sum(squares[..., i : i + channels] for i in range(size))
    return (x32 / (k + alpha * window_sum) ** beta).astype(x.dtype)


class AlexNet(nn.Module):
    """AlexNet classifier; see the module docstring for the layout and the small-input stem.

    `pooled_size=None` takes the stem's default (6 for 'imagenet', 1 for 'small').
    """

    num_classes: int = 1000
    width: int = 64
    fc_width: int = 4096
    stem: str = 'imagenet'
    pooled_size: int | None = None
    lrn: bool = False
    dropout_rate: float = 0.5
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('stem', self.stem, STEMS)
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if (
            self.width < 1
            or self.fc_width < 1
            or (self.pooled_size is not None and self.pooled_size < 1)
        ):
            raise ValueError(
                f'width, fc_width and pooled_size must be positive, got width={self.width}, '
                f'fc_width={self.fc_width}, pooled_size={self.pooled_size}'
            )
        super().__post_init__()

    def _output_size(self, size: int) -> int:
        """Side of the last feature map (after the third pool) for an input of side `size`."""
        if self.stem == 'imagenet':
            size = blocks.window_output_size(size, 11, 4, 2)
        for _ in range(3):  # the convs between the pools keep the size
            size = blocks.window_output_size(size, 3, 2)
        return size

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts (63 for 'imagenet', 15 for 'small')."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks.check_images(self, x)
        conv = dict(
            use_norm=False,
            activation=self.activation,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        widths = [self.width * f for f in _WIDTH_FACTORS]
        pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2), padding='VALID')  # noqa: E731
        x = x.astype(self.dtype)

        if self.stem == 'imagenet':
            # torchvision pads the 11x11/4 conv by 2, not by k // 2.
            x = blocks.ConvNormAct(
                widths[0], 11, strides=4, padding=[(2, 2), (2, 2)], name='conv1', **conv
            )(x, train=train)
        else:
            x = blocks.ConvNormAct(widths[0], 3, name='conv1', **conv)(x, train=train)
        if self.lrn:
            x = local_response_norm(x)
        x = pool(x)
        x = blocks.ConvNormAct(widths[1], 5, name='conv2', **conv)(x, train=train)
        if self.lrn:
            x = local_response_norm(x)
        x = pool(x)
        for i in (2, 3, 4):
            x = blocks.ConvNormAct(widths[i], 3, name=f'conv{i + 1}', **conv)(x, train=train)
        x = pool(x)

        pooled = _POOLED_SIZE[self.stem] if self.pooled_size is None else self.pooled_size
        x = blocks.adaptive_avg_pool(x, pooled)
        x = x.reshape(x.shape[0], -1)
        dense = dict(
            kernel_init=blocks.initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        for i in (1, 2):
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            x = Dense(self.fc_width, name=f'fc{i}', **dense)(x)
            x = blocks.activation(self.activation)(x)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


register('alexnet', AlexNet, family='alexnet')
