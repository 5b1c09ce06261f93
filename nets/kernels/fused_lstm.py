"""The LSTM's equations, and a whole LSTM sequence as one function with the backward pass cuDNN
and oneDNN use.

Differentiating a cell scanned over time, JAX accumulates the weight gradients inside the
backward loop: at every step the products x_tᵀ·dz_t and h_{t-1}ᵀ·dz_t (batch-deep, so slow) are
added into (in, 4H) and (H, 4H) buffers. `lstm_sequence`'s backward loop carries only the state
gradients and stacks the pre-activation gradients dz_t, one product dz_t·W_hᵀ per step; the
weight, bias and input gradients are then single products over all T·B rows at once. The
forward loop is the cell's step (`lstm_update`, which `nets.layers.recurrent.LSTMCell` also runs),
keeping the gate activations, the previous c and the previous h for the backward pass (what
it gains on the CPU: docs/speed.md).

Low precision: weights are cast to `dtype` once, products accumulate in float32 (as
`nets.kernels.mixed_precision`), the state and the gate arithmetic stay float32; the weight
gradients come back in the parameters' own dtype, summed in float32.
"""

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nets.kernels.mixed_precision import LOW_PRECISION, float32_product, matmul

Dtype = Any


def _as_bits(x: jax.Array) -> jax.Array:
    """A 2-byte float array viewed as uint16, others unchanged. XLA's CPU backend has no
    bfloat16 dynamic-update-slice: stacking a scan's bfloat16 output, it converts the whole
    stacked buffer to float32 and back at every step; the same bits as uint16 are written in
    place."""
    return lax.bitcast_convert_type(x, jnp.uint16) if x.dtype in LOW_PRECISION else x


def _from_bits(x: jax.Array, dtype: Dtype) -> jax.Array:
    """Undoes `_as_bits` for an array that was `dtype`."""
    return lax.bitcast_convert_type(x, dtype) if x.dtype == jnp.uint16 else x


def lstm_update(
    c: jax.Array, x: jax.Array, h: jax.Array, w_x: jax.Array, w_h: jax.Array, b: jax.Array
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
    """One LSTM step from the previous cell state c (float32) and the input x and previous
    hidden state h, both already in the compute dtype of the weights. Returns (c', h', gates),
    gates = (i, f, g, o), each (..., H) float32 (kept apart: concatenating them for the backward
    pass measured slower)."""
    z = (matmul(x, w_x) + matmul(h, w_h) + b).astype(c.dtype)
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    return c_new, h_new, (i, f, g, o)


def _forward(
    w_x: jax.Array,
    w_h: jax.Array,
    b: jax.Array,
    carry: tuple[jax.Array, jax.Array],
    xs: jax.Array,
    mask: jax.Array,
    reverse: bool,
    unroll: int,
    dtype: Dtype,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array, tuple[jax.Array, ...]]:
    w_x, w_h, b = w_x.astype(dtype), w_h.astype(dtype), b.astype(dtype)

    def step(carry, inputs):
        c, h = carry
        x, keep = inputs
        h_in = h.astype(dtype)
        c_new, h_new, gates = lstm_update(c, x, h_in, w_x, w_h, b)
        keep = keep[:, None]
        new_carry = (jnp.where(keep, c_new, c), jnp.where(keep, h_new.astype(h.dtype), h))
        y = jnp.where(keep, h_new, 0).astype(dtype)
        return new_carry, (_as_bits(y), c, _as_bits(h_in), gates)

    carry, (ys, cs_prev, hs_prev, gates) = lax.scan(
        step, carry, (xs, mask), reverse=reverse, unroll=unroll
    )
    low = jnp.dtype(dtype)
    return carry, _from_bits(ys, low), (cs_prev, _from_bits(hs_prev, low), gates)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def lstm_sequence(
    w_x: jax.Array,
    w_h: jax.Array,
    b: jax.Array,
    carry: tuple[jax.Array, jax.Array],
    xs: jax.Array,
    mask: jax.Array,
    reverse: bool = False,
    unroll: int = 1,
    dtype: Dtype = jnp.float32,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """An LSTM over time-major `xs` (T, B, in) from `carry` = (c, h), each (B, H): returns the
    final (c, h) and the outputs (T, B, H) in `dtype`. Kernels w_x (in, 4H), w_h (H, 4H), bias
    (4H,), gates in the order i, f, g, o. `mask` (T, B) bool: a False step keeps the carry and
    outputs zeros. `reverse` reads the sequence from its end."""
    carry, ys, _ = _forward(w_x, w_h, b, carry, xs, mask, reverse, unroll, dtype)
    return carry, ys


def _lstm_sequence_fwd(w_x, w_h, b, carry, xs, mask, reverse, unroll, dtype):
    final, ys, saved = _forward(w_x, w_h, b, carry, xs, mask, reverse, unroll, dtype)
    return (final, ys), (w_x, w_h, b, carry, xs, mask, saved)


def _lstm_sequence_bwd(reverse, unroll, dtype, residuals, cotangents):
    w_x, w_h, b, carry0, xs, mask, (cs_prev, hs_prev, gates) = residuals
    (dc_final, dh_final), dys = cotangents
    w_h_low = w_h.astype(dtype)

    def step(d_carry, inputs):
        dc_out, dh_out, d_b = d_carry
        dy, c_prev, (i, f, g, o), keep = inputs
        keep = keep[:, None]
        # A kept step passes its carry's cotangent to the new state; a masked one to the old.
        dh = jnp.where(keep, dh_out + dy.astype(jnp.float32), 0)
        dc_in = jnp.where(keep, dc_out, 0)
        tanh_c = jnp.tanh(f * c_prev + i * g)
        dc = dc_in + dh * o * (1 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * c_prev * f * (1 - f),
                dc * i * (1 - g * g),
                dh * tanh_c * o * (1 - o),
            ],
            axis=-1,
        )
        dz_low = dz.astype(dtype)  # the bfloat16 step's rounding, as matmul's VJP
        dh_prev = float32_product(dz_low, w_h_low, ((1,), (1,))) + jnp.where(keep, 0, dh_out)
        dc_prev = dc * f + jnp.where(keep, 0, dc_out)
        # The bias gradient is summed here, in float32, so that only the products' operand
        # (dz in the compute dtype, half the bytes in bfloat16) is stacked.
        return (dc_prev, dh_prev, d_b + dz.sum(0)), _as_bits(dz_low)

    d_final = (
        dc_final.astype(jnp.float32),
        dh_final.astype(jnp.float32),
        jnp.zeros(b.shape, jnp.float32),
    )
    (dc0, dh0, d_b), dzs_bits = lax.scan(
        step, d_final, (dys, cs_prev, gates, mask), reverse=not reverse, unroll=unroll
    )
    dzs_low = _from_bits(dzs_bits, jnp.dtype(dtype))
    # Contracted over (time, batch) as two axes, not one reshaped axis: on a data-parallel mesh
    # the batch axis is sharded, and merging it with time would all-gather the operands.
    d_w_x = float32_product(xs, dzs_low, ((0, 1), (0, 1)))
    d_w_h = float32_product(hs_prev, dzs_low, ((0, 1), (0, 1)))
    d_xs = float32_product(dzs_low, w_x.astype(dtype), ((2,), (1,)))
    d_carry0 = (dc0.astype(carry0[0].dtype), dh0.astype(carry0[1].dtype))
    return (
        d_w_x.astype(w_x.dtype),
        d_w_h.astype(w_h.dtype),
        d_b.astype(b.dtype),
        d_carry0,
        d_xs.astype(xs.dtype),
        None,
    )


lstm_sequence.defvjp(_lstm_sequence_fwd, _lstm_sequence_bwd)
