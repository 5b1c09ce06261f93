"""The one FLOP counter: what a model or a step costs, for the summary, the scaling study and
the benchmarks alike.

`loop_corrected_flops` takes XLA's cost analysis of the compiled function, which counts a
multiply-add as two FLOPs and skips the taps of a convolution that fall on padding. XLA's
analysis counts the body of a loop (`scan`, `while`) once, not once per iteration; the count
walks the traced program (jaxpr) for `scan`s, compiles each body on its own and adds the
iterations XLA left out, nested loops included. Whether the installed XLA counts loop bodies
once is measured, not assumed (`xla_counts_loop_body_once`), so the correction cannot
double-count on a newer XLA. A `while` loop whose trip count is only known at run time cannot
be corrected; it is reported in `FlopCount.uncorrected_loops`. Programs are traced with XLA's
convolutions (the kernel switch): XLA counts custom calls, such as oneDNN's, as free.

The analytic counts (`dense_flops`, `conv_flops`, `transformer_train_flops`,
`analytic_forward_flops`) are the check on XLA's numbers: a Dense and a Conv layer match
exactly, a Transformer's train step is 6·N·tokens plus the attention matrix products
(docs/scaling.md compares them on the zoo).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun

from nets.kernels import onednn_conv, switch


def sub_jaxprs(eqn: Any) -> list[Any]:
    """The jaxprs an equation calls (pjit, custom_jvp/vjp, remat, scan, ...)."""
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(item, 'jaxpr') and hasattr(item, 'consts'):  # ClosedJaxpr
                found.append(item.jaxpr)
            elif hasattr(item, 'eqns') and hasattr(item, 'invars'):  # Jaxpr
                found.append(item)
    return found


def onednn_calls_in(jaxpr: Any) -> int:
    """How many oneDNN convolution passes and products `jaxpr` (a Jaxpr or ClosedJaxpr) and the
    jaxprs it calls run (e.g. to check that a program traced for a FLOP count used XLA's)."""
    jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
    return sum(
        (
            eqn.primitive.name == 'ffi_call'
            and eqn.params.get('target_name')
            in (*onednn_conv.TARGETS.values(), onednn_conv.MATMUL_TARGET)
        )
        + sum(onednn_calls_in(sub) for sub in sub_jaxprs(eqn))
        for eqn in jaxpr.eqns
    )


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call of a compiled function (multiply-add = 2)."""

    xla: float  # XLA's cost analysis as it stands: every loop body counted once
    loop_correction: float  # FLOPs of the loop iterations XLA did not count
    uncorrected_loops: int  # while loops with a trip count unknown at compile time

    @property
    def total(self) -> float:
        return self.xla + self.loop_correction


def _cost_flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jaxlibs return one dict per device
        analysis = analysis[0]
    return float(analysis.get('flops', 0.0))


def _abstract(value: Any) -> Any:
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape, value.dtype)
    return jax.ShapeDtypeStruct(np.shape(value), jax.numpy.result_type(value))


def _xla_flops_of_jaxpr(closed: Any) -> float:
    args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return _cost_flops(jax.jit(jaxpr_as_fun(closed)).lower(*args).compile())


@functools.cache
def xla_counts_loop_body_once() -> bool:
    """Whether this XLA's cost analysis counts a loop body once whatever the trip count: a scan
    of 4 and of 8 matrix products compared."""

    def product_chain(length: int) -> float:
        def chain(x: jax.Array, w: jax.Array) -> jax.Array:
            return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=length)[0]

        spec = jax.ShapeDtypeStruct((8, 32), jnp.float32)
        weight = jax.ShapeDtypeStruct((32, 32), jnp.float32)
        return _cost_flops(jax.jit(chain).lower(spec, weight).compile())

    short, long = product_chain(4), product_chain(8)
    return long < 1.5 * short


def _counted_iterations(length: int, unroll: Any) -> int:
    """Iterations of a scan that appear in XLA's program: the unrolled copies of the body."""
    if unroll is True:
        return length
    return min(max(int(unroll), 1), length)


def _loop_correction(jaxpr: Any, counts_once: bool) -> tuple[float, int]:
    """(FLOPs XLA left out of `jaxpr`'s loops, number of loops that could not be corrected)."""
    correction, uncorrected = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == 'scan':
            body = eqn.params['jaxpr']
            length = int(eqn.params['length'])
            counted = _counted_iterations(length, eqn.params.get('unroll', 1))
            inner, inner_uncorrected = _loop_correction(body.jaxpr, counts_once)
            uncorrected += inner_uncorrected
            if counts_once:
                # XLA saw `counted` copies of the body, each with its inner loops once; the
                # loop really costs length·(body + inner loops' missing iterations).
                body_flops = _xla_flops_of_jaxpr(body)
                correction += (length - counted) * body_flops + length * inner
        elif name == 'while':
            uncorrected += 1
        elif name == 'cond':
            # One branch runs: the correction of the most expensive one bounds it.
            branch_corrections = [
                _loop_correction(b.jaxpr, counts_once) for b in eqn.params['branches']
            ]
            correction += max(c for c, _ in branch_corrections)
            uncorrected += max(u for _, u in branch_corrections)
        else:
            for sub in sub_jaxprs(eqn):
                c, u = _loop_correction(sub, counts_once)
                correction += c
                uncorrected += u
    return correction, uncorrected


def loop_corrected_flops(fn: Callable[..., Any], *args: Any, compiled: Any = None) -> FlopCount:
    """FLOPs of one call of `fn(*args)` (args may be `jax.ShapeDtypeStruct`s).

    `fn` may be a jitted function with shardings; the count is then XLA's count for one
    device's program, so count on a one-device mesh to get the whole step. `compiled`: `fn`
    already compiled for these arguments (saves compiling it again; one compiled with XLA's
    convolutions and products, under `nets.kernels.switch.use(conv='xla', matmul='xla')`).
    """
    abstract_args = jax.tree.map(_abstract, args)
    # XLA counts a custom call as no FLOPs: the count traces the program with XLA's
    # convolutions and products, not oneDNN's (nets/kernels/onednn_conv.py, onednn_matmul.py).
    with switch.use(conv='xla', matmul='xla'):
        closed = jax.make_jaxpr(fn)(*abstract_args)
        if onednn_calls_in(closed):
            raise ValueError(
                'the function was traced with oneDNN convolutions before (JAX reuses '
                'that trace); count a fresh function, e.g. a new make_train_step'
            )
        if compiled is None:
            jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
            compiled = jitted.lower(*abstract_args).compile()
    xla = _cost_flops(compiled)
    correction, uncorrected = _loop_correction(closed.jaxpr, xla_counts_loop_body_once())
    return FlopCount(xla=xla, loop_correction=correction, uncorrected_loops=uncorrected)


def forward_flops_per_example(model: Any, example_shape: Sequence[int]) -> float:
    """FLOPs of one eval-mode forward pass of `model` per example (batch 1, loops corrected)."""
    shape = (1, *example_shape)
    variables = jax.eval_shape(
        lambda: model.init(
            {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
            jnp.zeros(shape),
            train=False,
        )
    )
    count = loop_corrected_flops(
        lambda v, x: model.apply(v, x, train=False),
        variables,
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    return count.total


def dense_flops(batch: int, in_features: int, out_features: int, *, bias: bool = True) -> int:
    """A Dense layer's forward FLOPs: 2·B·in·out for the product, B·out for the bias."""
    return 2 * batch * in_features * out_features + (batch * out_features if bias else 0)


def _valid_taps(
    size: int, kernel: int, stride: int, padding: str | tuple[int, int], dilation: int = 1
) -> tuple[int, int]:
    """(output size, kernel taps over all output positions that land inside the input) for one
    spatial dimension; taps on padding cost nothing, as in XLA's count."""
    span = (kernel - 1) * dilation + 1
    if padding == 'VALID':
        low = high = 0
    elif padding == 'SAME':
        out = -(-size // stride)
        total = max((out - 1) * stride + span - size, 0)
        low, high = total // 2, total - total // 2
    else:
        low, high = padding
    out = (size + low + high - span) // stride + 1
    taps = 0
    for position in range(out):
        start = position * stride - low
        taps += sum(1 for k in range(kernel) if 0 <= start + k * dilation < size)
    return out, taps


def conv_flops(
    batch: int,
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    in_features: int,
    out_features: int,
    *,
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = 'SAME',
    feature_group_count: int = 1,
    kernel_dilation: Sequence[int] | None = None,
    bias: bool = True,
) -> int:
    """A convolution's forward FLOPs: 2 per multiply-add over the kernel taps that land on the
    input (not on padding), times (in_features / groups) · out_features, plus the bias add."""
    strides = tuple(strides) if strides is not None else (1,) * len(input_size)
    dilations = tuple(kernel_dilation) if kernel_dilation is not None else (1,) * len(input_size)
    pads = [padding] * len(input_size) if isinstance(padding, str) else list(padding)
    outputs, taps = 1, 1
    for size, kernel, stride, pad, dilation in zip(
        input_size, kernel_size, strides, pads, dilations
    ):
        out, valid = _valid_taps(size, kernel, stride, pad, dilation)
        outputs *= out
        taps *= valid
    macs = batch * taps * (in_features // feature_group_count) * out_features
    return 2 * macs + (batch * outputs * out_features if bias else 0)


def _matmul_conv_flops(jaxpr: Any) -> float:
    """Multiply-add FLOPs (x2) of every matrix product and convolution in `jaxpr`, from their
    shapes alone; scan bodies count once per iteration."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == 'dot_general':
            (lhs_contract, _), _ = eqn.params['dimension_numbers']
            lhs_shape = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[d] for d in lhs_contract]))
            total += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * contracted
        elif name == 'conv_general_dilated':
            if any(d != 1 for d in eqn.params['lhs_dilation']):
                raise ValueError(
                    'analytic counts cover forward convolutions only (no input '
                    'dilation); count the forward pass and scale it'
                )
            lhs_spec, rhs_spec, out_spec = eqn.params['dimension_numbers']
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            total += conv_flops(
                batch=lhs[lhs_spec[0]],
                input_size=[lhs[d] for d in lhs_spec[2:]],
                kernel_size=[rhs[d] for d in rhs_spec[2:]],
                in_features=lhs[lhs_spec[1]],
                out_features=out[out_spec[1]],
                strides=eqn.params['window_strides'],
                padding=[tuple(p) for p in eqn.params['padding']],
                feature_group_count=eqn.params['feature_group_count'],
                kernel_dilation=eqn.params['rhs_dilation'],
                bias=False,
            )
        elif name == 'scan':
            total += int(eqn.params['length']) * _matmul_conv_flops(eqn.params['jaxpr'].jaxpr)
        elif name == 'cond':
            total += max(_matmul_conv_flops(b.jaxpr) for b in eqn.params['branches'])
        else:
            total += sum(_matmul_conv_flops(sub) for sub in sub_jaxprs(eqn))
    return total


def analytic_forward_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs of the matrix products and convolutions of `fn(*args)` counted from their shapes
    (multiply-add = 2, padding taps excluded, loops once per iteration): the analytic count of
    a forward pass, independent of XLA. A train step costs about three times this (the
    backward pass takes one product for the input gradient and one for the weight gradient)."""
    with switch.use(conv='xla', matmul='xla'):  # lax convolutions, whose shapes it reads
        closed = jax.make_jaxpr(fn)(*jax.tree.map(_abstract, args))
    return _matmul_conv_flops(closed.jaxpr)


def transformer_train_flops(
    matmul_params: int, tokens: int, *, num_layers: int = 0, context: int = 0, width: int = 0
) -> float:
    """Train-step FLOPs of a Transformer: 6·N per token (2·N forward, 4·N backward, N the
    parameters of the matrix products), plus 3 × 4·context·width per token and layer for the
    attention logits and the weighted sum (Kaplan et al. 2020 write 2·n_layer·n_ctx·d_attn for
    the forward logits alone; the value product costs as much again)."""
    attention = 12 * num_layers * context * width
    return float(tokens) * (6 * matmul_params + attention)


def matmul_params(params: Any) -> int:
    """Parameters that enter matrix products: every kernel with two or more dimensions (biases,
    norm scales, position tables and class tokens excluded)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = str(getattr(path[-1], 'key', path[-1]))
        if name == 'kernel' and len(leaf.shape) >= 2:
            total += int(np.prod(leaf.shape))
    return total
