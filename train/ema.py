"""Exponential moving average of parameters: one update rule for every task that keeps one
(the generic `config.ema_decay` of the trainer, the diffusion task's sampling weights)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay_at(decay: float, updates: jax.Array) -> jax.Array:
    """TensorFlow's warm-up: min(decay, (1 + n) / (10 + n)) after n updates, so the average
    is not dominated by the random initialisation early in training."""
    n = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(average: Any, params: Any, decay: float, updates: jax.Array) -> Any:
    """average ← d·average + (1 − d)·params with d = ema_decay_at(decay, updates)."""
    d = ema_decay_at(decay, updates)
    return jax.tree.map(
        lambda e, p: (d * e + (1.0 - d) * jax.lax.stop_gradient(p)).astype(e.dtype), average, params
    )
