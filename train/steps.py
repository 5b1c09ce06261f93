"""The compiled steps: one generic train step and eval step over a task, jitted on the mesh.

The batch comes sharded on the `data` axis; the state lies as `train.sharding.state_shardings`
says (replicated, or FSDP-sharded parameters); XLA inserts the gradient all-reduce and any
parameter gathers. The state argument is donated, so its buffers are reused for the new state.
Around every task's update the step adds the same three things: gradient accumulation over
micro-batches (optax.MultiSteps), the parameters' moving average, and the non-finite policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from train.ema import ema_update
from train.optim import accumulated_update
from train.progress import PREEMPT_KEY
from train.sharding import DATA_AXIS, batch_sharding, replicated, state_shardings
from train.state import TrainState

StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def init_train_state(
    task: Any,
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    *,
    ema: bool = False,
    param_sharding: Sequence[Sequence[str]] = (),
    fsdp_min_size: int = 0,
) -> TrainState:
    """Initialises parameters, model state, optimiser state (and the EMA, a copy of the
    parameters), laid out on the mesh by the `param_sharding` rules (default: replicated)."""

    def init(rng: jax.Array) -> TrainState:
        init_rng, run_rng = jax.random.split(rng)
        variables = dict(task.init_variables(init_rng))
        params = variables.pop('params')
        for sown in ('intermediates', 'aux_logits'):  # sown values are outputs, not state
            variables.pop(sown, None)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            opt_state=tx.init(params),
            rng=run_rng,
            ema_params=params if ema else None,
        )

    key = jax.random.PRNGKey(seed)
    shardings = state_shardings(jax.eval_shape(init, key), mesh, param_sharding, fsdp_min_size)
    return jax.jit(init, out_shardings=shardings)(key)


def split_micro_batches(
    batch: dict[str, jax.Array], count: int, mesh: Mesh
) -> dict[str, jax.Array]:
    """(B, ...) -> (count, B / count, ...), micro-batch m holding rows m, m + count, ...: each
    one spread over every device, as the full batch was."""

    def split(x):
        micro = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            micro, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
        )

    return jax.tree.map(split, batch)


def gradient_update(
    task: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    grad_accum_steps: int,
    state: TrainState,
    batch: dict[str, jax.Array],
):
    """forward + backward + optimiser update of the task's loss. With accumulation the micro-
    batches run in a scan that sums their gradients; `tx` is then an optax.MultiSteps, and
    `accumulated_update` applies its inner optimiser once to the mean (the mean loss as its
    `value`)."""
    grad_fn = jax.value_and_grad(task.train_loss, has_aux=True)
    if grad_accum_steps == 1:
        (loss, (model_state, metrics)), grads = grad_fn(
            state.params, state.model_state, batch, state.step_rng()
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
    else:
        # The parameters stay outside the loop (loop-invariant): only the gradient sum and the
        # model state are carried; the optimiser runs once, on the mean.
        def micro_step(carry, micro):
            model_state, grad_sum = carry
            micro_batch, index = micro
            (_, (model_state, metrics)), grads = grad_fn(
                state.params, model_state, micro_batch, jax.random.fold_in(state.step_rng(), index)
            )
            return (model_state, jax.tree.map(jnp.add, grad_sum, grads)), metrics

        micro_batches = split_micro_batches(batch, grad_accum_steps, mesh)
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (model_state, grad_sum), metrics = jax.lax.scan(
            micro_step,
            (state.model_state, zeros),
            (micro_batches, jnp.arange(grad_accum_steps)),
        )
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        loss = metrics['loss']
        grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
        updates, opt_state = accumulated_update(
            tx, grads, state.opt_state, state.params, value=loss
        )
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
    new_state = state.replace(
        step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
    )
    return new_state, dict(
        metrics,
        grad_norm=grad_norm,
        loss_finite=jnp.isfinite(loss),
        grads_finite=jnp.isfinite(grad_norm),
    )


def make_train_step(
    task: Any,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    skip_nonfinite: bool,
    state_sharding: Any = None,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
) -> StepFn:
    """The jitted train step around `task.update` (the generic gradient update, or a task's
    own, e.g. the GAN's two networks). Metrics include `loss_finite` / `grads_finite` so the
    loop can stop at the exact step; with `skip_nonfinite` such an update is dropped (only the
    step counter moves). `state_sharding` is the state's layout (default: replicated).
    A batch column PREEMPT_KEY (each process's preemption flag, multi-process runs) is not
    given to the task: the step returns it reduced over every device as `metrics[PREEMPT_KEY]`,
    the same value in every process."""

    def update(state, batch):
        return task.update(state, batch, tx=tx, mesh=mesh, grad_accum_steps=grad_accum_steps)

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        batch = dict(batch)
        preempt = batch.pop(PREEMPT_KEY, None)
        new_state, metrics = update(state, batch)
        if preempt is not None:
            metrics = dict(metrics, **{PREEMPT_KEY: jnp.any(preempt)})
        if ema_decay > 0:
            new_state = new_state.replace(
                ema_params=ema_update(state.ema_params, new_state.params, ema_decay, state.step)
            )
        if skip_nonfinite:
            keep_old = jnp.logical_not(metrics['loss_finite'] & metrics['grads_finite'])
            new_state = jax.tree.map(
                lambda old, new: jnp.where(keep_old, old, new),
                state.replace(step=state.step + 1),
                new_state,
            )
        return new_state, metrics

    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )


def make_eval_step(
    task: Any, mesh: Mesh, state_sharding: Any = None
) -> Callable[..., dict[str, jax.Array]]:
    """Per-batch sums of the task's eval quantities (masked examples excluded)."""

    def eval_step(state: TrainState, batch: dict[str, jax.Array]):
        return task.eval_sums(state.params, state.model_state, batch)

    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    return jax.jit(
        eval_step,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
