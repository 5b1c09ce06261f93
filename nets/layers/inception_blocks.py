"""The pieces the Inception families share: nets/models/inception.py (GoogLeNet, BN-Inception,
Inception v3) and nets/models/inception_resnet.py (Inception-ResNet-v2).

`InceptionBlock` is the base of every Inception block: its fields and `conv`, a conv (no bias) -
BatchNorm - activation like torchvision's `BasicConv2d`. Its BatchNorm epsilon `bn_epsilon`
defaults to the package-wide PyTorch default 1e-5; torchvision's BasicConv2d uses 1e-3, which the
checkpoint converter (nets/convert) sets. Also here: a max pool with PyTorch's padding and
ceil-mode semantics, torchvision's `transform_input`, the field checks the models share, the
auxiliary-logit protocol (`run_aux_head`) and the two stems: GoogLeNet's (BN-Inception's too)
and Inception v3's (Inception-ResNet-v2's too).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.layers import blocks

Dtype = Any

STEMS = ('imagenet', 'small')

# torchvision's `transform_input`: ImageNet-normalised channels (x - mean) / std re-expressed as
# (x' - 0.5) / 0.5, the [-1, 1] range the Inception weights ported from TensorFlow expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_transform_input(x: jax.Array) -> jax.Array:
    """torchvision's `transform_input` on channels-last RGB images: x·(std/0.5) + (mean-0.5)/0.5
    per channel."""
    scale = jnp.asarray([s / 0.5 for s in _IMAGENET_STD], x.dtype)
    shift = jnp.asarray([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN], x.dtype)
    return x * scale + shift


def max_pool(
    x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> jax.Array:
    """Square max pool with PyTorch's padding and ceil-mode semantics (padding counts as -inf)."""
    pads = []
    for n in x.shape[1:-1]:
        out = blocks.window_output_size(n, window, stride, padding, ceil_mode)
        pads.append((padding, max(padding, (out - 1) * stride + window - n - padding)))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def check_inception_fields(model: nn.Module) -> None:
    """Validation shared by the Inception-style models (stem, widths, rates, names)."""
    blocks.check_choice('stem', model.stem, STEMS)
    blocks.check_choice('activation', model.activation, blocks.ACTIVATIONS)
    blocks.check_choice('kernel_init', model.kernel_init, blocks.INITIALIZERS)
    blocks.check_rate('dropout_rate', model.dropout_rate)
    if not model.width_multiplier > 0:
        raise ValueError(f'width_multiplier must be positive, got {model.width_multiplier!r}')
    if getattr(model, 'aux_loss_weight', 0.0) < 0:
        raise ValueError(f'aux_loss_weight must be >= 0, got {model.aux_loss_weight!r}')
    if not getattr(model, 'bn_epsilon', 1.0) > 0:
        raise ValueError(f'bn_epsilon must be positive, got {model.bn_epsilon!r}')


class InceptionBlock(nn.Module):
    """Fields every Inception block shares, and its conv-BN-activation factory."""

    width_multiplier: float = 1.0
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    bn_epsilon: float = blocks.BATCH_NORM_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def width(self, features: int) -> int:
        return blocks.scale_width(features, self.width_multiplier)

    def conv(
        self,
        features: int,
        kernel_size: int | tuple[int, int],
        name: str,
        strides: int = 1,
        padding: str | None = None,
    ) -> blocks.ConvNormAct:
        """A BasicConv2d of `features` (before the width multiplier); padding None: k // 2."""
        return blocks.ConvNormAct(
            self.width(features),
            kernel_size,
            strides=strides,
            padding=padding,
            activation=self.activation,
            kernel_init=self.kernel_init,
            norm_epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )


def block_fields(model: nn.Module) -> dict[str, Any]:
    """The model fields every `InceptionBlock` takes."""
    return dict(
        width_multiplier=model.width_multiplier,
        activation=model.activation,
        kernel_init=model.kernel_init,
        dtype=model.dtype,
        param_dtype=model.param_dtype,
    )


def run_aux_head(model: nn.Module, head: nn.Module, x: jax.Array, name: str, train: bool) -> None:
    """Run an auxiliary head in train mode and sow its logits as ('aux_logits', name).

    At init the head also runs (so its parameters exist for later training) but sows
    nothing: a sown value in the initial variables would become training state. The head
    module must not be called `name` (Flax keeps variables and submodules in one namespace).
    """
    if not model.aux_logits or not (train or model.is_initializing()):
        return
    logits = head(x, train=train).astype(jnp.float32)
    if train and not model.is_initializing():
        model.sow('aux_logits', name, logits)


class GoogLeNetStem(InceptionBlock):
    """conv1 - pool - conv2 (1x1) - conv3 (3x3, 192) - pool, shared by GoogLeNet and BN-Inception.

    'imagenet': conv1 is 7x7/2 (224 -> 28). 'small': conv1 is 3x3/1 and its pool is left out
    (28 -> 14).
    """

    stem: str = 'imagenet'

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.stem == 'imagenet':
            x = self.conv(64, 7, 'conv1', strides=2)(x, train=train)
            x = max_pool(x, 3, 2, ceil_mode=True)
        else:
            x = self.conv(64, 3, 'conv1')(x, train=train)
        x = self.conv(64, 1, 'conv2')(x, train=train)
        x = self.conv(192, 3, 'conv3')(x, train=train)
        return max_pool(x, 3, 2, ceil_mode=True)


def googlenet_stem_output_size(size: int, stem: str) -> int:
    if stem == 'imagenet':
        size = blocks.window_output_size(size, 7, 2, 3)
        size = blocks.window_output_size(size, 3, 2, ceil_mode=True)
    return blocks.window_output_size(size, 3, 2, ceil_mode=True)


class InceptionV3Stem(InceptionBlock):
    """conv 3x3/2 - conv 3x3 - conv 3x3 (64) - max pool - conv 1x1 (80) - conv 3x3 (192) - max pool.

    'imagenet': torchvision's unpadded convs (299 -> 35). 'small': every conv stride 1 and
    padded, no first pool (28 -> 13). Inception-ResNet-v2 uses the same stem.
    """

    stem: str = 'imagenet'

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.stem == 'imagenet':
            x = self.conv(32, 3, 'conv1a', strides=2, padding='VALID')(x, train=train)
            x = self.conv(32, 3, 'conv2a', padding='VALID')(x, train=train)
            x = self.conv(64, 3, 'conv2b')(x, train=train)
            x = max_pool(x, 3, 2)
        else:
            x = self.conv(32, 3, 'conv1a')(x, train=train)
            x = self.conv(32, 3, 'conv2a')(x, train=train)
            x = self.conv(64, 3, 'conv2b')(x, train=train)
        x = self.conv(80, 1, 'conv3b')(x, train=train)
        x = self.conv(192, 3, 'conv4a', padding='VALID' if self.stem == 'imagenet' else None)(
            x, train=train
        )
        return max_pool(x, 3, 2)


def inception_v3_stem_output_size(size: int, stem: str) -> int:
    if stem == 'imagenet':
        size = blocks.window_output_size(size, 3, 2)
        size = blocks.window_output_size(size, 3)
        size = blocks.window_output_size(size, 3, 2)
        size = blocks.window_output_size(size, 3)
    return blocks.window_output_size(size, 3, 2)
