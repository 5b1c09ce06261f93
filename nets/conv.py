"""`Conv`: flax's nn.Conv whose gradients XLA's CPU backend computes on its fast path inside
loops as well.

XLA's CPU compiler gives a convolution the (batch, *spatial, channels) operands its Eigen
kernels need by inserting transposes, but only in the entry computation. Inside a while loop
(`lax.scan` over micro-batches: gradient accumulation) the kernel-gradient convolution, whose
operands come with the batch as the contracted dimension, stays as it is and runs on a naive
path: a 32x32x64 3x3 layer's gradient took 13 s instead of 0.08 s (jax 0.10.2); the input
gradient, whose flipped kernel comes as (*spatial, O, I), ran 3-4x slower too. Here each gradient
is that of the same convolution written on transposed operands (for the kernel gradient inputs
as (C, *spatial, N) and the kernel as (I, *spatial, O); for the input gradient the kernel as
(*spatial, O, I)), which JAX transposes into convolutions already in the canonical layout, so the
same fast kernels run in and out of loops (4 scanned micro-batches of that layer: 13 s -> 0.13 s,
ResNet-18 train step in 4 micro-batches 168 s -> 3.0 s). Same values (the same sums, exactly);
parameters and names are nn.Conv's. Only where JAX's default backend is the CPU: GPU and TPU
compilers lay gradient convolutions out themselves, so there the convolution is lax's, as in
nn.Conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def channels_last_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """`lax.conv_general_dilated` layout for (N, *spatial, C) inputs and (*spatial, I, O) kernels."""
    spatial = tuple(range(1, ndim - 1))
    lhs = (0, ndim - 1) + spatial
    rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


def _forward(x, w, strides, padding, rhs_dilation, precision):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=rhs_dilation,
                                    dimension_numbers=channels_last_dimension_numbers(x.ndim),
                                    precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, padding, rhs_dilation, precision):
    return _forward(x, w, strides, padding, rhs_dilation, precision)


def _conv_fwd(x, w, strides, padding, rhs_dilation, precision):
    return _forward(x, w, strides, padding, rhs_dilation, precision), (x, w)


def _conv_bwd(strides, padding, rhs_dilation, precision, residuals, dy):
    x, w = residuals
    ndim = x.ndim
    spatial = tuple(range(1, ndim - 1))
    # The input gradient likewise, from the kernel given as (*spatial, O, I): its transpose
    # convolution then reads the (flipped) kernel as (*spatial, I, O), the canonical layout.
    w_s = w.swapaxes(-1, -2)
    lhs = (0, ndim - 1) + spatial
    numbers = lax.ConvDimensionNumbers(lhs, (ndim - 2, ndim - 1) + tuple(range(ndim - 2)), lhs)
    _, input_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(
        x_, w_s, strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=numbers,
        precision=precision), x)
    dx, = input_vjp(dy)
    # The same convolution on (C, *spatial, N) inputs, (I, *spatial, O) kernels and
    # (*spatial, N, C) outputs: its kernel gradient is a canonical (batch=C, feature=N) one.
    x_t = x.transpose((ndim - 1,) + spatial + (0,))
    w_t = w.transpose((ndim - 2,) + tuple(range(ndim - 2)) + (ndim - 1,))
    dy_t = dy.transpose(tuple(s for s in spatial) + (0, ndim - 1))
    numbers = lax.ConvDimensionNumbers((ndim - 1, 0) + spatial, (ndim - 1, 0) + spatial,
                                       (ndim - 2, ndim - 1) + tuple(range(ndim - 2)))
    _, kernel_vjp = jax.vjp(lambda w_: lax.conv_general_dilated(
        x_t, w_, strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=numbers,
        precision=precision), w_t)
    dw_t, = kernel_vjp(dy_t)
    dw = dw_t.transpose(tuple(range(1, ndim - 1)) + (0, ndim - 1))
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Padding, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """`lax.conv_general_dilated` with loop-safe gradients for channels-last,
    ungrouped, undilated-input convolutions on the CPU (the others go to lax as they are)."""
    rank = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * rank)
    rhs_dilation = tuple(rhs_dilation or (1,) * rank)
    if (jax.default_backend() != 'cpu' or feature_group_count != 1 or batch_group_count != 1
            or any(d != 1 for d in lhs_dilation) or preferred_element_type is not None
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            != channels_last_dimension_numbers(lhs.ndim)):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    if isinstance(padding, str):
        window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:rank], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(window_strides), padding, rhs_dilation, precision)


class Conv(nn.Conv):
    """nn.Conv (same parameters, names and values) through `conv_general_dilated`: its
    gradients stay fast inside `lax.scan` on XLA's CPU backend (see the module docstring)."""

    conv_general_dilated: Any = conv_general_dilated
