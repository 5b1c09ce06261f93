"""GAN training: two networks, two optax optimisers, alternating updates in one jitted step.

The model is one module with `generate(z)` and `discriminate(x)` (nets/models/gan.py: DCGAN), so the
train state holds `params = {'generator': ..., 'discriminator': ...}`, the same two keys in
`model_state['batch_stats']`, and `opt_state = {'generator': ..., 'discriminator': ...}` (one
optimiser state each, checkpointed and restored with the rest of the state).

One train step (`update`, which the generic train step calls like any task's update) is
  1. `d_steps` discriminator updates, G frozen: fakes G(z) (G in training mode, its gradient
     stopped and its batch-norm updates dropped), then D's loss and D's optimiser;
  2. one generator update, D frozen: the gradient of G's loss flows through D to G, and only
     G's optimiser steps; D's batch-norm updates of this pass are dropped.
Each half therefore changes only its own network's parameters, optimiser state and batch-norm
statistics. The noise of D update k is drawn from fold_in(step key, k), G's from
fold_in(step key, d_steps).

Batch-norm convention: D always sees real and fake images in ONE concatenated batch
[real; fake] (half and half), in the D update and in the G update alike, so its batch
statistics are always those of the mixture and D cannot tell the halves apart by their
statistics (which separate real-only and fake-only passes would let it do). Its running
averages are therefore statistics of the 50/50 mixture; the generator's are those of its
training-mode fakes. Sampling and evaluation use the running averages (eval mode), so a sample
does not depend on the rest of its batch.

Losses, on D's logits l (σ the logistic function):
  non_saturating  D: -log σ(l_real) - log(1 - σ(l_fake)),  G: -log σ(l_fake)  (Goodfellow's
                  "-log D trick", which gives G strong gradients early on)
  hinge           D: max(0, 1 - l_real) + max(0, 1 + l_fake),  G: -l_fake  (Lim & Ye; Miyato)
each the mean over the real (resp. fake) half.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data import DatasetInfo
from train import pictures
from train.optim import Schedule, build_optimizer
from train.state import TrainState
from train.tasks.base import Task

LOSSES = ('non_saturating', 'hinge')
NETWORKS = ('generator', 'discriminator')
# Fixed keys, independent of the run's seed, so every evaluation of every run draws its grid
# and its eval fakes from the same noise.
_GRID_NOISE_SEED = 20_160_107
_EVAL_NOISE_SEED = 20_140_610


def _check_loss(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f'unknown GAN loss {kind!r}; valid: {list(LOSSES)}')


def discriminator_terms(
    real_logits: jax.Array, fake_logits: jax.Array, kind: str
) -> tuple[jax.Array, jax.Array]:
    """Per-example D losses of the real and of the fake images."""
    _check_loss(kind)
    if kind == 'hinge':
        return jax.nn.relu(1.0 - real_logits), jax.nn.relu(1.0 + fake_logits)
    # -log σ(l) = softplus(-l) and -log(1 - σ(l)) = softplus(l), stable for any l.
    return jax.nn.softplus(-real_logits), jax.nn.softplus(fake_logits)


def generator_terms(fake_logits: jax.Array, kind: str) -> jax.Array:
    """Per-example G losses of the fake images."""
    _check_loss(kind)
    return -fake_logits if kind == 'hinge' else jax.nn.softplus(-fake_logits)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, kind: str) -> jax.Array:
    real_terms, fake_terms = discriminator_terms(real_logits, fake_logits, kind)
    return jnp.mean(real_terms) + jnp.mean(fake_terms)


def generator_loss(fake_logits: jax.Array, kind: str) -> jax.Array:
    return jnp.mean(generator_terms(fake_logits, kind))


@dataclasses.dataclass(frozen=True)
class PerNetworkOptimizer:
    """One optax optimiser per network of a model whose params are {network: subtree}.

    `init` gives {network: that optimiser's state}; `update` steps one network and leaves the
    others' parameters and optimiser states as they are."""

    optimizers: Mapping[str, optax.GradientTransformation]

    def init(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {name: tx.init(params[name]) for name, tx in self.optimizers.items()}

    def update(
        self,
        network: str,
        grads: Any,
        opt_state: Mapping[str, Any],
        params: Mapping[str, Any],
        loss: jax.Array,
    ) -> tuple[dict, dict]:
        """-> (params, opt_state) with `network` stepped by its own optimiser."""
        updates, network_state = self.optimizers[network].update(
            grads, opt_state[network], params[network], value=loss
        )
        return (
            {**params, network: optax.apply_updates(params[network], updates)},
            {**opt_state, network: network_state},
        )


def build_gan_optimizer(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> tuple[PerNetworkOptimizer, Schedule]:
    """Each network's optimiser is `config.optimizer` (every key applies: name, learning rate,
    betas, clipping, weight decay, ...) on the shared `config.schedule`, its learning rate scaled
    by `config.gan.<network>_lr_multiplier` (two time-scale updates). Returns the generator's
    schedule for the logs."""
    optimizers, schedules = {}, {}
    for network in NETWORKS:
        settings = ml_collections.ConfigDict(config.optimizer.to_dict())
        settings.learning_rate = (
            config.optimizer.learning_rate * config.gan[f'{network}_lr_multiplier']
        )
        optimizers[network], schedules[network] = build_optimizer(
            settings, config.schedule, steps_per_epoch=steps_per_epoch, total_steps=total_steps
        )
    return PerNetworkOptimizer(optimizers), schedules['generator']


class GANTask(Task):
    """Adversarial training of an image GAN; see the module docstring for the step. Options:
    `config.gan`."""

    logged_train_metrics = (
        'loss',
        'g_loss',
        'd_real_accuracy',
        'd_fake_accuracy',
        'grad_norm',
        'd_grad_norm',
        'g_grad_norm',
    )
    options_block = 'gan'

    @classmethod
    def default_options(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {
                'loss': 'non_saturating',  # or 'hinge'
                'd_steps': 1,  # discriminator updates per generator update, in one step
                'sample_grid': 8,  # every evaluation draws sample_grid² fixed-noise samples
                # Each network trains with config.optimizer, its learning rate times these.
                'generator_lr_multiplier': 1.0,
                'discriminator_lr_multiplier': 1.0,
            }
        )

    @classmethod
    def check_options(cls, config: ml_collections.ConfigDict) -> None:
        gan = config.gan
        _check_loss(gan.loss)
        for key in ('d_steps', 'sample_grid'):
            if gan[key] < 1:
                raise ValueError(f'config.gan.{key} must be > 0, got {gan[key]}')
        for network in NETWORKS:  # 0 freezes a network (e.g. to train one against a fixed other)
            value = gan[f'{network}_lr_multiplier']
            if not (value >= 0 and np.isfinite(value)):
                raise ValueError(f'config.gan.{network}_lr_multiplier must be >= 0, got {value}')

    @classmethod
    def options(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        gan = config.gan
        return {'loss': gan.loss, 'd_steps': gan.d_steps, 'sample_grid': gan.sample_grid}

    @classmethod
    def accumulates_gradients(cls, config: ml_collections.ConfigDict) -> bool:
        return False  # its own two-network step

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
        *,
        loss: str = 'non_saturating',
        d_steps: int = 1,
        sample_grid: int = 8,
    ):
        _check_loss(loss)
        if augmenter is not None:
            raise ValueError('the GAN task takes no augmentation: leave config.augment empty')
        if d_steps < 1 or sample_grid < 1:
            raise ValueError(f'd_steps and sample_grid must be >= 1, got {d_steps}, {sample_grid}')
        for method in ('generate', 'discriminate'):
            if not hasattr(model, method):
                raise ValueError(
                    f'the GAN task needs a model with generate(z) and '
                    f'discriminate(x) (e.g. dcgan), got {type(model).__name__}'
                )
        shape = tuple(info.example_shape)
        if shape != (model.image_size, model.image_size, model.channels):
            raise ValueError(
                f'data set {info.name!r} has images of shape {shape} but the model '
                f'makes {(model.image_size, model.image_size, model.channels)}; set '
                'config.model.image_size and config.model.channels to match'
            )
        super().__init__(model, info)
        self.loss = loss
        self.d_steps = d_steps
        self.latent_dim = model.latent_dim
        self._scale = 255.0 if info.image_dtype == 'uint8' else 1.0
        self.grid_noise = self.noise(jax.random.PRNGKey(_GRID_NOISE_SEED), sample_grid**2)
        self._sample_grid = jax.jit(
            lambda variables: self.model.apply(
                variables, self.grid_noise, train=False, method='generate'
            )
        )

    # ----------------------------------------------------------------------- set-up

    def noise(self, key: jax.Array, count: int) -> jax.Array:
        """z ~ N(0, I), (count, latent_dim)."""
        return jax.random.normal(key, (count, self.latent_dim), jnp.float32)

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """Both networks, initialised in training mode through D(G(z))."""
        return self.model.init({'params': rng}, self.noise(rng, 2), train=True)

    def make_optimizer(
        self,
        config: ml_collections.ConfigDict,
        *,
        steps_per_epoch: int,
        total_steps: int,
        accumulate_steps: int = 1,
    ) -> tuple[PerNetworkOptimizer, Schedule]:
        if accumulate_steps != 1:
            raise ValueError(
                'the GAN task runs its own update and does not accumulate gradients; '
                f'got {accumulate_steps} micro-batches'
            )
        return build_gan_optimizer(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    def to_model_range(self, images: jax.Array) -> jax.Array:
        """Raw pixels -> [-1, 1], the range of the generator's tanh."""
        return images.astype(jnp.float32) / self._scale * 2.0 - 1.0

    # ----------------------------------------------------------------------- the two halves

    def _apply(self, params, batch_stats, inputs, method: str):
        """Training-mode pass -> (output, updated batch_stats of the whole model)."""
        out, updated = self.model.apply(
            {'params': params, 'batch_stats': batch_stats},
            inputs,
            train=True,
            method=method,
            mutable=['batch_stats'],
        )
        return out, updated['batch_stats']

    def discriminator_update(
        self,
        tx: PerNetworkOptimizer,
        params,
        batch_stats,
        opt_state,
        real: jax.Array,
        key: jax.Array,
    ):
        """One D step with G frozen -> (params, batch_stats, opt_state, metrics)."""
        n = real.shape[0]
        fake, _ = self._apply(params, batch_stats, self.noise(key, n), 'generate')
        fake = jax.lax.stop_gradient(fake)

        def loss_fn(d_params):
            logits, stats = self._apply(
                {**params, 'discriminator': d_params},
                batch_stats,
                jnp.concatenate([real, fake]),
                'discriminate',
            )
            loss = discriminator_loss(logits[:n], logits[n:], self.loss)
            return loss, (stats['discriminator'], logits)

        (loss, (d_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params['discriminator']
        )
        params, opt_state = tx.update('discriminator', grads, opt_state, params, loss)
        metrics = {
            'd_loss': loss,
            'd_grad_norm': optax.global_norm(grads),
            'd_real_accuracy': jnp.mean(logits[:n] > 0),
            'd_fake_accuracy': jnp.mean(logits[n:] < 0),
        }
        return params, {**batch_stats, 'discriminator': d_stats}, opt_state, metrics

    def generator_update(
        self,
        tx: PerNetworkOptimizer,
        params,
        batch_stats,
        opt_state,
        real: jax.Array,
        key: jax.Array,
    ):
        """One G step with D frozen -> (params, batch_stats, opt_state, metrics)."""
        n = real.shape[0]
        z = self.noise(key, n)

        def loss_fn(g_params):
            both = {**params, 'generator': g_params}
            fake, stats = self._apply(both, batch_stats, z, 'generate')
            # Real images ride along only so D normalises the same 50/50 mixture it trains on.
            logits, _ = self._apply(
                both, batch_stats, jnp.concatenate([real, fake]), 'discriminate'
            )
            return generator_loss(logits[n:], self.loss), stats['generator']

        (loss, g_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params['generator'])
        params, opt_state = tx.update('generator', grads, opt_state, params, loss)
        metrics = {'g_loss': loss, 'g_grad_norm': optax.global_norm(grads)}
        return params, {**batch_stats, 'generator': g_stats}, opt_state, metrics

    def update(
        self,
        state: TrainState,
        batch: dict[str, jax.Array],
        *,
        tx: PerNetworkOptimizer,
        mesh: Any = None,
        grad_accum_steps: int = 1,
    ):
        """`d_steps` D updates, then one G update (the generic trainer jits this on the mesh)."""
        real = self.to_model_range(batch['image'])
        rng = state.step_rng()
        params, batch_stats, opt_state = (
            state.params,
            state.model_state['batch_stats'],
            state.opt_state,
        )
        for k in range(self.d_steps):
            params, batch_stats, opt_state, d_metrics = self.discriminator_update(
                tx, params, batch_stats, opt_state, real, jax.random.fold_in(rng, k)
            )
        params, batch_stats, opt_state, g_metrics = self.generator_update(
            tx, params, batch_stats, opt_state, real, jax.random.fold_in(rng, self.d_steps)
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            model_state={**state.model_state, 'batch_stats': batch_stats},
            opt_state=opt_state,
        )
        loss_finite = jnp.isfinite(d_metrics['d_loss']) & jnp.isfinite(g_metrics['g_loss'])
        grad_norm = jnp.sqrt(d_metrics['d_grad_norm'] ** 2 + g_metrics['g_grad_norm'] ** 2)
        grads_finite = jnp.isfinite(grad_norm)  # the trainer's step skips or stops on these
        # 'loss' is D's loss: >= 0 under both losses (G's hinge loss is not), so it can be
        # plotted on the log scale of the training curves.
        metrics = {
            'loss': d_metrics['d_loss'],
            **d_metrics,
            **g_metrics,
            'grad_norm': grad_norm,
            'loss_finite': loss_finite,
            'grads_finite': grads_finite,
        }
        return new_state, metrics

    # ----------------------------------------------------------------------- evaluation

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        """D's losses and accuracies on the real eval images and on as many fakes (eval mode,
        the same fixed noise for every batch)."""
        variables = {'params': params, **model_state}
        real = self.to_model_range(batch['image'])
        mask = batch['mask'].astype(jnp.float32)
        z = self.noise(jax.random.PRNGKey(_EVAL_NOISE_SEED), real.shape[0])
        fake = self.model.apply(variables, z, train=False, method='generate')
        real_logits = self.model.apply(variables, real, train=False, method='discriminate')
        fake_logits = self.model.apply(variables, fake, train=False, method='discriminate')
        real_terms, fake_terms = discriminator_terms(real_logits, fake_logits, self.loss)
        return {
            'd_loss_sum': jnp.sum((real_terms + fake_terms) * mask),
            'g_loss_sum': jnp.sum(generator_terms(fake_logits, self.loss) * mask),
            'real_correct': jnp.sum((real_logits > 0) * mask),
            'fake_correct': jnp.sum((fake_logits < 0) * mask),
            'count': jnp.sum(mask),
        }

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        count = max(float(sums['count']), 1.0)
        return {
            'd_loss': float(sums['d_loss_sum']) / count,
            'g_loss': float(sums['g_loss_sum']) / count,
            'd_real_accuracy': float(sums['real_correct']) / count,
            'd_fake_accuracy': float(sums['fake_correct']) / count,
            'examples': int(sums['count']),
        }

    # ----------------------------------------------------------------------- samples

    def sample(self, variables: dict[str, Any], key: jax.Array, count: int) -> jax.Array:
        """`count` images in [-1, 1] from G in eval mode."""
        return self.model.apply(variables, self.noise(key, count), train=False, method='generate')

    def write_eval_pictures(
        self, picture_dir: Path, step: int, variables: dict[str, Any]
    ) -> list[Path]:
        """The fixed-noise grid at this step (`samples_step<step>.png`) and as `samples.png`."""
        images = np.asarray(self._sample_grid(variables))
        images = (images + 1.0) / 2.0
        written = pictures.save_image_grid(images, picture_dir / f'samples_step{step:06d}.png')
        return [written, pictures.save_image_grid(images, picture_dir / 'samples.png')]
