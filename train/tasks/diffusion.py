"""Diffusion (DDPM): the ε-prediction loss ||ε - ε_θ(x_t, t)||² through the generic train step,
an eval loss, and a sample grid at every evaluation.

Images are scaled to [-1, 1]. The model is an ε-predictor `model(x_t, t, train=...)` (nets/
diffusion.py: UNet); the schedule, the loss and the samplers live in nets/models/diffusion.py.

Ho et al. sample from an exponential moving average of the parameters: that is the trainer's
one EMA (`config.ema_decay`, kept in the train state, evaluated beside the raw weights as
`ema_loss`); the loop hands the sample grids the EMA weights when the run keeps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import nets.models.diffusion as diffusion
from data import DatasetInfo
from train import pictures
from train.tasks.base import Task

SAMPLERS = ('ddpm', 'ddim')
# Fixed keys, independent of the run's seed: every evaluation draws the same grid (from the same
# x_T) and the same eval noise, so successive pictures and losses are comparable.
_GRID_NOISE_SEED = 20_200_619
_EVAL_NOISE_SEED = 20_201_006


class DiffusionTask(Task):
    """DDPM training of an ε-predicting image model; see the module docstring. Options:
    `config.diffusion`."""

    logged_train_metrics = ('loss', 'grad_norm')
    options_block = 'diffusion'

    @classmethod
    def default_options(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {
                'noise_schedule': 'linear',  # or 'cosine' (Nichol & Dhariwal)
                'timesteps': 1000,
                'beta_start': 1e-4,  # linear schedule only
                'beta_end': 0.02,
                'sampler': 'ddim',  # eval grids: 'ddpm' (ancestral, T steps) or 'ddim'
                'sample_steps': 50,  # DDIM steps
                'eta': 0.0,  # DDIM noise: 0 deterministic, 1 with every step = DDPM
                'sample_grid': 8,
            }
        )

    @classmethod
    def check_options(cls, config: ml_collections.ConfigDict) -> None:
        block = config.diffusion
        if block.noise_schedule not in diffusion.NOISE_SCHEDULES:
            raise ValueError(
                f'config.diffusion.noise_schedule={block.noise_schedule!r} is not '
                f'valid; choose one of {list(diffusion.NOISE_SCHEDULES)}'
            )
        if block.sampler not in SAMPLERS:
            raise ValueError(
                f'config.diffusion.sampler={block.sampler!r} is not valid; choose '
                f'one of {list(SAMPLERS)}'
            )
        if block.timesteps < 1:
            raise ValueError(f'config.diffusion.timesteps must be > 0, got {block.timesteps}')
        if not 0.0 < block.beta_start <= block.beta_end < 1.0:
            raise ValueError(
                'need 0 < config.diffusion.beta_start <= beta_end < 1, got '
                f'{block.beta_start}, {block.beta_end}'
            )
        if not 1 <= block.sample_steps <= block.timesteps:
            raise ValueError(
                f'config.diffusion.sample_steps must be in [1, timesteps='
                f'{block.timesteps}], got {block.sample_steps}'
            )
        if block.eta < 0:
            raise ValueError(f'config.diffusion.eta must be >= 0, got {block.eta}')
        if block.sample_grid < 1:
            raise ValueError(f'config.diffusion.sample_grid must be > 0, got {block.sample_grid}')

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
        *,
        noise_schedule: str = 'linear',
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        sampler: str = 'ddim',
        sample_steps: int = 50,
        eta: float = 0.0,
        sample_grid: int = 8,
    ):
        if augmenter is not None:
            raise ValueError('the diffusion task takes no augmentation: leave config.augment empty')
        if len(info.example_shape) != 3:
            raise ValueError(
                f'diffusion needs images (H, W, C); data set {info.name!r} has '
                f'examples of shape {info.example_shape}'
            )
        if sampler not in SAMPLERS:
            raise ValueError(f'unknown sampler {sampler!r}; valid: {list(SAMPLERS)}')
        if sample_grid < 1:
            raise ValueError(f'sample_grid must be >= 1, got {sample_grid}')
        super().__init__(model, info)
        self.schedule = diffusion.make_schedule(
            noise_schedule, timesteps, beta_start=beta_start, beta_end=beta_end
        )
        diffusion.ddim_timesteps(timesteps, sample_steps)  # raises on an invalid count
        self.sampler, self.sample_steps, self.eta = sampler, sample_steps, eta
        self.image_shape = tuple(info.example_shape)
        self._scale = 255.0 if info.image_dtype == 'uint8' else 1.0
        self.grid_noise = jax.random.normal(
            jax.random.PRNGKey(_GRID_NOISE_SEED), (sample_grid**2, *self.image_shape), jnp.float32
        )
        self._sample_grid = jax.jit(
            lambda variables: self.sample(
                variables, jax.random.PRNGKey(_GRID_NOISE_SEED), x_T=self.grid_noise
            )
        )

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        return self.model.init(
            {'params': rng, 'dropout': rng}, x, jnp.zeros((1,), jnp.int32), train=True
        )

    def to_model_range(self, images: jax.Array) -> jax.Array:
        """Raw pixels -> [-1, 1]."""
        return images.astype(jnp.float32) / self._scale * 2.0 - 1.0

    def _eps_fn(self, params, model_state, *, train: bool, rng: jax.Array | None = None):
        variables = {'params': params, **model_state}
        rngs = {'dropout': rng} if train else {}
        return lambda x_t, t: self.model.apply(variables, x_t, t, train=train, rngs=rngs)

    def train_loss(self, params, model_state, batch, rng):
        x0 = self.to_model_range(batch['image'])
        dropout_rng, noise_rng = jax.random.split(rng)
        eps_fn = self._eps_fn(params, model_state, train=True, rng=dropout_rng)
        loss = jnp.mean(diffusion.epsilon_losses(eps_fn, self.schedule, x0, noise_rng))
        return loss, (model_state, {'loss': loss})

    def eval_sums(self, params, model_state, batch) -> dict[str, jax.Array]:
        """The ε loss with fixed (t, ε) draws."""
        x0 = self.to_model_range(batch['image'])
        eps_fn = self._eps_fn(params, model_state, train=False)
        losses = diffusion.epsilon_losses(
            eps_fn, self.schedule, x0, jax.random.PRNGKey(_EVAL_NOISE_SEED)
        )
        mask = batch['mask'].astype(jnp.float32)
        return {'loss_sum': jnp.sum(losses * mask), 'count': jnp.sum(mask)}

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        count = max(float(sums['count']), 1.0)
        return {'loss': float(sums['loss_sum']) / count, 'examples': int(sums['count'])}

    def sample(
        self,
        variables: dict[str, Any],
        key: jax.Array,
        count: int | None = None,
        *,
        x_T: jax.Array | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
    ) -> jax.Array:
        """Images in [-1, 1] from x_T (drawn from `key` when not given) with the task's sampler
        (or the one named): 'ddpm' ancestral over all T steps, or 'ddim' over `steps`."""
        sampler = sampler or self.sampler
        if x_T is None:
            x_T = jax.random.normal(jax.random.fold_in(key, 1), (count, *self.image_shape))
        model_state = {k: v for k, v in variables.items() if k != 'params'}
        eps_fn = self._eps_fn(variables['params'], model_state, train=False)
        if sampler == 'ddpm':
            return diffusion.ddpm_sample(eps_fn, self.schedule, x_T, key)
        return diffusion.ddim_sample(
            eps_fn,
            self.schedule,
            x_T,
            key,
            steps=steps or self.sample_steps,
            eta=self.eta if eta is None else eta,
        )

    def write_eval_pictures(
        self, picture_dir: Path, step: int, variables: dict[str, Any]
    ) -> list[Path]:
        """The grid from the fixed x_T at this step (`samples_step<step>.png`) and as
        `samples.png`."""
        images = np.asarray(self._sample_grid(variables))
        images = (images + 1.0) / 2.0
        written = pictures.save_image_grid(images, picture_dir / f'samples_step{step:06d}.png')
        return [written, pictures.save_image_grid(images, picture_dir / 'samples.png')]
