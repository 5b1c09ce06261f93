"""Inception networks: GoogLeNet (v1), BN-Inception (v2) and Inception v3.

All convolutions are conv (no bias) - BatchNorm - ReLU, torchvision's
`BasicConv2d`. The blocks' base class, the two stems and the auxiliary-logit
protocol are in nets/layers/inception_blocks.py (Inception-ResNet-v2 uses some).

`googlenet` (Szegedy et al. 2014) is torchvision's layout: 6,624,904 parameters
at 224x224x3 with 1000 classes without the auxiliary heads, 13,004,888 with
them. torchvision's third branch (the paper's "5x5") uses a 3x3 conv; that is
the default here (`wide_kernel_size=3`) so that the count matches, and
`wide_kernel_size=5` gives the paper's module. Max pools use ceil mode, as in
Caffe and torchvision (224 -> 112 -> 56 -> 28 -> 14 -> 7).

`inception_v2` is BN-Inception (Ioffe & Szegedy 2015, Figure 5): GoogLeNet
with BatchNorm after every conv and each 5x5 conv replaced by two 3x3 convs
(the "double 3x3" branch), 3c and 4e halving the grid with stride-2 branches
beside a max pool, and average pooling in most pool branches. Its stem is a
plain 7x7/2 conv (the paper's is depthwise-separable), and, as the paper's
§4.2.1 recommends with BatchNorm, there is no dropout and no auxiliary head
by default. 11,285,224 parameters at 224x224x3, 1000 classes.

`inception_v3` (Szegedy et al. 2015, "Rethinking") is torchvision's layout
for 299x299 inputs: a 35x35 grid of InceptionA blocks, a 17x17 grid of
factorised 1x7 + 7x1 InceptionC blocks, an 8x8 grid of InceptionE blocks with
expanded 1x3 / 3x1 outputs, and grid-size reductions (InceptionB, D) that
pool and convolve with stride 2 side by side. 27,161,264 parameters with the
auxiliary head at 299x299x3 and 1000 classes (23,834,568 without).

Auxiliary classifiers (`aux_logits=True`, GoogLeNet after 4a and 4d, v3
after 6e): with `train=True` each head's float32 logits of shape
(N, num_classes) are sown into the 'aux_logits' collection ('aux1', 'aux2'
for GoogLeNet, 'aux1' for v3), so `model.apply(..., train=True,
mutable=['batch_stats', 'aux_logits'])` returns them, each as a one-element
tuple (Flax's `sow`); the heads' parameters live under 'aux_head1'/'aux_head2'
(GoogLeNet) and 'aux_head' (v3). The trainer adds `model.aux_loss_weight` × the
cross-entropy of each: 0.3 for GoogLeNet (the paper), 0.4 for v3 (the weight
used with torchvision's inception_v3 in PyTorch's recipes, `loss + 0.4 * aux_loss`;
the v3 paper gives none). At eval the heads are not run and
nothing is sown; `init` runs them (without sowing) so that their parameters
exist whenever `aux_logits=True`.

Small images: `stem='small'` makes the first conv 3x3 stride 1 (and, in v3,
pads the stem's convs) and drops the stem's first max pool, keeping the
second; a 28x28 image reaches the classifier at 4x4 (GoogLeNet, v2) or 2x2
(v3). The v3 auxiliary head then pools adaptively to the 5x5 its 5x5 conv
needs, instead of torchvision's 5x5/3 average pool (which needs the 17x17
grid of a ~299 px image). `width_multiplier` scales every conv and head
width (rounded, at least 1).

Ported torchvision weights (`python -m nets.convert`): `bn_epsilon` is the
BatchNorm epsilon of every conv (default the package-wide 1e-5; torchvision's
BasicConv2d uses 1e-3), and `transform_input=True` (GoogLeNet, v3) applies
torchvision's `transform_input` first: ImageNet-normalised images re-expressed
in the [-1, 1] scaling of the weights torchvision ported from TensorFlow.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.inception_blocks import (
    GoogLeNetStem,
    InceptionBlock,
    InceptionV3Stem,
    block_fields,
    check_inception_fields,
    googlenet_stem_output_size,
    inception_v3_stem_output_size,
    max_pool,
    run_aux_head,
    torchvision_transform_input,
)
from nets.registry import register

Dtype = Any

POOLS = ('avg', 'max')


# ----------------------------------------------------------------------- GoogLeNet and BN-Inception


class InceptionV1Block(InceptionBlock):
    """1x1 | 1x1-3x3 | 1x1-(3x3 or 5x5) | 3x3 max pool-1x1, concatenated.

    `features` = (1x1, 3x3 reduce, 3x3, wide reduce, wide, pool projection).
    """

    features: tuple[int, ...] = ()
    wide_kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c1, c3r, c3, cwr, cw, cp = self.features
        b1 = self.conv(c1, 1, 'branch1')(x, train=train)
        b2 = self.conv(c3r, 1, 'branch2_reduce')(x, train=train)
        b2 = self.conv(c3, 3, 'branch2')(b2, train=train)
        b3 = self.conv(cwr, 1, 'branch3_reduce')(x, train=train)
        b3 = self.conv(cw, self.wide_kernel_size, 'branch3')(b3, train=train)
        b4 = self.conv(cp, 1, 'branch4_proj')(max_pool(x, 3, 1, padding=1), train=train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionV2Block(InceptionBlock):
    """1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool[-1x1], concatenated (BN-Inception).

    `features` = (1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool projection);
    a 0 leaves out the 1x1 branch or the pool projection (the pool passes through).
    With `strides=2` the last conv of each 3x3 branch and the pool (3x3, pad 1) halve the grid.
    """

    features: tuple[int, ...] = ()
    pool: str = 'avg'
    strides: int = 1

    def __post_init__(self) -> None:
        blocks.check_choice('pool', self.pool, POOLS)
        blocks.check_choice('strides', self.strides, (1, 2))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c1, c3r, c3, cdr, cd, cp = self.features
        s = self.strides
        branches = []
        if c1:
            branches.append(self.conv(c1, 1, 'branch1')(x, train=train))
        b2 = self.conv(c3r, 1, 'branch2_reduce')(x, train=train)
        branches.append(self.conv(c3, 3, 'branch2', strides=s)(b2, train=train))
        b3 = self.conv(cdr, 1, 'branch3_reduce')(x, train=train)
        b3 = self.conv(cd, 3, 'branch3a')(b3, train=train)
        branches.append(self.conv(cd, 3, 'branch3b', strides=s)(b3, train=train))
        if self.pool == 'max':
            pooled = max_pool(x, 3, s, padding=1)
        else:
            pooled = nn.avg_pool(x, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))
        branches.append(self.conv(cp, 1, 'branch4_proj')(pooled, train=train) if cp else pooled)
        return jnp.concatenate(branches, axis=-1)


class GoogLeNetAuxHead(InceptionBlock):
    """Adaptive 4x4 average pool - 1x1 conv 128 - FC 1024 - ReLU - dropout 0.7 - FC classes."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.conv(128, 1, 'conv')(blocks.adaptive_avg_pool(x, 4), train=train)
        x = x.reshape(x.shape[0], -1)
        x = Dense(
            self.width(1024),
            kernel_init=blocks.initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='fc1',
        )(x)
        x = blocks.activation(self.activation)(x)
        x = nn.Dropout(0.7)(x, deterministic=not train)
        return Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='fc2')(
            x
        )


def _classifier(model: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """Global average pool - dropout - FC classes, as float32 logits."""
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(model.dropout_rate)(x, deterministic=not train)
    x = Dense(model.num_classes, dtype=model.dtype, param_dtype=model.param_dtype, name='head')(x)
    return x.astype(jnp.float32)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1; see the module docstring for layout, aux heads and small inputs."""

    num_classes: int = 1000
    aux_logits: bool = True
    aux_loss_weight: float = 0.3
    stem: str = 'imagenet'
    width_multiplier: float = 1.0
    wide_kernel_size: int = 3
    dropout_rate: float = 0.2
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    bn_epsilon: float = blocks.BATCH_NORM_EPSILON
    transform_input: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_inception_fields(self)
        blocks.check_choice('wide_kernel_size', self.wide_kernel_size, (3, 5))
        super().__post_init__()

    def _output_size(self, size: int) -> int:
        size = googlenet_stem_output_size(size, self.stem)
        size = blocks.window_output_size(size, 3, 2, ceil_mode=True)  # after 3b
        return blocks.window_output_size(size, 2, 2, ceil_mode=True)  # after 4e

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks.check_images(self, x)
        fields = {**block_fields(self), 'bn_epsilon': self.bn_epsilon}
        inception = functools.partial(
            InceptionV1Block, wide_kernel_size=self.wide_kernel_size, **fields
        )
        aux_head = functools.partial(GoogLeNetAuxHead, num_classes=self.num_classes, **fields)

        x = x.astype(self.dtype)
        if self.transform_input:
            x = torchvision_transform_input(x)
        x = GoogLeNetStem(stem=self.stem, name='stem', **fields)(x, train=train)
        x = inception(features=(64, 96, 128, 16, 32, 32), name='inception3a')(x, train=train)
        x = inception(features=(128, 128, 192, 32, 96, 64), name='inception3b')(x, train=train)
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = inception(features=(192, 96, 208, 16, 48, 64), name='inception4a')(x, train=train)
        run_aux_head(self, aux_head(name='aux_head1'), x, 'aux1', train)
        x = inception(features=(160, 112, 224, 24, 64, 64), name='inception4b')(x, train=train)
        x = inception(features=(128, 128, 256, 24, 64, 64), name='inception4c')(x, train=train)
        x = inception(features=(112, 144, 288, 32, 64, 64), name='inception4d')(x, train=train)
        run_aux_head(self, aux_head(name='aux_head2'), x, 'aux2', train)
        x = inception(features=(256, 160, 320, 32, 128, 128), name='inception4e')(x, train=train)
        x = max_pool(x, 2, 2, ceil_mode=True)
        x = inception(features=(256, 160, 320, 32, 128, 128), name='inception5a')(x, train=train)
        x = inception(features=(384, 192, 384, 48, 128, 128), name='inception5b')(x, train=train)
        return _classifier(self, x, train)


# BN-Inception, Figure 5 of Ioffe & Szegedy: (name, features, pool, strides).
_BN_INCEPTION_LAYOUT = (
    ('inception3a', (64, 64, 64, 64, 96, 32), 'avg', 1),
    ('inception3b', (64, 64, 96, 64, 96, 64), 'avg', 1),
    ('inception3c', (0, 128, 160, 64, 96, 0), 'max', 2),
    ('inception4a', (224, 64, 96, 96, 128, 128), 'avg', 1),
    ('inception4b', (192, 96, 128, 96, 128, 128), 'avg', 1),
    ('inception4c', (160, 128, 160, 128, 160, 128), 'avg', 1),
    ('inception4d', (96, 128, 192, 160, 192, 128), 'avg', 1),
    ('inception4e', (0, 128, 192, 192, 256, 0), 'max', 2),
    ('inception5a', (352, 192, 320, 160, 224, 128), 'avg', 1),
    ('inception5b', (352, 192, 320, 192, 224, 128), 'max', 1),
)


class InceptionV2(nn.Module):
    """BN-Inception (Inception v2); see the module docstring for the layout and small inputs."""

    num_classes: int = 1000
    stem: str = 'imagenet'
    width_multiplier: float = 1.0
    dropout_rate: float = 0.0
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    bn_epsilon: float = blocks.BATCH_NORM_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_inception_fields(self)
        super().__post_init__()

    def _output_size(self, size: int) -> int:
        size = googlenet_stem_output_size(size, self.stem)
        for _ in range(2):  # 3c and 4e: stride-2 3x3 convs and pools, padded by 1
            size = blocks.window_output_size(size, 3, 2, 1)
        return size

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        blocks.check_images(self, x)
        fields = {**block_fields(self), 'bn_epsilon': self.bn_epsilon}
        x = GoogLeNetStem(stem=self.stem, name='stem', **fields)(x.astype(self.dtype), train=train)
        for name, features, pool, strides in _BN_INCEPTION_LAYOUT:
            x = InceptionV2Block(
                features=features, pool=pool, strides=strides, name=name, **fields
            )(x, train=train)
        return _classifier(self, x, train)


# --------------------------------------------------------------------------- Inception v3


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # torchvision's F.avg_pool2d(x, 3, stride=1, padding=1) counts the zero padding.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class InceptionA(InceptionBlock):
    """35x35 grid: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool-1x1 (`pool_features`)."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b1 = self.conv(64, 1, 'branch1x1')(x, train=train)
        b5 = self.conv(48, 1, 'branch5x5_1')(x, train=train)
        b5 = self.conv(64, 5, 'branch5x5_2')(b5, train=train)
        b3 = self.conv(64, 1, 'branch3x3dbl_1')(x, train=train)
        b3 = self.conv(96, 3, 'branch3x3dbl_2')(b3, train=train)
        b3 = self.conv(96, 3, 'branch3x3dbl_3')(b3, train=train)
        bp = self.conv(self.pool_features, 1, 'branch_pool')(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(InceptionBlock):
    """35 -> 17 grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b3 = self.conv(384, 3, 'branch3x3', strides=2, padding='VALID')(x, train=train)
        bd = self.conv(64, 1, 'branch3x3dbl_1')(x, train=train)
        bd = self.conv(96, 3, 'branch3x3dbl_2')(bd, train=train)
        bd = self.conv(96, 3, 'branch3x3dbl_3', strides=2, padding='VALID')(bd, train=train)
        return jnp.concatenate([b3, bd, max_pool(x, 3, 2)], axis=-1)


class InceptionC(InceptionBlock):
    """17x17 grid, 7x7 factorised: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool-1x1."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.conv(192, 1, 'branch1x1')(x, train=train)
        b7 = self.conv(c7, 1, 'branch7x7_1')(x, train=train)
        b7 = self.conv(c7, (1, 7), 'branch7x7_2')(b7, train=train)
        b7 = self.conv(192, (7, 1), 'branch7x7_3')(b7, train=train)
        bd = self.conv(c7, 1, 'branch7x7dbl_1')(x, train=train)
        for i, (kernel, features) in enumerate(
            [((7, 1), c7), ((1, 7), c7), ((7, 1), c7), ((1, 7), 192)]
        ):
            bd = self.conv(features, kernel, f'branch7x7dbl_{i + 2}')(bd, train=train)
        bp = self.conv(192, 1, 'branch_pool')(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(InceptionBlock):
    """17 -> 8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b3 = self.conv(192, 1, 'branch3x3_1')(x, train=train)
        b3 = self.conv(320, 3, 'branch3x3_2', strides=2, padding='VALID')(b3, train=train)
        b7 = self.conv(192, 1, 'branch7x7x3_1')(x, train=train)
        b7 = self.conv(192, (1, 7), 'branch7x7x3_2')(b7, train=train)
        b7 = self.conv(192, (7, 1), 'branch7x7x3_3')(b7, train=train)
        b7 = self.conv(192, 3, 'branch7x7x3_4', strides=2, padding='VALID')(b7, train=train)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(InceptionBlock):
    """8x8 grid, expanded outputs: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avg pool-1x1."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b1 = self.conv(320, 1, 'branch1x1')(x, train=train)
        b3 = self.conv(384, 1, 'branch3x3_1')(x, train=train)
        b3 = jnp.concatenate(
            [
                self.conv(384, (1, 3), 'branch3x3_2a')(b3, train=train),
                self.conv(384, (3, 1), 'branch3x3_2b')(b3, train=train),
            ],
            axis=-1,
        )
        bd = self.conv(448, 1, 'branch3x3dbl_1')(x, train=train)
        bd = self.conv(384, 3, 'branch3x3dbl_2')(bd, train=train)
        bd = jnp.concatenate(
            [
                self.conv(384, (1, 3), 'branch3x3dbl_3a')(bd, train=train),
                self.conv(384, (3, 1), 'branch3x3dbl_3b')(bd, train=train),
            ],
            axis=-1,
        )
        bp = self.conv(192, 1, 'branch_pool')(_avg_pool_3x3(x), train=train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3AuxHead(InceptionBlock):
    """Pool to 5x5 - 1x1 conv 128 - 5x5 conv 768 - global average pool - FC classes.

    'imagenet' pools with torchvision's 5x5/3 average pool (17x17 -> 5x5); 'small' pools
    adaptively to 5x5, which fits any grid.
    """

    num_classes: int = 1000
    stem: str = 'imagenet'

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.stem == 'imagenet':
            x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding='VALID')
        else:
            x = blocks.adaptive_avg_pool(x, 5)
        x = self.conv(128, 1, 'conv0')(x, train=train)
        x = self.conv(768, 5, 'conv1', padding='VALID')(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='fc')(x)


class InceptionV3(nn.Module):
    """Inception v3; see the module docstring for layout, aux head and small inputs."""

    num_classes: int = 1000
    aux_logits: bool = True
    aux_loss_weight: float = 0.4
    stem: str = 'imagenet'
    width_multiplier: float = 1.0
    dropout_rate: float = 0.5
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    bn_epsilon: float = blocks.BATCH_NORM_EPSILON
    transform_input: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_inception_fields(self)
        super().__post_init__()

    def _output_size(self, size: int, with_aux: bool = True) -> int:
        size = inception_v3_stem_output_size(size, self.stem)
        grid17 = blocks.window_output_size(size, 3, 2)  # Mixed_6a
        size = blocks.window_output_size(grid17, 3, 2)  # Mixed_7a
        if with_aux and self.aux_logits and self.stem == 'imagenet':
            # The 5x5/3 average pool must leave at least 5x5 for the aux head's 5x5 conv.
            aux = blocks.window_output_size(blocks.window_output_size(grid17, 5, 3), 5)
            size = min(size, aux)
        return size

    def min_input_size(self) -> int:
        """Smallest image side this configuration accepts ('imagenet': 299, 75 without aux head;
        'small': 15)."""
        return blocks.smallest_input_size(self._output_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        hint = ''
        if self.stem == 'imagenet' and self.aux_logits:
            without_aux = blocks.smallest_input_size(
                functools.partial(self._output_size, with_aux=False)
            )
            hint = (
                f' (the auxiliary head needs the 17x17 grid; aux_logits=False accepts '
                f"{without_aux}x{without_aux}, stem='small' smaller images)"
            )
        blocks.check_images(self, x, hint)
        fields = {**block_fields(self), 'bn_epsilon': self.bn_epsilon}
        x = x.astype(self.dtype)
        if self.transform_input:
            x = torchvision_transform_input(x)
        x = InceptionV3Stem(stem=self.stem, name='stem', **fields)(x, train=train)
        for name, pool_features in (('mixed_5b', 32), ('mixed_5c', 64), ('mixed_5d', 64)):
            x = InceptionA(pool_features=pool_features, name=name, **fields)(x, train=train)
        x = InceptionB(name='mixed_6a', **fields)(x, train=train)
        for name, channels in (
            ('mixed_6b', 128),
            ('mixed_6c', 160),
            ('mixed_6d', 160),
            ('mixed_6e', 192),
        ):
            x = InceptionC(channels_7x7=channels, name=name, **fields)(x, train=train)
        run_aux_head(
            self,
            InceptionV3AuxHead(
                num_classes=self.num_classes, stem=self.stem, name='aux_head', **fields
            ),
            x,
            'aux1',
            train,
        )
        x = InceptionD(name='mixed_7a', **fields)(x, train=train)
        x = InceptionE(name='mixed_7b', **fields)(x, train=train)
        x = InceptionE(name='mixed_7c', **fields)(x, train=train)
        return _classifier(self, x, train)


register('googlenet', GoogLeNet, family='inception')
register('inception_v2', InceptionV2, family='inception')
register('inception_v3', InceptionV3, family='inception')
