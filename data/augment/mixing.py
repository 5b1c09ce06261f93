"""Batch ops that mix pairs of examples and their labels: mixup and cutmix.

Each example i is mixed with example B-1-i (the batch reversed; the loader already shuffles,
so this pairing is random, and it needs no extra randomness or gather). One mixing weight is
drawn per batch, as in the papers. Labels are probability rows (B, num_classes); mixing is
linear in them, so several mixing ops in a row still give rows that sum to 1.

    mixup:   x = lam * x_i + (1 - lam) * x_j,   y = lam * y_i + (1 - lam) * y_j,  lam ~ Beta(a, a)
    cutmix:  a box of x_j pasted into x_i; its area is about (1 - lam) of the image with
             lam ~ Beta(a, a); the box is clipped to the image, and the label weight of x_j is
             the box's exact pixel fraction.
alpha = 0 turns an op off (lam = 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data.augment.occlusion import box_mask
from data.augment.spec import MIXING, Draw, OpSpec, Param, below, integer_below, uniforms


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    """lam ~ Beta(alpha, alpha) as g1 / (g1 + g2), g ~ Gamma(alpha), in log space: both gammas in
    one call (half the compiled code of jax.random.beta) and no 0/0 for small alpha."""
    if alpha == 0:
        return jnp.ones((), jnp.float32)
    log_g = jax.random.loggamma(key, jnp.full((2,), alpha, jnp.float32))
    return jnp.clip(jax.nn.sigmoid(log_g[0] - log_g[1]), 0.0, 1.0)


def _sample_mixup(key, shape, *, alpha, p) -> Draw:
    u_key, beta_key = jax.random.split(key)
    apply = below(uniforms(u_key, 1)[0], p)
    return {'apply': apply, 'lam': jnp.where(apply, _beta(beta_key, alpha), 1.0)}


def _mix_mixup(images, probs, draw, **_) -> tuple[jax.Array, jax.Array]:
    lam = draw['lam']
    return lam * images + (1 - lam) * images[::-1], lam * probs + (1 - lam) * probs[::-1]


def _sample_cutmix(key, shape, *, alpha, p) -> Draw:
    height, width = shape[1], shape[2]
    u_key, beta_key = jax.random.split(key)
    u = uniforms(u_key, 3)
    apply = below(u[0], p)
    cut = jnp.sqrt(1.0 - _beta(beta_key, alpha))  # side fraction of the box
    center_y, center_x = integer_below(u[1], height), integer_below(u[2], width)
    half_h = jnp.round(cut * height / 2).astype(jnp.int32)
    half_w = jnp.round(cut * width / 2).astype(jnp.int32)
    top, bottom = jnp.clip(center_y - half_h, 0, height), jnp.clip(center_y + half_h, 0, height)
    left, right = jnp.clip(center_x - half_w, 0, width), jnp.clip(center_x + half_w, 0, width)
    bottom = jnp.where(apply, bottom, top)  # not applied: an empty box
    area = (bottom - top) * (right - left)
    return {
        'apply': apply,
        'lam': 1.0 - area / (height * width),
        'top': top,
        'left': left,
        'height': bottom - top,
        'width': right - left,
    }


def _mix_cutmix(images, probs, draw, **_) -> tuple[jax.Array, jax.Array]:
    mask = box_mask(
        images.shape[1], images.shape[2], draw['top'], draw['left'], draw['height'], draw['width']
    )
    lam = draw['lam'].astype(probs.dtype)
    return jnp.where(mask, images[::-1], images), lam * probs + (1 - lam) * probs[::-1]


mixup = OpSpec(
    'mixup',
    MIXING,
    'Zhang et al.: blend each example and its label with its partner, lam ~ Beta(alpha, alpha)',
    {
        'alpha': Param('float', 0.2, 'Beta distribution parameter; 0 turns it off', 0.0, 100.0),
        'p': Param('float', 1.0, 'probability of mixing a batch', 0.0, 1.0),
    },
    sample=_sample_mixup,
    mix=_mix_mixup,
)

cutmix = OpSpec(
    'cutmix',
    MIXING,
    'Yun et al.: paste a box of the partner; label weights = exact area fractions',
    {
        'alpha': Param('float', 1.0, 'Beta distribution parameter; 0 turns it off', 0.0, 100.0),
        'p': Param('float', 1.0, 'probability of mixing a batch', 0.0, 1.0),
    },
    sample=_sample_cutmix,
    mix=_mix_cutmix,
)

MIXING_OPS = (mixup, cutmix)
