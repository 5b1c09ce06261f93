"""Occlusion ops: cutout (a square of constant fill) and random erasing (a random box of noise).

Both are per-example and leave the labels alone. Boxes are whole pixels; rows and columns are
counted from the top-left corner.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from data.augment.spec import (
    FIXED,
    OCCLUSION,
    Draw,
    OpSpec,
    Param,
    below,
    in_range,
    integer_below,
    log_in_range,
    probability,
)


def box_mask(
    height: int,
    width: int,
    top: jax.Array,
    left: jax.Array,
    box_height: jax.Array,
    box_width: jax.Array,
) -> jax.Array:
    """(H, W, 1) bool: rows [top, top + box_height) x columns [left, left + box_width)."""
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]
    return (rows >= top) & (rows < top + box_height) & (cols >= left) & (cols < left + box_width)


def cutout_side(shape: tuple[int, ...], size: int, area: float) -> int:
    """The square's side in pixels: `size`, or the side covering `area` of the image."""
    return size if size else round(math.sqrt(area * shape[0] * shape[1]))


def _sample_cutout(u, shape, *, p, size, area, **_) -> Draw:
    height, width = shape[0], shape[1]
    side = cutout_side(shape, size, area)
    # The centre is uniform over the image, so the square may be partly outside (DeVries & Taylor).
    top = integer_below(u[1], height) - side // 2
    left = integer_below(u[2], width) - side // 2
    return {'apply': below(u[0], p), 'top': top, 'left': left}


def _apply_cutout(key, image, draw, *, size, area, fill, **_) -> jax.Array:
    side = cutout_side(image.shape, size, area)
    mask = box_mask(image.shape[0], image.shape[1], draw['top'], draw['left'], side, side)
    return jnp.where(mask & draw['apply'], jnp.asarray(fill, image.dtype), image)


# Random erasing retries a box that does not fit this many times (vectorised), then skips.
ERASING_ATTEMPTS = 10
ERASING_MODES = ('pixel', 'channel', 'constant')


def _sample_random_erasing(u, shape, *, p, area, ratio, **_) -> Draw:
    height, width = shape[0], shape[1]
    n = ERASING_ATTEMPTS
    target = in_range(u[:n], area) * height * width
    aspect = log_in_range(u[n : 2 * n], ratio)  # height / width
    box_h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (box_h >= 1) & (box_w >= 1) & (box_h < height) & (box_w < width)
    first = jnp.argmax(fits)
    box_h, box_w = box_h[first], box_w[first]
    # Uniform over the positions that keep the whole box inside the image.
    top = integer_below(u[2 * n + 1], height - box_h + 1)
    left = integer_below(u[2 * n + 2], width - box_w + 1)
    return {
        'apply': below(u[2 * n], p) & fits[first],
        'top': top,
        'left': left,
        'height': box_h,
        'width': box_w,
    }


def _apply_random_erasing(key, image, draw, *, mode, fill_value, **_) -> jax.Array:
    if mode == 'pixel':
        fill = jax.random.uniform(key, image.shape, image.dtype)
    elif mode == 'channel':
        fill = jax.random.uniform(key, image.shape[-1:], image.dtype)
    else:
        fill = jnp.asarray(fill_value, image.dtype)
    mask = box_mask(
        image.shape[0], image.shape[1], draw['top'], draw['left'], draw['height'], draw['width']
    )
    return jnp.where(mask & draw['apply'], fill, image)


cutout = OpSpec(
    'cutout',
    OCCLUSION,
    'fill a square (side `size` px, or covering `area` of the image when size=0) centred '
    'uniformly on the image, possibly partly outside',
    {
        'size': Param('int', 0, 'side in pixels; 0: use area', 0, 100_000),
        'area': Param('float', 0.25, 'area fraction of the square when size=0', 0.0, 1.0),
        'fill': Param('float', 0.0, 'fill value', 0.0, 1.0),
        'p': probability(),
    },
    sample=_sample_cutout,
    draws=3,
    apply=_apply_cutout,
)

random_erasing = OpSpec(
    'random_erasing',
    OCCLUSION,
    'Zhong et al.: with probability p erase a box of area fraction in `area` and aspect '
    f'(h/w) log-uniform in `ratio`, inside the image ({ERASING_ATTEMPTS} tries, else nothing); '
    "fill 'pixel' (uniform noise per value), 'channel' (one random value per channel) or "
    "'constant' (fill_value)",
    {
        'area': Param(
            'range', (0.02, 1 / 3), 'area fraction range', 0.0, 1.0, open_low=True, scalar=FIXED
        ),
        'ratio': Param(
            'range',
            (0.3, 1 / 0.3),
            'aspect ratio (height / width) range',
            0.0,
            100.0,
            open_low=True,
            scalar=FIXED,
        ),
        'mode': Param('choice', 'pixel', 'how the box is filled', choices=ERASING_MODES),
        'fill_value': Param('float', 0.0, "value of mode='constant'", 0.0, 1.0),
        'p': probability(0.5),
    },
    sample=_sample_random_erasing,
    draws=2 * ERASING_ATTEMPTS + 3,
    apply=_apply_random_erasing,
)

OCCLUSION_OPS = (cutout, random_erasing)
