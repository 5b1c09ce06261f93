"""The compiled steps: one generic train step and eval step over a task, jitted on the mesh.

The batch comes sharded on the `data` axis, the state replicated; XLA inserts the gradient
all-reduce. The state argument is donated, so its buffers are reused for the new state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from train.sharding import batch_sharding, replicated
from train.state import TrainState

StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def init_train_state(task: Any, tx: optax.GradientTransformation, seed: int,
                     mesh: Mesh) -> TrainState:
    """Initialises parameters, model state and optimiser state, replicated on the mesh."""

    def init(rng: jax.Array) -> TrainState:
        init_rng, run_rng = jax.random.split(rng)
        variables = dict(task.init_variables(init_rng))
        params = variables.pop('params')
        for sown in ('intermediates', 'aux_logits'):  # sown values are outputs, not state
            variables.pop(sown, None)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                          opt_state=tx.init(params), rng=run_rng)

    return jax.jit(init, out_shardings=replicated(mesh))(jax.random.PRNGKey(seed))


def make_train_step(task: Any, tx: optax.GradientTransformation, mesh: Mesh, *,
                    skip_nonfinite: bool) -> StepFn:
    """forward + backward + optimiser update. Metrics include `finite` (loss and gradients) so
    the loop can stop at the exact step; with `skip_nonfinite` such an update is dropped."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        grad_fn = jax.value_and_grad(task.train_loss, has_aux=True)
        (loss, (model_state, metrics)), grads = grad_fn(
            state.params, state.model_state, batch, state.step_rng())
        grad_norm = optax.global_norm(grads)
        loss_finite = jnp.isfinite(loss)
        grads_finite = jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        new_state = state.replace(step=state.step + 1,
                                  params=optax.apply_updates(state.params, updates),
                                  model_state=model_state, opt_state=opt_state)
        if skip_nonfinite:
            keep_old = jnp.logical_not(loss_finite & grads_finite)
            new_state = jax.tree.map(lambda old, new: jnp.where(keep_old, old, new),
                                     state.replace(step=state.step + 1), new_state)
        metrics = dict(metrics, grad_norm=grad_norm, loss_finite=loss_finite,
                       grads_finite=grads_finite)
        return new_state, metrics

    step_fn = train_step
    if hasattr(task, 'train_step'):
        # A task with several networks and optimisers (the GAN's alternating D and G updates)
        # computes the whole update itself; jitting, sharding and donation stay the same.
        step_fn = functools.partial(task.train_step, tx=tx, skip_nonfinite=skip_nonfinite)

    return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_eval_step(task: Any, mesh: Mesh) -> Callable[..., dict[str, jax.Array]]:
    """Per-batch sums of the task's eval quantities (masked examples excluded)."""

    def eval_step(state: TrainState, batch: dict[str, jax.Array]):
        return task.eval_sums(state.params, state.model_state, batch)

    return jax.jit(eval_step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                   out_shardings=replicated(mesh))
