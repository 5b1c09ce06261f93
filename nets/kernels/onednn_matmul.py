"""Matrix products on oneDNN for JAX's CPU backend: the GEMM kernels PyTorch's CPU matmuls run.

XLA's CPU backend runs products on Eigen's or YNNPACK's kernels and first copies an operand whose
contracted axes are not where its kernels want them: a weight gradient xᵀ·dy (contracted over
the batch) transposes x in a separate pass through memory. oneDNN reads either layout through
strides, and its bfloat16 kernels reach PyTorch's rate (docs/speed.md).

`product(lhs, rhs, contracting)` is `lax.dot_general` without batch axes and with a float32
result, computed by the `OnednnMatmul` FFI handler (nets/kernels/native/onednn_matmul.cc, built
into the oneDNN library by nets/kernels/onednn_conv.py). `supports` says which products it
takes: both operands float32 or both bfloat16, readable as matrices (`plan`: lhs's contracted
axes its leading or trailing ones, rhs's likewise, in the same order), at least MIN_FLOPS.
`nets.kernels.mixed_precision.float32_product` sends the bfloat16 ones here (the dense layers'
products and their gradients, the fused LSTM's gradient products) where `use_for_trace` says so.

Where: the kernel switch's `matmul` ('auto': the CPU backend with one device in the process and
the library built; 'onednn': the CPU wherever the library builds; 'xla': never). The handler has
no partitioning rule, so on a multi-device mesh XLA would gather its operands: 'auto' leaves
those programs to XLA's products, and so does the trainer (train/runtime.py,
`matmul_backend_choice`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nets.kernels import onednn_conv, switch

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# Smaller products stay XLA's: each call wakes oneDNN's OpenMP threads beside XLA's own, which
# cost more than oneDNN's faster kernel gains on ViT-Ti/4's 0.1-0.3 GFLOP micro-batch products
# (step 1.50 -> 1.70 s) and gained on the LSTM's 2-17 GFLOP gradient products (docs/speed.md).
MIN_FLOPS = 1e9


class MatrixPlan(NamedTuple):
    """How the handler reads two operands as matrices (see onednn_matmul.cc)."""

    split_a: int  # lhs's first `split_a` axes are its matrix rows
    split_b: int
    trans_a: bool  # lhs is stored (K, M)
    trans_b: bool  # rhs is stored (N, K)


def plan(
    lhs_ndim: int, rhs_ndim: int, lhs_contract: Sequence[int], rhs_contract: Sequence[int]
) -> MatrixPlan | None:
    """The matrix reading of a product contracting `lhs_contract` with `rhs_contract` (no batch
    axes), or None where the contracted axes are not a leading or trailing run of each operand in
    the same order (dot_general's result, lhs's kept axes then rhs's, is then the (M, N)
    matrix)."""
    lhs_contract, rhs_contract = tuple(lhs_contract), tuple(rhs_contract)
    count = len(lhs_contract)
    if count == 0 or count != len(rhs_contract):
        return None
    if lhs_contract == tuple(range(lhs_ndim - count, lhs_ndim)):
        split_a, trans_a = lhs_ndim - count, False
    elif lhs_contract == tuple(range(count)):
        split_a, trans_a = count, True
    else:
        return None
    if rhs_contract == tuple(range(count)):
        split_b, trans_b = count, False
    elif rhs_contract == tuple(range(rhs_ndim - count, rhs_ndim)):
        split_b, trans_b = rhs_ndim - count, True
    else:
        return None
    return MatrixPlan(split_a, split_b, trans_a, trans_b)


def supports(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[Sequence[int], Sequence[int]]
) -> bool:
    """Whether oneDNN should compute this product: operands both float32 or both bfloat16,
    readable as matrices (`plan`), and at least MIN_FLOPS."""
    if lhs.dtype != rhs.dtype or jnp.dtype(lhs.dtype) not in DTYPES:
        return False
    if plan(lhs.ndim, rhs.ndim, *contracting) is None:
        return False
    kept = math.prod(rhs.shape[a] for a in range(rhs.ndim) if a not in contracting[1])
    return 2 * lhs.size * kept >= MIN_FLOPS


def use_for_trace(dtype: jnp.dtype | None = None) -> bool:
    """Whether a product (in `dtype`) traced now may run on oneDNN, as the kernel switch says:
    'xla' no; 'onednn' where the library is built (an error where it cannot be); 'auto' on the
    CPU backend with one device in the process, where the library is built. A dtype this CPU's
    oneDNN has no kernels for (`onednn_conv.runnable_dtypes`) stays on XLA's either way."""
    backend = switch.matmul_backend()
    if backend == 'xla':
        return False
    if backend == 'auto' and (jax.default_backend() != 'cpu' or jax.device_count() != 1):
        return False
    problem = onednn_conv.unavailable_reason()
    if problem is None:
        return dtype is None or onednn_conv.runs(dtype, backend)
    if backend == 'onednn':
        raise onednn_conv.OnednnUnavailable(
            f"the matmul kernel switch asks for 'onednn', but: {problem}"
        )
    return False


def product(
    lhs: jax.Array, rhs: jax.Array, contracting: tuple[Sequence[int], Sequence[int]]
) -> jax.Array:
    """The float32 product of `lhs` and `rhs` contracted over `contracting` (dot_general's, no
    batch axes) on oneDNN; callers ask `supports` first (it adds the size threshold). Not
    differentiable by itself: callers give it their own VJP (nets.kernels.mixed_precision)."""
    matrices = plan(lhs.ndim, rhs.ndim, *contracting)
    if matrices is None or lhs.dtype != rhs.dtype or jnp.dtype(lhs.dtype) not in DTYPES:
        raise ValueError(
            f'onednn_matmul.product: {lhs.dtype}{lhs.shape} x {rhs.dtype}{rhs.shape} over '
            f'{contracting} is not a float32 or bfloat16 product of two matrices'
        )
    lhs_kept = [lhs.shape[a] for a in range(lhs.ndim) if a not in contracting[0]]
    rhs_kept = [rhs.shape[a] for a in range(rhs.ndim) if a not in contracting[1]]
    result = jax.ShapeDtypeStruct((*lhs_kept, *rhs_kept), jnp.float32)
    return jax.ffi.ffi_call(onednn_conv.MATMUL_TARGET, result)(
        lhs,
        rhs,
        split_a=np.int64(matrices.split_a),
        split_b=np.int64(matrices.split_b),
        trans_a=np.int64(matrices.trans_a),
        trans_b=np.int64(matrices.trans_b),
        threads=np.int64(onednn_conv.cores()),
    )
