"""The one optax builder: optimiser, regularisers, clipping and learning-rate schedule from config.

The chain, in order (each piece only when configured):

    adaptive clipping (AGC) -> clip_by_global_norm -> L1 (+l1·sign(w)) -> coupled L2 (+wd·w)
    -> optimiser statistics (momentum / RMS / Adam moments) -> decoupled weight decay
    (+wd·w, AdamW-style) -> scale by -schedule(step) -> per-parameter lr multipliers
    -> reduce-on-plateau scale

wrapped, with gradient accumulation, in optax.MultiSteps: it averages k micro-batch gradients
and runs the chain once on their mean, so the schedule counts optimiser updates.

Coupled L2 goes through the optimiser's statistics like a loss term (PyTorch's `weight_decay`);
decoupled decay is added after them, so Adam does not rescale it (Loshchilov & Hutter). Both,
and L1, are masked off biases and normalisation parameters (every parameter with ndim <= 1) and
off the parameters config.optimizer.weight_decay_exclude names; AGC skips those of
config.optimizer.agc_exclude (the final classifier by default), and config.optimizer.lr_multipliers
scales the learning rate of the parameters it names (train/param_rules.py: regexes on parameter
paths, checked against the parameters when the optimiser is initialised).
The update always takes `value=loss` so that reduce-on-plateau can see the training loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from train import param_rules

Schedule = Callable[[jax.Array | int], jax.Array]


def decay_mask(params: Any) -> Any:
    """True for weights that regularisation applies to: kernels and embeddings, not biases or
    norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


class _L1State(NamedTuple):
    pass


def add_l1_penalty(strength: float, mask: Any = decay_mask) -> optax.GradientTransformation:
    """Adds strength·sign(w) to the gradient: the subgradient of strength·Σ|w| in the loss."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                'add_l1_penalty needs the parameters: call update(grads, state, params)'
            )
        updates = jax.tree.map(
            lambda g, p: g + strength * jnp.sign(p).astype(g.dtype), updates, params
        )
        return updates, state

    transform = optax.GradientTransformation(lambda params: _L1State(), update)
    return optax.masked(transform, mask)


def learning_rate_schedule(
    opt: ml_collections.ConfigDict,
    sched: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    total_steps: int,
) -> Schedule:
    """The per-step learning rate (before any reduce-on-plateau scaling)."""
    base = opt.learning_rate
    warmup_steps = int(round(sched.warmup_epochs * steps_per_epoch))
    decay_steps = max(1, total_steps - warmup_steps)
    every = max(1, int(round(sched.decay_every_epochs * steps_per_epoch)))
    if sched.name in ('constant', 'plateau'):
        main = optax.constant_schedule(base)
    elif sched.name == 'step':
        # e.g. Inception v1: "-4% every 8 epochs" = decay_factor 0.96 every 8 epochs, staircase.
        main = optax.exponential_decay(base, every, sched.decay_factor, staircase=True)
    elif sched.name == 'exponential':
        main = optax.exponential_decay(base, every, sched.decay_factor, staircase=False)
    elif sched.name == 'warmup_cosine':
        main = optax.cosine_decay_schedule(base, decay_steps, alpha=sched.end_factor)
    else:
        raise ValueError(
            f'unknown schedule {sched.name!r}; valid: constant, step, exponential, '
            'warmup_cosine, plateau'
        )
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, base, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'rmsprop', 'adam', 'adamw')
# Keys of config.optimizer that only some optimisers read -> {optimiser: default}. Left unset
# (None) a key takes its optimiser's default; set for an optimiser that does not read it, it is
# a config error, never silently ignored.
OPTIMIZER_SPECIFIC_KEYS = {
    'momentum': {'momentum': 0.9, 'nesterov': 0.9, 'rmsprop': 0.0},
    'b1': {'adam': 0.9, 'adamw': 0.9},
    'b2': {'adam': 0.999, 'adamw': 0.999},
    'eps': {'adam': 1e-8, 'adamw': 1e-8, 'rmsprop': 1e-8},
    'rms_decay': {'rmsprop': 0.9},
}


def check_optimizer_keys(opt: ml_collections.ConfigDict) -> None:
    """Raises ValueError for a set key the chosen optimiser does not read, naming those it
    does, and for a bad per-parameter rule (param_rules.check_param_rules)."""
    if opt.name not in OPTIMIZERS:
        raise ValueError(
            f'config.optimizer.name={opt.name!r} is not valid; choose one of {list(OPTIMIZERS)}'
        )
    for key, readers in OPTIMIZER_SPECIFIC_KEYS.items():
        if opt.get(key) is not None and opt.name not in readers:
            own = sorted(k for k, r in OPTIMIZER_SPECIFIC_KEYS.items() if opt.name in r)
            raise ValueError(
                f'config.optimizer.{key}={opt.get(key)} does not apply to '
                f'optimizer {opt.name!r} (it applies to {sorted(readers)}); '
                f'{opt.name!r} reads {own or "none of these keys"}'
            )
    param_rules.check_param_rules(opt)


def optimizer_setting(opt: ml_collections.ConfigDict, key: str) -> float:
    """An optimiser-specific key's value: as set, else the chosen optimiser's default."""
    value = opt.get(key)
    return OPTIMIZER_SPECIFIC_KEYS[key][opt.name] if value is None else value


def _optimiser_statistics(opt: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
    def setting(key: str) -> float:
        return optimizer_setting(opt, key)

    if opt.name == 'sgd':
        return []
    if opt.name in ('momentum', 'nesterov'):
        return [optax.trace(decay=setting('momentum'), nesterov=opt.name == 'nesterov')]
    if opt.name == 'rmsprop':
        stats = [optax.scale_by_rms(decay=setting('rms_decay'), eps=setting('eps'))]
        if setting('momentum') > 0:
            stats.append(optax.trace(decay=setting('momentum')))
        return stats
    if opt.name in ('adam', 'adamw'):
        return [optax.scale_by_adam(b1=setting('b1'), b2=setting('b2'), eps=setting('eps'))]
    raise ValueError(
        f'unknown optimizer {opt.name!r}; valid: sgd, momentum, nesterov, rmsprop, adam, adamw'
    )


def build_optimizer(
    opt: ml_collections.ConfigDict,
    sched: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    total_steps: int,
    accumulate_steps: int = 1,
) -> tuple[optax.GradientTransformationExtraArgs | optax.MultiSteps, Schedule]:
    """Returns (transformation, schedule). Call `tx.update(grads, state, params, value=loss)`.
    With `accumulate_steps` = k > 1 it is an optax.MultiSteps: the update of every k-th call
    applies the chain to the mean of the k gradients, the others return zero updates
    (`accumulated_update` does the k calls' work from their mean at once). `tx.init(params)`
    raises ValueError for a per-parameter rule that decides no parameter."""
    if accumulate_steps < 1:
        raise ValueError(f'accumulate_steps must be >= 1, got {accumulate_steps}')
    param_rules.check_param_rules(opt)
    schedule = learning_rate_schedule(
        opt, sched, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    # adamw means decoupled decay whatever weight_decay_mode says: that is what the name promises.
    decoupled = opt.weight_decay_mode == 'decoupled' or opt.name == 'adamw'
    regularised = param_rules.exclusion_mask(
        param_rules.WEIGHT_DECAY_EXCLUDE,
        param_rules.exclusion_rules(opt, param_rules.WEIGHT_DECAY_EXCLUDE),
        base=decay_mask,
    )
    chain: list[optax.GradientTransformation] = []
    if opt.agc_clip > 0:
        # Unit-wise: each output unit's gradient norm is capped at agc_clip times its weight norm.
        clipped = param_rules.exclusion_mask(
            param_rules.AGC_EXCLUDE, param_rules.exclusion_rules(opt, param_rules.AGC_EXCLUDE)
        )
        chain.append(optax.masked(optax.adaptive_grad_clip(opt.agc_clip, opt.agc_eps), clipped))
    if opt.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.l1 > 0:
        chain.append(add_l1_penalty(opt.l1, regularised))
    if opt.weight_decay > 0 and not decoupled:
        chain.append(optax.add_decayed_weights(opt.weight_decay, mask=regularised))
    chain.extend(_optimiser_statistics(opt))
    if opt.weight_decay > 0 and decoupled:
        chain.append(optax.add_decayed_weights(opt.weight_decay, mask=regularised))
    chain.append(optax.scale_by_learning_rate(schedule))
    multipliers = param_rules.lr_multiplier_rules(opt)
    if multipliers:
        factors, labels = param_rules.multiplier_labels(multipliers)
        chain.append(
            optax.partition({label: optax.scale(f) for label, f in factors.items()}, labels)
        )
    if sched.name == 'plateau':
        chain.append(
            optax.contrib.reduce_on_plateau(
                factor=sched.plateau_factor,
                patience=sched.plateau_patience_epochs,
                accumulation_size=steps_per_epoch,
                min_scale=sched.plateau_min_scale,
            )
        )
    tx = optax.chain(*chain)
    if accumulate_steps > 1:
        # The MultiSteps object itself (it has init and update): `accumulated_update` needs its
        # inner chain.
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    return tx, schedule


def accumulated_update(
    tx: Any, mean_grads: Any, opt_state: Any, params: Any, *, value: jax.Array
) -> tuple[Any, Any]:
    """One optimiser update from the mean of a step's k micro-batch gradients -> (updates,
    state). For an optax.MultiSteps `tx` (k > 1) it returns what the k-th of k `tx.update` calls
    would, in the same state layout (checkpoints do not change), but runs the chain once:
    MultiSteps runs its inner chain at every call and keeps one result, and calling it inside the
    micro-batch loop makes the parameters loop-carried, so XLA copies every weight per
    micro-batch. The state must be at the start of an accumulation (mini_step 0), as it is
    between train steps. Other transformations: `tx.update`."""
    if not isinstance(tx, optax.MultiSteps):
        return tx.update(mean_grads, opt_state, params, value=value)
    updates, inner_state = tx.inner_opt.update(
        mean_grads, opt_state.inner_opt_state, params, value=value
    )
    return updates, opt_state._replace(
        mini_step=jnp.zeros_like(opt_state.mini_step),
        gradient_step=optax.safe_increment(opt_state.gradient_step),
        inner_opt_state=inner_state,
        acc_grads=jax.tree.map(jnp.zeros_like, opt_state.acc_grads),
    )


def plateau_scale(opt_state: Any) -> float:
    """The current reduce-on-plateau multiplier in an optimiser state (1.0 when there is none)."""
    for leaf in jax.tree.leaves(
        opt_state, is_leaf=lambda x: hasattr(x, 'scale') and hasattr(x, 'plateau_count')
    ):
        if hasattr(leaf, 'scale') and hasattr(leaf, 'plateau_count'):
            return float(leaf.scale)
    return 1.0
