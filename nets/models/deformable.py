"""Deformable convolution (Dai et al. 2017, v1; Zhu et al. 2019, v2) and a deformable ResNet.

A deformable conv samples its K = kh·kw kernel taps at learned fractional
positions: tap k of output location p reads the input at
`p·stride - pad + k·dilation + Δp_k` by bilinear interpolation (the four
neighbours; positions outside the image read zeros) and, in v2, scales the
sample by a modulation mask m_k in (0, 1). The offsets (and masks) come from a
regular conv over the same input with the same kernel size, stride, padding and
dilation, so there is one set per output location.

`deformable_conv` is the functional core (used by the layer and by the tests);
`DeformableConv` is the layer. Its offset conv starts at zero, so a new layer
samples the regular grid. v2's masks are `mask_scale · sigmoid(logits)` with
zero-initialised logits: with the DCNv2 default `mask_scale=1` masks start at
0.5 (the layer then starts as half a plain conv); `mask_scale=2` starts them
at exactly 1, so a fresh v2 layer equals a plain conv with the same kernel
(useful when starting from pretrained ResNet weights, and how the tests force
unit masks). DCN training recipes give the offset/mask conv a smaller learning
rate (0.1x); that belongs to the optimiser (the parameters under `.../offset/`).

`deformable_resnet50` is torchvision's ResNet-50 (v1.5) with the 3x3 convs of
stages conv3_x-conv5_x (indices 1, 2, 3 here; 13 convs) deformable, the
placement of DCNv2; DCNv1 made only conv5_x deformable (`deformable_stages=(3,)`).
Parameter names equal ResNet's, plus an `offset` conv inside each deformable
`conv2/conv`, so ResNet weights load directly: 25,557,032 + 871,263 offset/mask
parameters (v2) = 26,428,295; v1 adds 580,842 (26,137,874).
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.conv import Conv
from nets.layers import blocks
from nets.models.resnet import BasicBlock, BottleneckBlock, ResNet, Shortcut
from nets.registry import register

Dtype = Any
Padding = int | str | Sequence[int | tuple[int, int]]

VERSIONS = ('v1', 'v2')
PADDING_NAMES = ('SAME', 'VALID')


def _explicit_padding(
    padding: Padding,
    in_size: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> list[tuple[int, int]]:
    """(low, high) padding per spatial dim from an int, a name, or per-dim ints/pairs."""
    if isinstance(padding, str):
        blocks.check_choice('padding', padding.upper(), PADDING_NAMES)
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
        return [
            tuple(p) for p in jax.lax.padtype_to_pads(in_size, dilated, strides, padding.upper())
        ]
    if isinstance(padding, int):
        return [(padding, padding)] * len(in_size)
    padding = tuple(padding)
    if len(padding) != len(in_size):
        raise ValueError(
            f'padding {padding} has {len(padding)} entries but the input has '
            f'{len(in_size)} spatial dims'
        )
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def deformable_conv(
    x: jax.Array,
    kernel: jax.Array,
    offsets: jax.Array,
    masks: jax.Array | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = 0,
    dilation: int | Sequence[int] = 1,
) -> jax.Array:
    """Deformable 2-D convolution (no bias).

    Args:
      x: (N, H, W, C_in) input.
      kernel: (kh, kw, C_in, C_out), Flax's HWIO layout.
      offsets: (N, H_out, W_out, G·K·2), ordered (offset group, tap in row-major
        kernel order, (dy, dx)) as in torchvision; G = offset groups, K = kh·kw.
        Input channel group g (contiguous C_in/G channels) uses group g's offsets.
      masks: (N, H_out, W_out, G·K) modulation (v2), ordered (group, tap); None = all ones (v1).
      strides, dilation: int or one per spatial dim.
      padding: int, 'SAME'/'VALID', or per dim an int or (low, high) pair. Padding
        only moves the sampling grid: every read outside the image is zero.

    Returns (N, H_out, W_out, C_out) in the dtype of `x`. Sampling positions are
    computed in float32 whatever the compute dtype (bfloat16 cannot address
    pixels of large images to a fraction of a pixel).
    """
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f'deformable_conv expects (N, H, W, C) inputs and (kh, kw, C_in, C_out) kernels, '
            f'got shapes {x.shape} and {kernel.shape}'
        )
    batch, height, width, channels = x.shape
    kh, kw, kernel_in, out_features = kernel.shape
    if kernel_in != channels:
        raise ValueError(f'kernel expects {kernel_in} input channels, the input has {channels}')
    strides = blocks.to_tuple(strides, 2, 'strides')
    dilation = blocks.to_tuple(dilation, 2, 'dilation')
    pads = _explicit_padding(padding, (height, width), (kh, kw), strides, dilation)
    out_h, out_w = (
        (size + lo + hi - (k - 1) * d - 1) // s + 1
        for size, (lo, hi), k, d, s in zip((height, width), pads, (kh, kw), dilation, strides)
    )
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f'deformable_conv: input {height}x{width} with padding {pads} is smaller than the '
            f'dilated {kh}x{kw} kernel'
        )
    taps = kh * kw
    if offsets.shape[:3] != (batch, out_h, out_w) or offsets.shape[-1] % (2 * taps):
        raise ValueError(
            f'offsets must have shape ({batch}, {out_h}, {out_w}, G*{2 * taps}), '
            f'got {offsets.shape}'
        )
    groups = offsets.shape[-1] // (2 * taps)
    if channels % groups:
        raise ValueError(f'{groups} offset groups do not divide the {channels} input channels')
    if masks is not None and masks.shape != (batch, out_h, out_w, groups * taps):
        raise ValueError(
            f'masks must have shape ({batch}, {out_h}, {out_w}, {groups * taps}), got {masks.shape}'
        )

    # Regular-grid position of every (output location, tap), then the learned shift.
    rows = jnp.arange(out_h, dtype=jnp.float32) * strides[0] - pads[0][0]
    cols = jnp.arange(out_w, dtype=jnp.float32) * strides[1] - pads[1][0]
    tap_rows = jnp.repeat(jnp.arange(kh, dtype=jnp.float32) * dilation[0], kw)
    tap_cols = jnp.tile(jnp.arange(kw, dtype=jnp.float32) * dilation[1], kh)
    offsets = offsets.astype(jnp.float32).reshape(batch, out_h, out_w, groups, taps, 2)
    pos_y = rows[None, :, None, None, None] + tap_rows + offsets[..., 0]  # (N, Ho, Wo, G, K)
    pos_x = cols[None, None, :, None, None] + tap_cols + offsets[..., 1]

    # Bilinear interpolation = a weighted read of the four integer neighbours;
    # neighbours outside the image get weight 0 (zero padding at any distance).
    y0 = jnp.floor(pos_y)
    x0 = jnp.floor(pos_x)
    frac_y, frac_x = pos_y - y0, pos_x - x0
    corner_index, corner_weight = [], []
    for dy, wy in ((0, 1.0 - frac_y), (1, frac_y)):
        for dx, wx in ((0, 1.0 - frac_x), (1, frac_x)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy <= height - 1) & (xx >= 0) & (xx <= width - 1)
            yy = jnp.clip(yy, 0, height - 1).astype(jnp.int32)
            xx = jnp.clip(xx, 0, width - 1).astype(jnp.int32)
            corner_index.append(yy * width + xx)
            corner_weight.append(jnp.where(inside, wy * wx, 0.0))
    index = jnp.stack(corner_index)  # (4, N, Ho, Wo, G, K)
    weight = jnp.stack(corner_weight)
    if masks is not None:
        # Modulation scales the interpolated sample, so it folds into the corner weights.
        weight = weight * masks.astype(jnp.float32).reshape(batch, out_h, out_w, groups, taps)

    # One gather per example and offset group: (N, G, H·W, C/G) read at 4·Ho·Wo·K positions.
    group_channels = channels // groups
    values = x.reshape(batch, height * width, groups, group_channels).transpose(0, 2, 1, 3)
    index = index.transpose(1, 4, 0, 2, 3, 5).reshape(batch, groups, -1, 1)
    sampled = jnp.take_along_axis(values, index, axis=2)
    sampled = sampled.reshape(batch, groups, 4, out_h, out_w, taps, group_channels)
    weight = weight.transpose(1, 4, 0, 2, 3, 5)[..., None].astype(
        x.dtype
    )  # (N, G, 4, Ho, Wo, K, 1)
    columns = jnp.sum(sampled * weight, axis=2)  # (N, G, Ho, Wo, K, C/G)

    kernel = kernel.reshape(taps, groups, group_channels, out_features).astype(x.dtype)
    return jnp.einsum('ngyxkc,kgco->nyxo', columns, kernel)


class DeformableConv(nn.Module):
    """Deformable 2-D conv layer, v1 (offsets) or v2 (offsets and modulation masks).

    `padding=None` pads (k-1)·dilation/2 per side (the output keeps the input
    size at stride 1 for odd kernels, and strided convs align like
    torchvision's). The offset conv (`offset`: 2·G·K channels, plus G·K mask
    logits for v2) is zero-initialised; see the module docstring for the masks
    and `mask_scale`.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: Padding | None = None
    dilation: int | Sequence[int] = 1
    version: str = 'v2'
    offset_groups: int = 1
    mask_scale: float = 1.0
    use_bias: bool = True
    kernel_init: str = 'he_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('deformable conv version', self.version, VERSIONS)
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        if self.features < 1 or self.offset_groups < 1:
            raise ValueError(
                f'features and offset_groups must be positive, got features={self.features}, '
                f'offset_groups={self.offset_groups}'
            )
        if not self.mask_scale > 0:
            raise ValueError(f'mask_scale must be positive, got {self.mask_scale!r}')
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'DeformableConv expects (N, H, W, C) images, got shape {x.shape}')
        channels = x.shape[-1]
        if channels % self.offset_groups:
            raise ValueError(
                f'offset_groups {self.offset_groups} does not divide the {channels} input channels'
            )
        kernel_size = blocks.to_tuple(self.kernel_size, 2, 'kernel_size')
        strides = blocks.to_tuple(self.strides, 2, 'strides')
        dilation = blocks.to_tuple(self.dilation, 2, 'dilation')
        if self.padding is None:
            pads = [((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(kernel_size, dilation)]
        else:
            pads = _explicit_padding(self.padding, x.shape[1:3], kernel_size, strides, dilation)
        taps = math.prod(kernel_size) * self.offset_groups
        num_offsets = 2 * taps
        x = x.astype(self.dtype)
        # Same geometry as the deformable conv: one offset (and mask) set per output location.
        predicted = Conv(
            num_offsets + (taps if self.version == 'v2' else 0),
            kernel_size,
            strides=strides,
            padding=pads,
            kernel_dilation=dilation,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='offset',
        )(x)
        offsets = predicted[..., :num_offsets]
        masks = None
        if self.version == 'v2':
            masks = self.mask_scale * nn.sigmoid(predicted[..., num_offsets:].astype(jnp.float32))
        kernel = self.param(
            'kernel',
            blocks.initializer(self.kernel_init),
            kernel_size + (channels, self.features),
            self.param_dtype,
        )
        y = deformable_conv(
            x,
            kernel.astype(self.dtype),
            offsets,
            masks,
            strides=strides,
            padding=pads,
            dilation=dilation,
        )
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class DeformableConvNormAct(nn.Module):
    """`blocks.ConvNormAct` with a deformable conv (no bias; BatchNorm; activation).

    Same parameter names (`conv/kernel`, `norm/...`) as ConvNormAct, so a
    ResNet's weights load into the deformable model.
    """

    features: int
    strides: int = 1
    version: str = 'v2'
    offset_groups: int = 1
    mask_scale: float = 1.0
    activation: str = 'relu'
    kernel_init: str = 'he_normal'
    zero_init_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = DeformableConv(
            self.features,
            3,
            strides=self.strides,
            version=self.version,
            offset_groups=self.offset_groups,
            mask_scale=self.mask_scale,
            use_bias=False,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='conv',
        )(x)
        x = blocks.batch_norm(
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            zero_scale=self.zero_init_norm,
            name='norm',
        )(x)
        return blocks.activation(self.activation)(x)


class DeformableBottleneckBlock(BottleneckBlock):
    """ResNet bottleneck whose 3x3 conv (which carries the stride) is deformable."""

    version: str = 'v2'
    offset_groups: int = 1
    mask_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        deform = dict(
            version=self.version, offset_groups=self.offset_groups, mask_scale=self.mask_scale
        )
        out_features = self.features * self.expansion
        y = blocks.ConvNormAct(self.features, 1, activation=self.activation, name='conv1', **conv)(
            x, train=train
        )
        y = DeformableConvNormAct(
            self.features,
            strides=self.strides,
            activation=self.activation,
            name='conv2',
            **deform,
            **conv,
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


class DeformableBasicBlock(BasicBlock):
    """ResNet basic block with both 3x3 convs deformable."""

    version: str = 'v2'
    offset_groups: int = 1
    mask_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        deform = dict(
            version=self.version, offset_groups=self.offset_groups, mask_scale=self.mask_scale
        )
        y = DeformableConvNormAct(
            self.features,
            strides=self.strides,
            activation=self.activation,
            name='conv1',
            **deform,
            **conv,
        )(x, train=train)
        y = DeformableConvNormAct(
            self.features,
            activation='identity',
            zero_init_norm=self.zero_init_residual,
            name='conv2',
            **deform,
            **conv,
        )(y, train=train)
        residual = Shortcut(self.features, self.strides, self.shortcut, name='shortcut', **conv)(
            x, train=train
        )
        return blocks.activation(self.activation)(y + residual)


_DEFORMABLE_BLOCK_CLASSES = {'basic': DeformableBasicBlock, 'bottleneck': DeformableBottleneckBlock}


class DeformableResNet(ResNet):
    """`ResNet` whose 3x3 convs in `deformable_stages` (0-based stage indices) are deformable.

    All ResNet fields keep their meaning (stems 'imagenet' and 'cifar', the
    latter being the small 3x3/1 stem for 28-32 px images). `deform_version`
    picks v1/v2, `offset_groups` splits the input channels into groups with
    their own offsets, `mask_scale` scales v2's masks (see the module docstring).
    Inputs must be (N, H, W, C) images at least as large as the total stride.
    """

    deform_version: str = 'v2'
    deformable_stages: tuple[int, ...] = (1, 2, 3)
    offset_groups: int = 1
    mask_scale: float = 1.0

    def __post_init__(self) -> None:
        blocks.check_choice('deform_version', self.deform_version, VERSIONS)
        if self.stage_sizes:
            stages = range(len(self.stage_sizes))
            for stage in self.deformable_stages:
                blocks.check_choice('deformable stage', stage, stages)
        if self.offset_groups < 1 or not self.mask_scale > 0:
            raise ValueError(
                f'offset_groups must be positive and mask_scale > 0, got '
                f'offset_groups={self.offset_groups}, mask_scale={self.mask_scale!r}'
            )
        super().__post_init__()

    def min_input_size(self) -> int:
        """Smallest H and W: the total stride (stem, then /2 per stage after the first)."""
        return (4 if self.stem == 'imagenet' else 1) * 2 ** (len(self.stage_sizes) - 1)

    def check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f'DeformableResNet expects (N, H, W, C) images, got shape {x.shape}')
        minimum = self.min_input_size()
        if min(x.shape[1:3]) < minimum:
            raise ValueError(
                f'Input size {x.shape[1]}x{x.shape[2]} is too small for stem {self.stem!r} and '
                f'{len(self.stage_sizes)} stages: minimum {minimum}x{minimum}'
            )

    def block_class(self, stage: int) -> Any:
        """Deformable blocks in `deformable_stages`, ResNet's own elsewhere (same parameter
        names)."""
        if stage not in self.deformable_stages:
            return super().block_class(stage)
        return functools.partial(
            _DEFORMABLE_BLOCK_CLASSES[self.block],
            version=self.deform_version,
            offset_groups=self.offset_groups,
            mask_scale=self.mask_scale,
        )


register(
    'deformable_resnet50',
    DeformableResNet,
    family='deformable',
    stage_sizes=(3, 4, 6, 3),
    block='bottleneck',
)
