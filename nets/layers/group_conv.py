"""Group-equivariant convolutions for p4, the translations and rotations by multiples of 90°
(Cohen & Welling 2016, "Group Equivariant Convolutional Networks").

A p4 feature map has one spatial map per orientation: (N, H, W, 4, C), orientation s meaning
"the filter turned by s quarter turns". Rotating the input image by a quarter turn (`rot90`
over the spatial axes, `rotate_image`) rotates every map the same way and shifts the
orientations cyclically by one (`rotate_p4`), exactly, so a stack of these layers is
equivariant and a pool over the orientations and the positions (`rotation_pool` then a global
spatial mean) is invariant to the rotation.

- `LiftingConv` (Z2 -> p4): one (k, k, C_in, C_out) filter applied in its four rotations;
  output s is the image correlated with the filter turned s times.
- `GroupConv` (p4 -> p4): a (4, k, k, C_in, C_out) filter over (orientation, position);
  output s applies the filter turned s times, which rotates it spatially and shifts its
  orientation axis cyclically by s.

Both expand their filter into one ordinary convolution over the orientations stacked as
channels (`nets.kernels.conv.conv_general_dilated`), so they cost what a convolution with 4x
the output channels (4x the input channels for `GroupConv`) costs; the expanded filter holds
4x fewer free parameters. One bias per output channel, shared by the orientations (a bias
per orientation would break equivariance). Exactness needs what keeps a rotation a
permutation of the pixels: square maps, odd kernels with 'SAME' padding (zero padding turns
with the image), stride 1; 2x2/2 pooling of even maps commutes with the rotation too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.conv import channels_last_dimension_numbers, conv_general_dilated
from nets.layers import blocks

Dtype = Any

ORIENTATIONS = 4  # the rotations of p4: 0, 90, 180 and 270 degrees
ORIENTATION_AXIS = -2  # (N, H, W, 4, C)
ROTATION_POOLS = ('max', 'mean')


def rotate_image(x: jax.Array, quarter_turns: int = 1) -> jax.Array:
    """(N, H, W, ...) arrays turned by `quarter_turns` x 90° over the spatial axes."""
    return jnp.rot90(x, quarter_turns, axes=(1, 2))


def rotate_p4(x: jax.Array, quarter_turns: int = 1) -> jax.Array:
    """The rotation acting on a p4 feature map (N, H, W, 4, C): every map turned and the
    orientations shifted cyclically, so that layer(rotate_image(x)) == rotate_p4(layer(x))."""
    return jnp.roll(rotate_image(x, quarter_turns), quarter_turns, axis=ORIENTATION_AXIS)


def rotation_pool(x: jax.Array, kind: str = 'max') -> jax.Array:
    """(N, H, W, 4, C) -> (N, H, W, C): the orientations pooled away, so the result only turns
    with the input (no shift left to undo)."""
    blocks.check_choice('rotation pool', kind, ROTATION_POOLS)
    return jnp.max(x, ORIENTATION_AXIS) if kind == 'max' else jnp.mean(x, ORIENTATION_AXIS)


def lifting_filters(kernel: jax.Array) -> jax.Array:
    """(k, k, C_in, C_out) -> (k, k, C_in, 4 * C_out): the filter in its four rotations,
    orientation-major in the output channels."""
    turned = jnp.stack([jnp.rot90(kernel, s, axes=(0, 1)) for s in range(ORIENTATIONS)], axis=-2)
    return turned.reshape(*kernel.shape[:3], ORIENTATIONS * kernel.shape[3])


def group_filters(kernel: jax.Array) -> jax.Array:
    """(4, k, k, C_in, C_out) -> (k, k, 4 * C_in, 4 * C_out): output orientation s applies the
    filter turned by s: filter[(t - s) mod 4] rotated s times, for input orientation t."""
    orientations, size, _, in_features, out_features = kernel.shape
    per_output = []
    for s in range(orientations):
        shifted = jnp.roll(kernel, s, axis=0)  # entry t holds kernel[(t - s) mod 4]
        turned = jnp.rot90(shifted, s, axes=(1, 2))  # (4, k, k, C_in, C_out)
        per_output.append(jnp.moveaxis(turned, 0, 2))  # (k, k, 4, C_in, C_out)
    expanded = jnp.stack(per_output, axis=-2)  # (k, k, 4, C_in, 4, C_out)
    return expanded.reshape(size, size, orientations * in_features, orientations * out_features)


def _correlate(x: jax.Array, filters: jax.Array) -> jax.Array:
    return conv_general_dilated(
        x, filters, (1, 1), 'SAME', dimension_numbers=channels_last_dimension_numbers(4)
    )


class _P4Conv(nn.Module):
    features: int
    kernel_size: int = 3
    use_bias: bool = True
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.features < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f'features must be positive and kernel_size odd (a rotation keeps an odd '
                f'kernel centred), got features={self.features}, kernel_size={self.kernel_size}'
            )
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        super().__post_init__()

    def _kernel(self, shape: tuple[int, ...]) -> jax.Array:
        init = blocks.initializer(self.kernel_init)
        # Fan-in over (orientation, position, channel) for the group filter: a 3-D "receptive
        # field", so the variance-scaling initialisers see the true number of inputs.
        return self.param('kernel', init, shape, self.param_dtype).astype(self.dtype)

    def _add_bias(self, y: jax.Array) -> jax.Array:
        if not self.use_bias:
            return y
        bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
        return y + bias.astype(self.dtype)


class LiftingConv(_P4Conv):
    """Z2 -> p4: (N, H, W, C_in) images -> (N, H, W, 4, features) maps, one per filter rotation.

    Parameters: kernel (k, k, C_in, features) and bias (features,)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'LiftingConv expects (N, H, W, C) images, got shape {x.shape}')
        k = self.kernel_size
        kernel = self._kernel((k, k, x.shape[-1], self.features))
        y = _correlate(x.astype(self.dtype), lifting_filters(kernel))
        y = y.reshape(*y.shape[:3], ORIENTATIONS, self.features)
        return self._add_bias(y)


class GroupConv(_P4Conv):
    """p4 -> p4: (N, H, W, 4, C_in) maps -> (N, H, W, 4, features).

    Parameters: kernel (4, k, k, C_in, features) and bias (features,)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 5 or x.shape[ORIENTATION_AXIS] != ORIENTATIONS:
            raise ValueError(
                f'GroupConv expects (N, H, W, {ORIENTATIONS}, C) p4 maps, got shape {x.shape}'
            )
        k, in_features = self.kernel_size, x.shape[-1]
        kernel = self._kernel((ORIENTATIONS, k, k, in_features, self.features))
        stacked = x.astype(self.dtype).reshape(*x.shape[:3], ORIENTATIONS * in_features)
        y = _correlate(stacked, group_filters(kernel))
        y = y.reshape(*y.shape[:3], ORIENTATIONS, self.features)
        return self._add_bias(y)
