"""Colour ops on 8-bit levels (RandAugment's PIL ops) and AlexNet's PCA lighting.

Images are float32 in [0, 1], channels last, one image (H, W, C) per call (vmap for a batch);
every function is jit-able with static image shapes and acts on each channel alike unless
said otherwise. The PIL ops follow PIL.ImageOps / ImageEnhance, which timm's RandAugment calls,
and torchvision's tensor versions of them; the ops that work on 8-bit levels (equalize,
posterize) read each value as round(255 x):

    autocontrast  per channel, stretch [min, max] linearly to [0, 1]; constant channels stay
    equalize      per channel histogram equalisation of the 256 levels (PIL's lookup table:
                  step = (pixels - count of the top level) // 255, level v -> (step // 2 +
                  #pixels below v) // step; step 0 leaves the channel as it is)
    posterize     keep the top `bits` bits of each level (8 bits: unchanged)
    solarize      invert (x -> 1 - x) every value >= threshold
    sharpness     blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
                  (border pixels are not smoothed): factor 0 smooths, 1 is the identity,
                  above 1 sharpens

`pca_lighting` is AlexNet's "altering the intensities of the RGB channels" (Krizhevsky et al.
2012, §4.1): to every pixel add Σ_j α_j λ_j v_j, with α_j ~ N(0, alphastd²) drawn per image
and (λ_j, v_j) the eigenvalues and eigenvectors of the RGB covariance of ImageNet pixels in
[0, 1]: fb.resnet.torch's published values, alphastd 0.1 as in the paper. It acts on the first
three channels and is a no-op on images with fewer (like saturation and hue).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data.augment.spec import (
    PHOTOMETRIC,
    Draw,
    OpSpec,
    Param,
    below,
    probability,
    standard_normal,
)

# ImageNet RGB covariance of pixels in [0, 1] (fb.resnet.torch datasets/imagenet.lua);
# IMAGENET_EIGENVECTORS[:, j] is the eigenvector of IMAGENET_EIGENVALUES[j].
IMAGENET_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGENVECTORS = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    np.float32,
)
SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def to_levels(image: jax.Array) -> jax.Array:
    """int32 levels 0..255: round(255 x) of values clipped to [0, 1]."""
    return jnp.round(jnp.clip(image, 0.0, 1.0) * 255.0).astype(jnp.int32)


def autocontrast(image: jax.Array) -> jax.Array:
    low = jnp.min(image, axis=(0, 1), keepdims=True)
    high = jnp.max(image, axis=(0, 1), keepdims=True)
    spread = high - low
    stretched = (image - low) / jnp.where(spread > 0, spread, 1.0)
    return jnp.where(spread > 0, jnp.clip(stretched, 0.0, 1.0), image)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    levels = to_levels(channel)
    histogram = jnp.zeros(256, jnp.int32).at[levels.reshape(-1)].add(1)
    step = (levels.size - histogram[jnp.max(levels)]) // 255
    below_level = jnp.cumsum(histogram) - histogram  # pixels strictly below each level
    lut = jnp.clip((below_level + step // 2) // jnp.maximum(step, 1), 0, 255)
    equalized = lut[levels].astype(jnp.float32) / 255.0
    return jnp.where(step > 0, equalized, channel)


def equalize(image: jax.Array) -> jax.Array:
    return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image)


def posterize(image: jax.Array, bits: int) -> jax.Array:
    """Keep the top `bits` (0..8, static) bits of every level."""
    if not 0 <= bits <= 8:
        raise ValueError(f'posterize: bits={bits!r} is invalid; valid: an int in [0, 8]')
    if bits == 8:
        return image
    kept = to_levels(image) & (256 - 2 ** (8 - bits))
    return kept.astype(jnp.float32) / 255.0


def solarize(image: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """1 - x for every value x >= threshold (on the [0, 1] scale; above 1 changes nothing)."""
    return jnp.where(image >= threshold, 1.0 - image, image)


def adjust_sharpness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    height, width = image.shape[:2]
    if height < 3 or width < 3:  # every pixel is a border pixel: nothing is smoothed
        return image
    # A weighted sum of the nine shifted views: exact float32 arithmetic on any backend.
    interior = sum(
        float(SMOOTH_KERNEL[dy, dx]) * image[dy : height - 2 + dy, dx : width - 2 + dx]
        for dy in range(3)
        for dx in range(3)
    )
    smooth = image.at[1:-1, 1:-1].set(interior)
    return jnp.clip(smooth + factor * (image - smooth), 0.0, 1.0)


def lighting_shift(alpha: jax.Array) -> jax.Array:
    """The RGB offset Σ_j alpha_j λ_j v_j of ImageNet's principal components."""
    weights = alpha * IMAGENET_EIGENVALUES
    # Elementwise, not a matrix product: accelerators may run float32 dots at lower precision.
    return jnp.sum(IMAGENET_EIGENVECTORS * weights[None, :], axis=1)


def add_lighting(image: jax.Array, alpha: jax.Array) -> jax.Array:
    """Adds lighting_shift(alpha) to the first three channels; no-op if C < 3."""
    if image.shape[-1] < 3:
        return image
    rgb = jnp.clip(image[..., :3] + lighting_shift(alpha), 0.0, 1.0)
    return jnp.concatenate([rgb, image[..., 3:]], axis=-1)


def _sample_lighting(u, shape, *, p, alphastd, **_) -> Draw:
    return {'apply': below(u[0], p), 'alpha': alphastd * standard_normal(u[1:4])}


def _apply_lighting(key, image, draw, **_) -> jax.Array:
    return jnp.where(draw['apply'], add_lighting(image, draw['alpha']), image)


pca_lighting = OpSpec(
    'pca_lighting',
    PHOTOMETRIC,
    "AlexNet's PCA lighting: add Σ alpha_j λ_j v_j (ImageNet RGB eigenvalues λ, eigenvectors "
    'v), alpha_j ~ N(0, alphastd^2) per image; no-op if C < 3',
    {
        'alphastd': Param('float', 0.1, 'standard deviation of the eigenvalue weights', 0.0, 1.0),
        'p': probability(),
    },
    sample=_sample_lighting,
    draws=4,
    apply=_apply_lighting,
)

COLOR_OPS = (pca_lighting,)
