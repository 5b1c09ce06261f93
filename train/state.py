"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """step, parameters, non-parameter model state (batch-norm statistics), optimiser state,
    the run's base PRNG key and, when `config.ema_decay > 0`, the moving average of the
    parameters (None otherwise). Per-step keys are `fold_in(rng, step)`, so a resumed run draws the
    same dropout/augmentation randomness as an uninterrupted one."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None

    def step_rng(self, purpose: int = 0) -> jax.Array:
        """The key for this step (and a purpose, so separate uses never share a key)."""
        return jax.random.fold_in(jax.random.fold_in(self.rng, self.step), purpose)
