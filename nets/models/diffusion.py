"""Denoising diffusion (DDPM, Ho, Jain & Abbeel 2020; DDIM, Song, Meng & Ermon 2021): the noise
schedules, the forward process q(x_t | x_0), the ε-prediction loss, the ancestral and the DDIM
samplers, and the small U-Net that predicts ε.

Time is indexed t = 0 .. T-1 here (the papers' 1 .. T): ᾱ[t] = Π_{s<=t} (1 - β[s]), and
ᾱ[-1] = 1 is the clean image. Every sampler takes `eps_fn(x_t, t) -> ε̂` with `t` an int32
vector (one step per example), so a model, an oracle or a test function can stand in.

Samplers draw the noise of the step leaving time t from `fold_in(key, t)`, so DDPM and DDIM
with every step and η = 1 use the same noise and can be compared exactly. Both sample through
the predicted clean image x̂₀ = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t, optionally clipped to [-1, 1] (data
range): the DDPM step is the posterior mean μ̃(x̂₀, x_t) with variance β̃_t = β_t (1-ᾱ_{t-1}) /
(1-ᾱ_t), which without clipping is exactly Algorithm 2's 1/√α_t (x_t - β_t/√(1-ᾱ_t) ε̂) + σ_t z;
DDIM re-derives ε from the clipped x̂₀, so that η = 1 over every step stays identical to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets.kernels.conv import Conv
from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.position import sinusoidal_at
from nets.registry import register

Dtype = Any
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

NOISE_SCHEDULES = ('linear', 'cosine')
# Nichol & Dhariwal's offset s, which keeps β small near t = 0 in the cosine schedule, and their
# cap on β, which keeps the last steps from being singular.
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


@flax.struct.dataclass
class NoiseSchedule:
    """β_t, α_t = 1 - β_t and ᾱ_t = Π α_s for t = 0 .. T-1 (float32, computed in float64)."""

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array

    @property
    def timesteps(self) -> int:
        return self.betas.shape[0]


def make_schedule(
    name: str, timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """'linear': β from beta_start to beta_end (Ho et al.: 1e-4 .. 0.02 over T = 1000);
    'cosine': ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal)."""
    blocks.check_choice('noise schedule', name, NOISE_SCHEDULES)
    if timesteps < 1:
        raise ValueError(f'timesteps must be >= 1, got {timesteps}')
    if name == 'linear':
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f'need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}')
        betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    else:
        steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
        f = np.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, MAX_BETA)
    alphas = 1.0 - betas
    return NoiseSchedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas=jnp.asarray(alphas, jnp.float32),
        alpha_bars=jnp.asarray(np.cumprod(alphas), jnp.float32),
    )


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """(N,) -> (N, 1, ..., 1), broadcastable against `like`."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """A draw of x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I), in closed form."""
    alpha_bar = _per_example(schedule.alpha_bars[t], x0)
    return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def epsilon_losses(
    eps_fn: EpsFn, schedule: NoiseSchedule, x0: jax.Array, key: jax.Array
) -> jax.Array:
    """Per-example ||ε - ε_θ(x_t, t)||² / D with t ~ U{0..T-1}, ε ~ N(0, I): the simplified DDPM
    objective (mean over the D pixel values rather than their sum, so learning rates do not
    depend on the image size)."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    predicted = eps_fn(q_sample(schedule, x0, t, noise), t).astype(jnp.float32)
    return jnp.mean((noise - predicted) ** 2, axis=tuple(range(1, x0.ndim)))


def _alpha_bar_before(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
    """ᾱ_{t-1}, with ᾱ_{-1} = 1 (the clean image)."""
    return jnp.where(t > 0, schedule.alpha_bars[jnp.maximum(t - 1, 0)], 1.0)


def predict_x0(
    schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array, clip: bool
) -> jax.Array:
    alpha_bar = _per_example(schedule.alpha_bars[t], x_t)
    x0 = (x_t - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0


def ddpm_step(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: jax.Array,
    t: jax.Array,
    key: jax.Array,
    *,
    clip: bool = True,
) -> jax.Array:
    """One ancestral step x_t -> x_{t-1} ~ N(μ̃(x̂₀, x_t), β̃_t I), at the scalar time `t`; the
    step out of t = 0 adds no noise."""
    ts = jnp.full((x_t.shape[0],), t, jnp.int32)
    x0 = predict_x0(schedule, x_t, ts, eps_fn(x_t, ts).astype(jnp.float32), clip)
    beta, alpha, alpha_bar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    alpha_bar_prev = _alpha_bar_before(schedule, t)
    mean = (
        jnp.sqrt(alpha_bar_prev) * beta / (1.0 - alpha_bar) * x0
        + jnp.sqrt(alpha) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * x_t
    )
    variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape, x_t.dtype)
    return mean + jnp.sqrt(variance) * noise


def ddpm_sample(
    eps_fn: EpsFn, schedule: NoiseSchedule, x_T: jax.Array, key: jax.Array, *, clip: bool = True
) -> jax.Array:
    """Ancestral sampling (Algorithm 2): T steps from x_T ~ N(0, I) to x_0."""

    def body(x, t):
        return ddpm_step(eps_fn, schedule, x, t, key, clip=clip), None

    times = jnp.arange(schedule.timesteps - 1, -1, -1, dtype=jnp.int32)
    return jax.lax.scan(body, x_T, times)[0]


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` times spread evenly over 0 .. T-1 (both ends included), ascending."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f'DDIM steps must be in [1, {timesteps}], got {steps}')
    return np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(np.int32))


def ddim_step(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    key: jax.Array,
    *,
    eta: float,
    clip: bool = True,
) -> jax.Array:
    """x_t -> x_{t_next} (t_next < t; -1 is the clean image): Song et al.'s eq. 12,
    x' = √ᾱ' x̂₀ + √(1 - ᾱ' - σ²) ε̂ + σ z, σ = η √((1-ᾱ')/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ')."""
    ts = jnp.full((x_t.shape[0],), t, jnp.int32)
    alpha_bar = schedule.alpha_bars[t]
    alpha_bar_next = jnp.where(t_next >= 0, schedule.alpha_bars[jnp.maximum(t_next, 0)], 1.0)
    x0 = predict_x0(schedule, x_t, ts, eps_fn(x_t, ts).astype(jnp.float32), clip)
    eps = (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)
    sigma = eta * jnp.sqrt(
        (1.0 - alpha_bar_next) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_next)
    )
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_next - sigma**2, 0.0)) * eps
    noise = jax.random.normal(jax.random.fold_in(key, t), x_t.shape, x_t.dtype)
    return jnp.sqrt(alpha_bar_next) * x0 + direction + sigma * noise


def ddim_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_T: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    eta: float = 0.0,
    clip: bool = True,
) -> jax.Array:
    """DDIM over `steps` evenly spaced times; η = 0 is deterministic given x_T, η = 1 with
    steps = T is DDPM's ancestral sampler."""
    times = ddim_timesteps(schedule.timesteps, steps)[::-1]
    pairs = jnp.asarray(np.stack([times, np.append(times[1:], -1)], axis=1), jnp.int32)

    def body(x, pair):
        return ddim_step(eps_fn, schedule, x, pair[0], pair[1], key, eta=eta, clip=clip), None

    return jax.lax.scan(body, x_T, pairs)[0]


# --------------------------------------------------------------------------- the U-Net


def _group_norm(features: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.GroupNorm:
    # 8 groups where the width allows (Wu & He's 32 is more than these narrow nets have).
    return nn.GroupNorm(
        num_groups=math.gcd(8, features), dtype=dtype, param_dtype=param_dtype, name=name
    )


class ResidualBlock(nn.Module):
    """GN-SiLU-conv, + projected time embedding, GN-SiLU-dropout-conv, + (1x1-projected) input."""

    features: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embedding: jax.Array, *, train: bool) -> jax.Array:
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(_group_norm(x.shape[-1], self.dtype, self.param_dtype, 'norm1')(x))
        h = Conv(self.features, (3, 3), padding='SAME', name='conv1', **conv)(h)
        h = h + Dense(self.features, name='time', **conv)(time_embedding)[:, None, None, :]
        h = nn.silu(_group_norm(self.features, self.dtype, self.param_dtype, 'norm2')(h))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
        # Zero-initialised: every block starts as the identity, as in Ho et al.'s code.
        h = Conv(
            self.features,
            (3, 3),
            padding='SAME',
            kernel_init=nn.initializers.zeros,
            name='conv2',
            **conv,
        )(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), name='skip', **conv)(x)
        return x + h


class UNet(nn.Module):
    """ε_θ(x_t, t): (N, H, W, C) images and (N,) integer times -> (N, H, W, C) noise (float32).

    Levels of width `base_width · width_multipliers[i]`, each `blocks_per_level` residual
    blocks; stride-2 convolutions between levels on the way down and nearest-neighbour
    upsampling + conv on the way up, with every down-path activation concatenated onto the
    up path (Ho et al.'s layout without attention). The time t enters every block as a
    sinusoidal embedding (`nets.layers.position.sinusoidal_at`) through a 2-layer MLP.
    """

    base_width: int = 32
    width_multipliers: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.base_width < 2 or self.base_width % 2:
            raise ValueError(
                f'base_width must be even and >= 2 (the sinusoidal time embedding '
                f'has base_width channels), got {self.base_width}'
            )
        if not self.width_multipliers or any(m < 1 for m in self.width_multipliers):
            raise ValueError(
                f'width_multipliers must be positive ints, got {self.width_multipliers!r}'
            )
        if self.blocks_per_level < 1:
            raise ValueError(f'blocks_per_level must be >= 1, got {self.blocks_per_level}')
        blocks.check_rate('dropout_rate', self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False) -> jax.Array:
        levels = len(self.width_multipliers)
        side = x.shape[1:3]
        for level in range(levels - 1):
            if any(s % 2 ** (level + 1) for s in side):
                raise ValueError(
                    f'a U-Net with {levels} levels halves the image {levels - 1} '
                    f'times; {side[0]}x{side[1]} does not halve evenly'
                )
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embedding_width = 4 * self.base_width
        emb = sinusoidal_at(t, self.base_width)
        emb = Dense(embedding_width, name='time_fc1', **conv)(emb)
        emb = Dense(embedding_width, name='time_fc2', **conv)(nn.silu(emb))

        def block(h, features, name):
            return ResidualBlock(features, self.dropout_rate, name=name, **conv)(
                h, emb, train=train
            )

        h = Conv(self.base_width, (3, 3), padding='SAME', name='stem', **conv)(x.astype(self.dtype))
        skips = [h]
        for level, multiplier in enumerate(self.width_multipliers):
            for i in range(self.blocks_per_level):
                h = block(h, self.base_width * multiplier, f'down{level}_block{i}')
                skips.append(h)
            if level < levels - 1:
                h = Conv(
                    h.shape[-1],
                    (3, 3),
                    strides=(2, 2),
                    padding='SAME',
                    name=f'down{level}_resample',
                    **conv,
                )(h)
                skips.append(h)
        middle = self.base_width * self.width_multipliers[-1]
        h = block(h, middle, 'middle_block0')
        h = block(h, middle, 'middle_block1')
        for level in reversed(range(levels)):
            for i in range(self.blocks_per_level + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(h, self.base_width * self.width_multipliers[level], f'up{level}_block{i}')
            if level > 0:
                n, height, width, c = h.shape
                h = jax.image.resize(h, (n, 2 * height, 2 * width, c), 'nearest')
                h = Conv(c, (3, 3), padding='SAME', name=f'up{level}_resample', **conv)(h)
        h = nn.silu(_group_norm(h.shape[-1], self.dtype, self.param_dtype, 'out_norm')(h))
        # Zero-initialised output: the untrained model predicts ε̂ = 0, a loss of exactly 1.
        h = Conv(
            x.shape[-1],
            (3, 3),
            padding='SAME',
            kernel_init=nn.initializers.zeros,
            name='out',
            **conv,
        )(h)
        return h.astype(jnp.float32)


# Ho et al.'s CIFAR-10 model is base 128, (1, 2, 2, 2), 2 blocks, with attention at 16x16; these
# are CPU-sized for 28x28 images (two halvings: 28 -> 14 -> 7).
register('ddpm_unet', UNet, family='diffusion')
register(
    'ddpm_unet_small',
    UNet,
    family='diffusion',
    base_width=16,
    width_multipliers=(1, 2, 2),
    blocks_per_level=1,
)
