"""Batch normalisation in training mode with a hand-written backward pass.

`BatchNorm` is flax's nn.BatchNorm (same parameters, statistics, names and values); in training
mode over the last axis it normalises through `normalize_batch`, whose gradient is written out:
it saves the input as it came (bfloat16 in a bfloat16 model) with the per-channel mean and
inverse deviation, and the backward pass reads the input and the cotangent in per-channel sums
(the bias gradient, and the scale gradient as sum(dy * x) - mean * sum(dy)) and one element-wise
pass for the input gradient, recomputing the normalised input there. Differentiating flax's
version instead keeps float32 copies of whole activations (the input converted, the input minus
its mean), each written to and read back from memory, where batch norm is memory-bound.
A `jax.custom_vjp`: reverse mode only (jax.jvp through a training-mode BatchNorm raises).
Every other configuration (running averages, masks, cross-device axis names, other feature
axes, the two-pass variance, float64 inputs) goes to flax's own code.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Input dtypes whose statistics flax computes in float32, as `normalize_batch` does.
FLOAT32_STATISTICS = tuple(jnp.dtype(t) for t in (jnp.float32, jnp.bfloat16, jnp.float16))


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel float32 mean and (biased) variance of `x` over all axes but the last, the
    variance as E[x^2] - E[x]^2 clipped at 0 (flax's `use_fast_variance`)."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    mean_square = jnp.mean(lax.square(x32), axes)
    return mean, jnp.maximum(0.0, mean_square - lax.square(mean))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize_batch(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, mean, var): `x` normalised with its own per-channel statistics over all axes but the
    last, times `scale` plus `bias` (float32 arithmetic, y in `dtype`), and those statistics
    (float32, the biased variance)."""
    y, mean, var, _ = _forward(x, scale, bias, epsilon, dtype)
    return y, mean, var


def _forward(x, scale, bias, epsilon, dtype):
    mean, var = _statistics(x)
    inv = lax.rsqrt(var + epsilon)
    y = (x.astype(jnp.float32) - mean) * (inv * scale.astype(jnp.float32)) + bias
    return y.astype(dtype), mean, var, inv


def _normalize_fwd(x, scale, bias, epsilon, dtype):
    y, mean, var, inv = _forward(x, scale, bias, epsilon, dtype)
    return (y, mean, var), (x, scale, bias, mean, inv)


def _normalize_bwd(epsilon, dtype, residuals, cotangents):
    del epsilon, dtype
    # The barrier keeps XLA from sharing `centered` with the forward pass's identical
    # expression, which would store it (float32) between the passes.
    x, scale, bias, mean, inv = residuals
    x, mean, inv = lax.optimization_barrier((x, mean, inv))
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    dbias = jnp.sum(dy32, axes)
    # sum(dy * (x - mean)) as two reductions of the inputs themselves: XLA's CPU backend runs
    # reductions on YNNPACK, which would otherwise need x - mean written out in float32.
    dscale = (jnp.sum(dy32 * x32, axes) - mean * dbias) * inv
    centered = x32 - mean
    # d/dx of y through x itself, the mean and the variance; then the statistics' own
    # cotangents (zero in a train step, where they only feed the running averages).
    gain = scale.astype(jnp.float32) * inv
    dx = gain * (dy32 - dbias / count - centered * (inv * dscale / count))
    dx = dx + dmean / count + centered * (2.0 * dvar / count)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


normalize_batch.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm whose training-mode normalisation over the last axis runs through
    `normalize_batch` (see the module docstring); the same parameters, statistics and results."""

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        if (
            nn.merge_param('use_running_average', self.use_running_average, use_running_average)
            or mask is not None
            or jnp.dtype(x.dtype) not in FLOAT32_STATISTICS
            or jnp.dtype(self.dtype or x.dtype) not in FLOAT32_STATISTICS
            or self.axis not in (-1, x.ndim - 1)
            or self.axis_name is not None
            or not (self.use_fast_variance and self.force_float32_reductions)
            or not (self.use_scale and self.use_bias)
            or self.is_initializing()
        ):
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        # Created as flax creates them (float32 statistics, the module's parameter inits).
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
        scale = self.param('scale', self.scale_init, features, self.param_dtype)
        bias = self.param('bias', self.bias_init, features, self.param_dtype)
        dtype = jnp.dtype(self.dtype or jnp.result_type(x, scale, bias))
        y, mean, var = normalize_batch(x, scale, bias, self.epsilon, dtype)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
