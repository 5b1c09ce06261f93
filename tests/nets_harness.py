"""What the model tests share: fast-compiling jit and keys, and one tiny compiled train step."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import nets
from nets.tools.flops import sub_jaxprs


def rng(seed: int) -> jax.Array:
    """A PRNG key for the tests. 'rbg' keys compile much faster on CPU than the default
    threefry (XLA spends seconds optimising threefry for every parameter of a ResNet init);
    the models work with either."""
    return jax.random.key(seed, impl='rbg')


def fast_jit(fn):
    """jax.jit tuned for compile time: these programs run once or twice on tiny inputs. XLA's
    backend optimisations and the CPU's MLIR fusion emitters are off (GoogLeNet's gradient
    compiles in 4 s instead of 17 s) and run no slower at this size."""
    return jax.jit(
        fn,
        compiler_options={
            'xla_backend_optimization_level': 0,
            'xla_cpu_use_fusion_emitters': False,
        },
    )


class TinyRun:
    """One tiny model, its variables and jitted train/eval functions (compiled once per case).
    Extra keyword flags (has_dropout, has_batch_norm, ...) are kept as attributes for the tests."""

    def __init__(self, name: str, overrides: dict[str, Any], shape: tuple[int, ...], **flags):
        self.name, self.overrides = name, overrides
        self.__dict__.update(flags)
        self.model = nets.create(name, **overrides)
        self.x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        self.variables = fast_jit(self.model.init)({'params': rng(1)}, self.x)
        self.eval_apply = fast_jit(functools.partial(self.model.apply, train=False))

        def loss(params, batch_stats, x, dropout_rng):
            variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
            logits, updates = self.model.apply(
                variables, x, train=True, rngs={'dropout': dropout_rng}, mutable=['batch_stats']
            )
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), (logits, updates)

        self.train_grad = fast_jit(jax.grad(loss, has_aux=True))

    def train(self, seed: int):
        return self.train_grad(
            self.variables['params'], self.variables.get('batch_stats', {}), self.x, rng(seed)
        )


def all_eqns(jaxpr) -> Iterator[Any]:
    """Every equation of `jaxpr` and of the jaxprs it calls (custom_vjp, pjit, scan, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in sub_jaxprs(eqn):
            yield from all_eqns(sub)


def heavy_op_operand_dtypes(jaxpr) -> list[set]:
    """The operand dtypes of every matrix product and convolution in `jaxpr` and the jaxprs it
    calls (the mixed-precision products sit inside custom_vjp calls; on the CPU, convolutions may
    be oneDNN's FFI calls, nets/kernels/onednn_conv.py)."""
    return [
        {jnp.dtype(v.aval.dtype) for v in eqn.invars}
        for eqn in all_eqns(jaxpr)
        if eqn.primitive.name in ('dot_general', 'conv_general_dilated', 'ffi_call')
    ]


def assert_products_in_bfloat16(closed_jaxpr: Any) -> None:
    """Every matrix product and convolution of a traced bfloat16 model multiplies bfloat16
    operands (whatever it accumulates in), not just casts its output."""
    heavy_ops = heavy_op_operand_dtypes(closed_jaxpr.jaxpr)
    assert heavy_ops and all(dtypes == {jnp.dtype(jnp.bfloat16)} for dtypes in heavy_ops), heavy_ops
