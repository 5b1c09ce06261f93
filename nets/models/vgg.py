"""VGG networks (Simonyan & Zisserman 2014), torchvision layout.

Five stages of 3x3 stride-1 pad-1 convolutions (64, 128, 256, 512, 512
filters), each followed by a 2x2/2 max pool; an adaptive average pool to 7x7;
then FC 4096 - ReLU - dropout - FC 4096 - ReLU - dropout - FC classes.
Configurations A, B, D and E of the paper (vgg11, vgg13, vgg16, vgg19) differ
only in the convs per stage. Every conv has a bias, also in the `_bn`
variants, where BatchNorm (scale and bias) follows each conv, as in
torchvision: vgg11/13/16/19 have 132,863,336 / 133,047,848 / 138,357,544 /
143,667,240 parameters at 224x224x3 with 1000 classes, vgg16_bn 138,365,992
and vgg19_bn 143,678,248.

Small images: `stem='small'` leaves out the first stage's pool (four halvings,
so 28x28 ends at 1x1 and anything from 16x16 fits) and, unless `pooled_size`
says otherwise, pools the last map globally instead of to 7x7, so the first FC
layer sees 8·width features (512 at full width) instead of 7·7·512. Set
`fc_width` (e.g. 512, as the CIFAR VGGs do) to shrink the 4096-wide FC layers
and `width` (64 = the paper) to scale every conv stage.
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
# Stage widths relative to `width` (64 -> 64, 128, 256, 512, 512).
_WIDTH_FACTORS = (1, 2, 4, 8, 8)
_POOLED_SIZE = {'imagenet': 7, 'small': 1}


class VGG(nn.Module):
    """VGG classifier; see the module docstring for the layout and the small-input stem.

    Stage i has `stage_convs[i]` convs of width `width * (1, 2, 4, 8, 8)[i]`.
    `pooled_size=None` takes the stem's default (7 for 'imagenet', 1 for 'small').
    """

    num_classes: int = 1000
    stage_convs: tuple[int, ...] = (1, 1, 2, 2, 2)
    batch_norm: bool = False
    width: int = 64
    fc_width: int = 4096
    stem: str = 'imagenet'
    pooled_size: int | None = None
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
        if len(self.stage_convs) != len(_WIDTH_FACTORS) or any(n < 1 for n in self.stage_convs):
            raise ValueError(
                f'stage_convs must be {len(_WIDTH_FACTORS)} positive ints, got {self.stage_convs!r}'
            )
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

    def _pools(self) -> list[bool]:
        """Whether each stage ends in a max pool."""
        return [self.stem == 'imagenet' or stage > 0 for stage in range(len(self.stage_convs))]

    def _output_size(self, size: int) -> int:
        for pooled in self._pools():
            if pooled:
                size = blocks.window_output_size(size, 2, 2)
        return size

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts (32 for 'imagenet', 16 for 'small')."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks.check_images(self, x)
        # torchvision keeps the conv bias even when BatchNorm follows (the anchors count it).
        conv = dict(
            use_norm=self.batch_norm,
            use_bias=True,
            activation=self.activation,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = x.astype(self.dtype)
        for stage, (num_convs, pooled) in enumerate(zip(self.stage_convs, self._pools())):
            for i in range(num_convs):
                x = blocks.ConvNormAct(
                    self.width * _WIDTH_FACTORS[stage], 3, name=f'stage{stage}_conv{i}', **conv
                )(x, train=train)
            if pooled:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')

        pooled_size = _POOLED_SIZE[self.stem] if self.pooled_size is None else self.pooled_size
        x = blocks.adaptive_avg_pool(x, pooled_size)
        x = x.reshape(x.shape[0], -1)
        dense = dict(
            kernel_init=blocks.initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        for i in (1, 2):
            x = Dense(self.fc_width, name=f'fc{i}', **dense)(x)
            x = blocks.activation(self.activation)(x)
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
        return x.astype(jnp.float32)


# Configurations A, B, D, E of the paper (Table 1): convs per stage.
_VARIANTS = {
    'vgg11': (1, 1, 2, 2, 2),
    'vgg13': (2, 2, 2, 2, 2),
    'vgg16': (2, 2, 3, 3, 3),
    'vgg19': (2, 2, 4, 4, 4),
}
for _name, _convs in _VARIANTS.items():
    register(_name, VGG, family='vgg', stage_convs=_convs)
    register(f'{_name}_bn', VGG, family='vgg', stage_convs=_convs, batch_norm=True)
