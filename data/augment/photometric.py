"""Photometric ops: brightness, contrast, saturation, hue, colour jitter, Gaussian noise and blur.

Images are float32 in [0, 1], channels last; every op clips its result back to [0, 1].
The colour factors follow the PIL/torchvision ImageEnhance conventions: brightness scales
the pixels, contrast blends with the image's mean grey level, saturation blends with the
greyscale image (ITU-R 601 luma), hue rotates the HSV hue by a fraction of a full turn.

Channels: saturation and hue act on the first three channels read as RGB, and pass any
further channels (e.g. alpha) through unchanged. On images with fewer than three channels
(greyscale Fashion-MNIST) they are no-ops, not errors: a grey image has no saturation or
hue to change, so a pipeline written for RGB data runs unchanged on greyscale data.
Brightness, contrast, noise and blur work on any channel count.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from data.augment.spec import FIXED, PHOTOMETRIC, Draw, OpSpec, Param, below, in_range, probability

# ITU-R BT.601 luma weights, as PIL's convert('L') and torchvision use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------- image functions


def luma(image: jax.Array) -> jax.Array:
    """(H, W, 1) grey level: luma of the first three channels, or the channel mean if C < 3."""
    if image.shape[-1] >= 3:
        # A weighted sum, not a dot product: accelerators may run float32 dots at lower precision.
        r, g, b = LUMA_WEIGHTS
        return r * image[..., 0:1] + g * image[..., 1:2] + b * image[..., 2:3]
    return jnp.mean(image, axis=-1, keepdims=True)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """factor * image + (1 - factor) * other, clipped: factor 1 is the identity."""
    return jnp.clip(other + factor * (image - other), 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(image, jnp.mean(luma(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend the RGB channels with their luma; a no-op on images with fewer than 3 channels."""
    if image.shape[-1] < 3:
        return image
    rgb = _blend(image[..., :3], luma(image), factor)
    return jnp.concatenate([rgb, image[..., 3:]], axis=-1)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotate the hue by `delta` turns; a no-op on images with fewer than 3 channels."""
    if image.shape[-1] < 3:
        return image
    hue, sat, val = rgb_to_hsv(image[..., :3])
    rgb = hsv_to_rgb(jnp.mod(hue + delta, 1.0), sat, val)
    return jnp.concatenate([jnp.clip(rgb, 0.0, 1.0), image[..., 3:]], axis=-1)


def rgb_to_hsv(rgb: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hue in [0, 1) turns, saturation and value in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    spread = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(spread > 0, spread, 1.0)  # grey pixels have no hue; avoid 0/0
    hue = jnp.where(
        value == r,
        (g - b) / safe,
        jnp.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    hue = jnp.where(spread > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
    return hue, saturation, value


def hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    # Each channel is value minus a piecewise-linear function of the hue (the standard hexcone).
    def channel(n: float) -> jax.Array:
        k = jnp.mod(n + hue * 6.0, 6.0)
        return value - value * saturation * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def blur_kernel_size(max_sigma: float) -> int:
    """An odd size covering +-3 sigma, the default for gaussian_blur's kernel_size=0."""
    return 2 * math.ceil(3 * max(max_sigma, 1e-3)) + 1


def gaussian_blur_image(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur, edges padded by reflection; sigma may be traced, size is static."""
    radius = kernel_size // 2
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # A floor on sigma keeps sigma=0 exact: the kernel becomes a unit impulse.
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    weights = weights / jnp.sum(weights)
    for axis in (0, 1):
        size = image.shape[axis]
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(image, pad, mode='symmetric')
        # A weighted sum of shifted slices: cheaper than a general convolution for these sizes.
        image = sum(
            weights[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
            for i in range(kernel_size)
        )
    return jnp.clip(image, 0.0, 1.0)


# ---------------------------------------------------------------------------- the ops


def _factor_param(default: float, what: str) -> Param:
    return Param(
        'float',
        default,
        f'{what} factor drawn uniformly in [1 - max_delta, 1 + max_delta]',
        0.0,
        1.0,
    )


def _hue_param(default: float) -> Param:
    return Param(
        'float', default, 'hue shift drawn uniformly in [-max_delta, max_delta] turns', 0.0, 0.5
    )


def _sample_factor(u, shape, *, p, max_delta, **_) -> Draw:
    return {'apply': below(u[0], p), 'factor': in_range(u[1], (1 - max_delta, 1 + max_delta))}


def _sample_hue(u, shape, *, p, max_delta, **_) -> Draw:
    return {'apply': below(u[0], p), 'delta': in_range(u[1], (-max_delta, max_delta))}


def _gate(draw: Draw, image: jax.Array, out: jax.Array) -> jax.Array:
    return jnp.where(draw['apply'], out, image)


def _sample_color_jitter(u, shape, *, p, brightness, contrast, saturation, hue) -> Draw:
    return {
        'apply': below(u[0], p),
        'brightness': in_range(u[1], (1 - brightness, 1 + brightness)),
        'contrast': in_range(u[2], (1 - contrast, 1 + contrast)),
        'saturation': in_range(u[3], (1 - saturation, 1 + saturation)),
        'hue': in_range(u[4], (-hue, hue)),
    }


def _apply_color_jitter(key, image, draw, **_) -> jax.Array:
    out = adjust_brightness(image, draw['brightness'])
    out = adjust_contrast(out, draw['contrast'])
    out = adjust_saturation(out, draw['saturation'])
    out = adjust_hue(out, draw['hue'])
    return _gate(draw, image, out)


def _sample_noise(u, shape, *, p, **_) -> Draw:
    return {'apply': below(u[0], p)}


def _apply_noise(key, image, draw, *, stddev, **_) -> jax.Array:
    noise = jax.random.normal(key, image.shape, image.dtype)
    noisy = jnp.clip(image + stddev * noise, 0.0, 1.0)
    return _gate(draw, image, noisy)


def _sample_blur(u, shape, *, p, sigma, **_) -> Draw:
    return {'apply': below(u[0], p), 'sigma': in_range(u[1], sigma)}


def _apply_blur(key, image, draw, *, sigma, kernel_size, **_) -> jax.Array:
    size = kernel_size or blur_kernel_size(sigma[1])
    return _gate(draw, image, gaussian_blur_image(image, draw['sigma'], size))


def _check_blur(params) -> None:
    size = params['kernel_size']
    if size and size % 2 == 0:
        raise ValueError(f"op 'gaussian_blur': kernel_size={size} must be odd (or 0: automatic)")


brightness = OpSpec(
    'brightness',
    PHOTOMETRIC,
    'multiply the pixels by a factor in [1 - max_delta, 1 + max_delta]',
    {'max_delta': _factor_param(0.4, 'brightness'), 'p': probability()},
    sample=_sample_factor,
    draws=2,
    apply=lambda key, image, draw, **_: _gate(
        draw, image, adjust_brightness(image, draw['factor'])
    ),
)

contrast = OpSpec(
    'contrast',
    PHOTOMETRIC,
    'blend with the mean grey level by a factor in [1 - max_delta, 1 + max_delta]',
    {'max_delta': _factor_param(0.4, 'contrast'), 'p': probability()},
    sample=_sample_factor,
    draws=2,
    apply=lambda key, image, draw, **_: _gate(draw, image, adjust_contrast(image, draw['factor'])),
)

saturation = OpSpec(
    'saturation',
    PHOTOMETRIC,
    'blend with the greyscale image by a factor in [1 - max_delta, 1 + max_delta]; no-op if C < 3',
    {'max_delta': _factor_param(0.4, 'saturation'), 'p': probability()},
    sample=_sample_factor,
    draws=2,
    apply=lambda key, image, draw, **_: _gate(
        draw, image, adjust_saturation(image, draw['factor'])
    ),
)

hue = OpSpec(
    'hue',
    PHOTOMETRIC,
    'rotate the HSV hue by [-max_delta, max_delta] turns; no-op if C < 3',
    {'max_delta': _hue_param(0.1), 'p': probability()},
    sample=_sample_hue,
    draws=2,
    apply=lambda key, image, draw, **_: _gate(draw, image, adjust_hue(image, draw['delta'])),
)

color_jitter = OpSpec(
    'color_jitter',
    PHOTOMETRIC,
    'brightness, contrast, saturation and hue in that order (each max_delta as in its own op)',
    {
        'brightness': _factor_param(0.4, 'brightness'),
        'contrast': _factor_param(0.4, 'contrast'),
        'saturation': _factor_param(0.4, 'saturation'),
        'hue': _hue_param(0.1),
        'p': probability(),
    },
    sample=_sample_color_jitter,
    draws=5,
    apply=_apply_color_jitter,
)

gaussian_noise = OpSpec(
    'gaussian_noise',
    PHOTOMETRIC,
    'add N(0, stddev^2) noise to every value, then clip',
    {'stddev': Param('float', 0.05, 'noise standard deviation', 0.0, 1.0), 'p': probability()},
    sample=_sample_noise,
    draws=1,
    apply=_apply_noise,
)

gaussian_blur = OpSpec(
    'gaussian_blur',
    PHOTOMETRIC,
    'separable Gaussian blur, sigma uniform in the range (pixels)',
    {
        'sigma': Param('range', (0.1, 2.0), 'blur sigma range in pixels', 0.0, 20.0, scalar=FIXED),
        'kernel_size': Param('int', 0, 'odd kernel size; 0 = 2*ceil(3*max sigma)+1', 0, 121),
        'p': probability(),
    },
    sample=_sample_blur,
    draws=2,
    apply=_apply_blur,
    validate=_check_blur,
)

PHOTOMETRIC_OPS = (
    brightness,
    contrast,
    saturation,
    hue,
    color_jitter,
    gaussian_noise,
    gaussian_blur,
)
