"""Low-precision products that accumulate in float32: the dense layers every model uses.

With `dtype=jnp.bfloat16` a model multiplies bfloat16 activations by bfloat16 weights. Asked for
a bfloat16 result, XLA's CPU backend converts both operands to float32 and multiplies there,
slower than a float32 product; asked for a float32 result (`preferred_element_type`), it runs
the chip's bfloat16 dot-product instructions (AVX512-BF16 through YNNPACK), about twice as fast
(docs/speed.md). GPUs and TPUs accumulate in float32
either way, so asking for it costs them nothing, and the sums of long dot products keep
float32's precision on every backend.

`dot_general` does that for the forward product and both products of its gradient (the
cotangent is rounded to the operands' dtype first, as a bfloat16 step would have it; JAX's own
rule would multiply a float32 cotangent by a bfloat16 operand, the slow float32 path).
Products of float32 (or mixed) operands, and products with batch dimensions, are plain
`lax.dot_general`: the result and its gradient are unchanged for float32 models.

`Dense` and `DenseGeneral` are Flax's layers with this product, parameter names, shapes and
initial values unchanged; `matmul` is `x @ w` with it (the recurrent cells). Their bias is added
by `add_bias`, whose gradient sums a low-precision cotangent in float32: JAX's own rule sums it in
bfloat16, which XLA's CPU backend emulates as a float32 sum rounded to bfloat16 after every
addition, a slow reduce-window (and a less exact sum).
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nets.kernels import onednn_matmul

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

DimensionNumbers = tuple[tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]]


def _accumulates_in_float32(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: DimensionNumbers, preferred_element_type: Any
) -> bool:
    (_, _), (lhs_batch, rhs_batch) = dimension_numbers
    return (
        preferred_element_type is None
        and jnp.dtype(lhs.dtype) in LOW_PRECISION
        and lhs.dtype == rhs.dtype
        and not lhs_batch
        and not rhs_batch
    )


def _xla_float32_product(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[tuple[int, ...], ...], precision: Any
) -> jax.Array:
    return lax.dot_general(
        lhs, rhs, (contracting, ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_float32_product(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[tuple[int, ...], ...], precision: Any
) -> jax.Array:
    return onednn_matmul.product(lhs, rhs, contracting)


def _onednn_forward(lhs, rhs, contracting, precision):
    return _onednn_float32_product(lhs, rhs, contracting, precision), (lhs, rhs)


def _onednn_backward(contracting, precision, residuals, g):
    # Only a second derivative differentiates the product itself (the layers' gradients are
    # products of their own, below): XLA's products serve it.
    _, vjp = jax.vjp(
        partial(_xla_float32_product, contracting=contracting, precision=precision), *residuals
    )
    return vjp(g)


_onednn_float32_product.defvjp(_onednn_forward, _onednn_backward)


def float32_product(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[tuple[int, ...], ...], precision: Any = None
) -> jax.Array:
    """The float32 result of a product without batch dimensions (low-precision operands
    accumulate in float32; float32 ones are a plain product). Large bfloat16 products run on
    oneDNN where the kernel switch allows (`onednn_matmul.supports`, `use_for_trace`), XLA's
    kernels elsewhere (float32 ones too: the LSTM's measured no faster on oneDNN)."""
    contracting = tuple(tuple(int(a) for a in axes) for axes in contracting)
    if (
        jnp.dtype(lhs.dtype) in LOW_PRECISION
        and onednn_matmul.supports(lhs, rhs, contracting)
        and onednn_matmul.use_for_trace(lhs.dtype)
    ):
        return _onednn_float32_product(lhs, rhs, contracting, precision)
    return _xla_float32_product(lhs, rhs, contracting, precision)


def _float32_accumulated(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[tuple[int, ...], ...], precision: Any
) -> jax.Array:
    return float32_product(lhs, rhs, contracting, precision).astype(lhs.dtype)


def _kept(ndim: int, contracted: Sequence[int]) -> list[int]:
    return [axis for axis in range(ndim) if axis not in contracted]


def _lhs_cotangent(
    g: jax.Array,
    rhs: jax.Array,
    lhs_ndim: int,
    lhs_contract: Sequence[int],
    rhs_contract: Sequence[int],
    precision: Any,
) -> jax.Array:
    """d lhs = g · rhs over rhs's kept axes, then lhs's axis order restored."""
    lhs_kept, rhs_kept = _kept(lhs_ndim, lhs_contract), _kept(rhs.ndim, rhs_contract)
    g_rhs_axes = tuple(range(len(lhs_kept), len(lhs_kept) + len(rhs_kept)))
    product = _float32_accumulated(g, rhs, (g_rhs_axes, tuple(rhs_kept)), precision)
    # product axes: lhs_kept (in order), then rhs's contracted axes in ascending order.
    rhs_contract_sorted = sorted(rhs_contract)
    position = [
        lhs_kept.index(axis)
        if axis in lhs_kept
        else len(lhs_kept) + rhs_contract_sorted.index(rhs_contract[list(lhs_contract).index(axis)])
        for axis in range(lhs_ndim)
    ]
    return jnp.transpose(product, position)


def _rhs_cotangent(
    g: jax.Array,
    lhs: jax.Array,
    rhs_ndim: int,
    lhs_contract: Sequence[int],
    rhs_contract: Sequence[int],
    precision: Any,
) -> jax.Array:
    """d rhs = lhs · g over lhs's kept axes, then rhs's axis order restored."""
    lhs_kept, rhs_kept = _kept(lhs.ndim, lhs_contract), _kept(rhs_ndim, rhs_contract)
    product = _float32_accumulated(
        lhs, g, (tuple(lhs_kept), tuple(range(len(lhs_kept)))), precision
    )
    # product axes: lhs's contracted axes in ascending order, then rhs_kept (in order).
    lhs_contract_sorted = sorted(lhs_contract)
    position = [
        len(lhs_contract) + rhs_kept.index(axis)
        if axis in rhs_kept
        else lhs_contract_sorted.index(lhs_contract[list(rhs_contract).index(axis)])
        for axis in range(rhs_ndim)
    ]
    return jnp.transpose(product, position)


def _make_product(lhs_contract: tuple[int, ...], rhs_contract: tuple[int, ...], precision: Any):
    @jax.custom_vjp
    def product(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return _float32_accumulated(lhs, rhs, (lhs_contract, rhs_contract), precision)

    def forward(lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return product(lhs, rhs), (lhs, rhs)

    def backward(
        residuals: tuple[jax.Array, jax.Array], g: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        lhs, rhs = residuals
        g = g.astype(lhs.dtype)
        return (
            _lhs_cotangent(g, rhs, lhs.ndim, lhs_contract, rhs_contract, precision),
            _rhs_cotangent(g, lhs, rhs.ndim, lhs_contract, rhs_contract, precision),
        )

    product.defvjp(forward, backward)
    return product


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: DimensionNumbers,
    precision: Any = None,
    preferred_element_type: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """`lax.dot_general`; bfloat16/float16 operands (no batch dimensions) accumulate in float32
    and return their own dtype, in the forward product and in both gradient products."""
    if kwargs or not _accumulates_in_float32(lhs, rhs, dimension_numbers, preferred_element_type):
        return lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )
    (lhs_contract, rhs_contract), _ = dimension_numbers
    lhs_contract = tuple(int(a) % lhs.ndim for a in lhs_contract)
    rhs_contract = tuple(int(a) % rhs.ndim for a in rhs_contract)
    return _make_product(lhs_contract, rhs_contract, precision)(lhs, rhs)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` for x (..., k) and a matrix w (k, n), with `dot_general`'s accumulation."""
    return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def _add_low_precision_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias


def _add_bias_fwd(y: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return y + bias, bias


def _add_bias_bwd(bias: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    lead = g.ndim - bias.ndim  # the axes bias was broadcast over, then its own size-1 ones
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(bias.shape) if n == 1 and g.shape[lead + i] != 1
    )
    d_bias = jnp.sum(g, axes, dtype=jnp.float32).reshape(bias.shape)
    return g, d_bias.astype(bias.dtype)


_add_low_precision_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias`, `bias` broadcast over y's leading axes (and its own size-1 axes); for
    low-precision operands of one dtype the bias gradient is summed in float32."""
    if jnp.dtype(y.dtype) in LOW_PRECISION and y.dtype == bias.dtype:
        return _add_low_precision_bias(y, bias)
    return y + bias


class Dense(nn.Dense):
    """`flax.linen.Dense` whose low-precision products accumulate in float32 (`dot_general`)
    and whose bias gradient is summed in float32 (`add_bias`)."""

    dot_general: Any = dot_general

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param(
            'kernel', self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = (
            self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = self.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), self.precision)
        return y if bias is None else add_bias(y, bias)


class DenseGeneral(nn.DenseGeneral):
    """`flax.linen.DenseGeneral` (without `batch_dims`) whose low-precision products accumulate
    in float32 and whose bias gradient is summed in float32."""

    dot_general: Any = dot_general

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.batch_dims:
            raise ValueError(
                f'DenseGeneral here takes no batch_dims (got {self.batch_dims!r}); use '
                'flax.linen.DenseGeneral for per-batch kernels'
            )
        features = tuple(self.features) if isinstance(self.features, Sequence) else (self.features,)
        axis = tuple(self.axis) if isinstance(self.axis, Sequence) else (self.axis,)
        axis = tuple(a % inputs.ndim for a in axis)
        contracted = tuple(inputs.shape[a] for a in axis)

        def kernel_init(rng, shape, dtype=jnp.float32):
            # Flax's: initialised as a (fan_in, fan_out) matrix, then reshaped.
            flat = (int(np.prod(contracted)), int(np.prod(features)))
            return jnp.reshape(self.kernel_init(rng, flat, dtype), shape)

        def bias_init(rng, shape, dtype=jnp.float32):
            return jnp.reshape(self.bias_init(rng, (int(np.prod(features)),), dtype), shape)

        kernel = self.param('kernel', kernel_init, contracted + features, self.param_dtype)
        bias = self.param('bias', bias_init, features, self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        kernel_axes = tuple(range(len(axis)))
        y = self.dot_general(inputs, kernel, ((axis, kernel_axes), ((), ())), self.precision)
        return y if bias is None else add_bias(y, bias)
