"""`Conv`: flax's nn.Conv whose gradients XLA's CPU backend computes on its fast path inside
loops as well.

XLA's CPU compiler gives a convolution the (batch, *spatial, channels) operands its Eigen
kernels need by inserting transposes, but only in the entry computation. Inside a while loop
(`lax.scan` over micro-batches: gradient accumulation) the kernel-gradient convolution, whose
operands come with the batch as the contracted dimension, stays as it is and runs on a naive
path, orders of magnitude slower; the input gradient, whose flipped kernel comes as
(*spatial, O, I), is slowed down too (docs/speed.md has the measurements). Here each gradient
is that of the same convolution written on transposed operands (for the kernel gradient inputs
as (C, *spatial, N) and the kernel as (I, *spatial, O); for the input gradient the kernel as
(*spatial, O, I)), which JAX transposes into convolutions already in the canonical layout, so the
same fast kernels run in and out of loops. Same values (the same sums, exactly); parameters
and names are nn.Conv's. Three more CPU paths, each measured faster than XLA's own
(experiments/benchmarks/conv_benchmark.py): a strided layer's input gradient as stride-1
convolutions of the input's phases (XLA computes it over a zero-dilated gradient), a 1x1 kernel's
gradient as one product, and large-activation layers' gradients in chunks of 16 examples that
stay in the caches. Only where JAX's default backend is the CPU: GPU and TPU compilers lay
gradient convolutions out themselves, so there the convolution is lax's, as in nn.Conv.

Where oneDNN would take them, patch embeddings (windows as large as their strides, no padding:
ViT and Swin patches, ConvNeXt's stem) are one product instead (`patch_product`); with the switch
at 'xla' (which the FLOP count and the model summary use) they stay XLA's convolutions.

On the CPU, 2-D float32 and bfloat16 convolutions with undilated kernels go to oneDNN's kernels
instead where the kernel switch asks for them and they build (nets/kernels/onednn_conv.py,
nets/kernels/switch.py), grouped ones (feature_group_count > 1: NFNet's grouped 3x3s,
ConvNeXt's depthwise 7x7s) included: XLA's CPU backend runs those on a slow generic path, in
forward and both gradients (docs/conv_benchmark_grouped.md). The XLA paths here serve the other
ungrouped convolutions, and all of them with the switch at 'xla'; grouped convolutions that
oneDNN does not take are lax's as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from nets.kernels import onednn_conv
from nets.kernels.mixed_precision import matmul

Padding = str | Sequence[tuple[int, int]]


def channels_last_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """`lax.conv_general_dilated` layout for (N, *spatial, C) inputs and (*spatial, I, O)
    kernels."""
    spatial = tuple(range(1, ndim - 1))
    lhs = (0, ndim - 1) + spatial
    rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _forward(x, w, strides, padding, rhs_dilation, precision):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        rhs_dilation=rhs_dilation,
        dimension_numbers=channels_last_dimension_numbers(x.ndim),
        precision=precision,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, padding, rhs_dilation, precision):
    return _forward(x, w, strides, padding, rhs_dilation, precision)


def _conv_fwd(x, w, strides, padding, rhs_dilation, precision):
    return _forward(x, w, strides, padding, rhs_dilation, precision), (x, w)


def _pad_spatial(x, padding):
    """x (N, *spatial, C) with (lo, hi) zeros around each spatial axis (negative: cropped)."""
    return lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
    )


def _phase_convolutions(x, w, strides, padding, precision):
    """A strided convolution as the sum of stride-1 ones, one per input phase: with stride s,
    the kernel taps r, r+s, r+2s, ... read only the padded input's positions r, r+s, ...; each
    such (sub-kernel, sub-sampled input) pair is a valid stride-1 convolution (through `_conv`,
    so its gradients take the canonical layouts above), and the phases' results add up to the
    strided one. Every input position and every tap belongs to one phase, so each gradient
    element is the same sum as the strided convolution's."""
    rank = x.ndim - 2
    kernel = w.shape[:rank]
    x = _pad_spatial(x, padding)
    out = [(x.shape[1 + d] - kernel[d]) // strides[d] + 1 for d in range(rank)]
    total = None
    for phase in itertools.product(*(range(min(s, k)) for s, k in zip(strides, kernel))):
        taps = [len(range(r, k, s)) for r, k, s in zip(phase, kernel, strides)]
        sub_w = w[tuple(slice(r, None, s) for r, s in zip(phase, strides))]
        sub_x = lax.slice(
            x,
            (0, *phase, 0),
            (
                x.shape[0],
                *(r + s * (o + t - 2) + 1 for r, s, o, t in zip(phase, strides, out, taps)),
                x.shape[-1],
            ),
            (1, *strides, 1),
        )
        y = _conv(sub_x, sub_w, (1,) * rank, ((0, 0),) * rank, (1,) * rank, precision)
        total = y if total is None else total + y
    return total


def _input_gradient(x, w, dy, strides, padding, rhs_dilation, precision):
    if any(s > 1 for s in strides) and all(d == 1 for d in rhs_dilation):
        # XLA's CPU backend runs a strided convolution's input gradient over the output gradient
        # dilated with zeros, computing every product with a zero; the phases' stride-1 input
        # gradients skip them.
        _, vjp = jax.vjp(lambda x_: _phase_convolutions(x_, w, strides, padding, precision), x)
        return vjp(dy)[0]
    ndim = x.ndim
    spatial = tuple(range(1, ndim - 1))
    # From the kernel given as (*spatial, O, I): its transpose convolution then reads the
    # (flipped) kernel as (*spatial, I, O), the canonical layout.
    w_s = w.swapaxes(-1, -2)
    lhs = (0, ndim - 1) + spatial
    numbers = lax.ConvDimensionNumbers(lhs, (ndim - 2, ndim - 1) + tuple(range(ndim - 2)), lhs)
    _, input_vjp = jax.vjp(
        lambda x_: lax.conv_general_dilated(
            x_,
            w_s,
            strides,
            padding,
            rhs_dilation=rhs_dilation,
            dimension_numbers=numbers,
            precision=precision,
        ),
        x,
    )
    return input_vjp(dy)[0]


def _kernel_gradient(x, w, dy, strides, padding, rhs_dilation, precision):
    ndim = x.ndim
    spatial = tuple(range(1, ndim - 1))
    if all(k == 1 for k in w.shape[:-2]):
        # A pointwise kernel's gradient is one product of the (strided) inputs and the output
        # gradient over batch and positions, which XLA's CPU backend runs far faster as a
        # product than as a convolution.
        x = _pad_spatial(x, padding)
        x = lax.slice(
            x,
            (0,) * ndim,
            (x.shape[0], *((o - 1) * s + 1 for o, s in zip(dy.shape[1:-1], strides)), x.shape[-1]),
            (1, *strides, 1),
        )
        contracted = (0, *spatial)
        dw = lax.dot_general(x, dy, ((contracted, contracted), ((), ())), precision=precision)
        return dw.reshape(w.shape)
    # The same convolution on (C, *spatial, N) inputs, (I, *spatial, O) kernels and
    # (*spatial, N, C) outputs: its kernel gradient is a canonical (batch=C, feature=N) one.
    x_t = x.transpose((ndim - 1,) + spatial + (0,))
    w_t = w.transpose((ndim - 2,) + tuple(range(ndim - 2)) + (ndim - 1,))
    dy_t = dy.transpose(tuple(s for s in spatial) + (0, ndim - 1))
    numbers = lax.ConvDimensionNumbers(
        (ndim - 1, 0) + spatial,
        (ndim - 1, 0) + spatial,
        (ndim - 2, ndim - 1) + tuple(range(ndim - 2)),
    )
    _, kernel_vjp = jax.vjp(
        lambda w_: lax.conv_general_dilated(
            x_t,
            w_,
            strides,
            padding,
            rhs_dilation=rhs_dilation,
            dimension_numbers=numbers,
            precision=precision,
        ),
        w_t,
    )
    (dw_t,) = kernel_vjp(dy_t)
    return dw_t.transpose(tuple(range(1, ndim - 1)) + (0, ndim - 1))


# The gradients of a batch of more than this many examples are computed in chunks of it (see
# _conv_bwd) where the input and output gradient take at least BACKWARD_CHUNK_MIN_BYTES and each
# chunk's input is at least as large as the kernel.
BACKWARD_CHUNK_EXAMPLES = 16
BACKWARD_CHUNK_MIN_BYTES = 16 * 2**20


def backward_chunks(
    x_shape: Sequence[int], w_shape: Sequence[int], dy_shape: Sequence[int], itemsize: int = 4
) -> int:
    """How many chunks of the batch `_conv_bwd` computes the gradients of an input of `x_shape`,
    a kernel of `w_shape` and an output gradient of `dy_shape` in (1: the whole batch at once)."""
    batch = x_shape[0]
    if (
        batch <= BACKWARD_CHUNK_EXAMPLES
        or batch % BACKWARD_CHUNK_EXAMPLES
        or itemsize * (math.prod(x_shape) + math.prod(dy_shape)) < BACKWARD_CHUNK_MIN_BYTES
    ):
        return 1
    chunks = batch // BACKWARD_CHUNK_EXAMPLES
    return chunks if math.prod(x_shape) >= chunks * math.prod(w_shape) else 1


def _conv_bwd(strides, padding, rhs_dilation, precision, residuals, dy):
    x, w = residuals
    args = (strides, padding, rhs_dilation, precision)
    chunks = backward_chunks(x.shape, w.shape, dy.shape, x.dtype.itemsize)
    if chunks == 1:
        return _input_gradient(x, w, dy, *args), _kernel_gradient(x, w, dy, *args)

    # Chunks of 16 examples (a loop, one chunk's gradients at a time): their operands, and the
    # transposed copies the kernel gradient makes of them, stay in the caches, where a whole
    # batch would stream through main memory. Layers whose kernel outweighs a chunk's input are
    # slower chunked, as the kernel's gradient is then written and its kernel read once per
    # chunk; so are small layers whose operands fit in the caches anyway: hence
    # BACKWARD_CHUNK_MIN_BYTES (measurements in docs/speed.md).
    # Chunk c holds examples c, c + chunks, c + 2 chunks, ...: the batch axis stays whole
    # (axis 0 of the (examples per chunk, chunks, ...) view), so a batch sharded over devices
    # keeps its sharding and every device computes its share of every chunk. Consecutive
    # examples as chunks would put each chunk on one device and serialise them.
    xs = x.reshape(-1, chunks, *x.shape[1:])
    dys = dy.reshape(-1, chunks, *dy.shape[1:])

    def chunk(c, carry):
        dx, dw = carry
        x_c = lax.dynamic_index_in_dim(xs, c, axis=1, keepdims=False)
        dy_c = lax.dynamic_index_in_dim(dys, c, axis=1, keepdims=False)
        dw = dw + _kernel_gradient(x_c, w, dy_c, *args).astype(jnp.float32)
        dx = lax.dynamic_update_index_in_dim(dx, _input_gradient(x_c, w, dy_c, *args), c, axis=1)
        return dx, dw

    dx, dw = lax.fori_loop(0, chunks, chunk, (jnp.zeros_like(xs), jnp.zeros(w.shape, jnp.float32)))
    return dx.reshape(x.shape), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def is_patch_embedding(
    window: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    feature_group_count: int,
) -> bool:
    """Whether an undilated convolution cuts its input into non-overlapping patches (a ViT's
    or a Swin's patch embedding, a ConvNeXt stem): windows larger than one pixel and as large
    as the strides, no padding."""
    return (
        feature_group_count == 1
        and math.prod(window) > 1
        and tuple(window) == tuple(strides)
        and all(lo == hi == 0 for lo, hi in padding)
    )


def patch_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """A patch-embedding convolution (`is_patch_embedding`) of channels-last `x` as one product:
    each patch flattened, times the kernel as a (patch size, out) matrix, low-precision operands
    accumulated in float32 (nets.kernels.mixed_precision). The convolution's terms, summed in
    another order. It replaces oneDNN's kernels, whose bfloat16 kernel gradient is slow for
    such layers (three input channels)."""
    window, channels = w.shape[:-2], x.shape[-1]
    rank = len(window)
    n, spatial = x.shape[0], x.shape[1:-1]
    counts = tuple(size // p for size, p in zip(spatial, window))
    x = x[(slice(None), *(slice(0, c * p) for c, p in zip(counts, window)))]
    # (n, c1, p1, c2, p2, ..., channels) -> (n, c1, c2, ..., p1, p2, ..., channels)
    split = x.reshape(n, *itertools.chain.from_iterable(zip(counts, window)), channels)
    order = (0, *range(1, 2 * rank, 2), *range(2, 2 * rank + 1, 2), 2 * rank + 1)
    patches = split.transpose(order).reshape(n, *counts, math.prod(window) * channels)
    return matmul(patches, w.reshape(-1, w.shape[-1]))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` on the CPU's fast paths for channels-last, undilated-input
    convolutions: oneDNN's (grouped ones included) where the kernel switch asks for them and
    they build, else loop-safe gradients for ungrouped ones (the others go to lax as they are)."""
    rank = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * rank)
    rhs_dilation = tuple(rhs_dilation or (1,) * rank)
    if (
        jax.default_backend() != 'cpu'
        or batch_group_count != 1
        or any(d != 1 for d in lhs_dilation)
        or preferred_element_type is not None
        or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        != channels_last_dimension_numbers(lhs.ndim)
    ):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    if isinstance(padding, str):
        window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:rank], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(window_strides)
    if onednn_conv.supports(
        lhs, rhs, rhs_dilation, feature_group_count
    ) and onednn_conv.use_for_trace(lhs.dtype):
        if is_patch_embedding(rhs.shape[:rank], strides, padding, feature_group_count):
            return patch_product(lhs, rhs)
        return onednn_conv.conv2d(lhs, rhs, strides, padding, feature_group_count)
    if feature_group_count != 1:
        # The gradients of `_conv` are written for ungrouped kernels.
        return lax.conv_general_dilated(
            lhs,
            rhs,
            strides,
            padding,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
        )
    return _conv(lhs, rhs, strides, padding, rhs_dilation, precision)


class Conv(nn.Conv):
    """nn.Conv (same parameters, names and values) through `conv_general_dilated`: its
    gradients stay fast inside `lax.scan` on XLA's CPU backend (see the module docstring)."""

    conv_general_dilated: Any = conv_general_dilated
