"""Geometric ops, each a 3x3 affine matrix in the centred coordinate convention of
`data/augment/affine.py` (which also holds the one bilinear warp that applies them and explains
how consecutive ops compose into one warp), plus the crops that change the image size."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data.augment.affine import (
    FILL_MODES,
    compose,
    identity_matrix,
    rotation_matrix,
    scale_matrix,
    shear_matrix,
    translation_matrix,
)
from data.augment.spec import (
    FIXED,
    GEOMETRIC,
    Draw,
    OpSpec,
    Param,
    below,
    check_order,
    in_range,
    log_in_range,
    probability,
)

# ---------------------------------------------------------------------------- the ops


def _fill_params(p_default: float = 1.0) -> dict[str, Param]:
    # fill_mode/fill_value belong to the warp that a run of consecutive geometric ops shares;
    # the pipeline checks the ops of a run agree (see pipeline.py).
    return {
        'p': probability(p_default),
        'fill_mode': Param(
            'choice', 'constant', 'how points outside the input are filled', choices=FILL_MODES
        ),
        'fill_value': Param('float', 0.0, "value of 'constant' fill", 0.0, 1.0),
    }


def _gated(draw: Draw, matrix: jax.Array) -> jax.Array:
    return jnp.where(draw['apply'], matrix, identity_matrix())


def _sample_rotate(u, shape, *, p, degrees, **_) -> Draw:
    return {'apply': below(u[0], p), 'degrees': in_range(u[1], degrees)}


def _sample_translate(u, shape, *, p, max_pixels, **_) -> Draw:
    shift = (-max_pixels, max_pixels)
    return {'apply': below(u[0], p), 'dx': in_range(u[1], shift), 'dy': in_range(u[2], shift)}


def _sample_scale(u, shape, *, p, min_factor, max_factor, **_) -> Draw:
    return {'apply': below(u[0], p), 'factor': log_in_range(u[1], (min_factor, max_factor))}


def _sample_flip(u, shape, *, p, **_) -> Draw:
    return {'apply': below(u[0], p)}


def _sample_stretch(u, shape, *, p, max_factor, **_) -> Draw:
    return {'apply': below(u[0], p), 'factor': log_in_range(u[1], (1 / max_factor, max_factor))}


def _sample_center_crop(u, shape, *, p, min_fraction, max_fraction, **_) -> Draw:
    return {'apply': below(u[0], p), 'fraction': in_range(u[1], (min_fraction, max_fraction))}


# Inception-style crops retry a rejected box this many times (vectorised), then use the image.
RESIZED_CROP_ATTEMPTS = 10


def _sample_random_resized_crop(u, shape, *, p, scale, ratio, **_) -> Draw:
    height, width = shape[0], shape[1]
    n = RESIZED_CROP_ATTEMPTS
    area = in_range(u[:n], scale) * height * width
    aspect = log_in_range(u[n : 2 * n], ratio)  # width / height
    crop_w, crop_h = jnp.sqrt(area * aspect), jnp.sqrt(area / aspect)
    fits = (crop_w <= width) & (crop_h <= height)
    first = jnp.argmax(fits)  # index of the first box that fits (0 when none does)
    found = fits[first]
    crop_w = jnp.where(found, crop_w[first], float(width))
    crop_h = jnp.where(found, crop_h[first], float(height))
    # Centre offset from the image centre, anywhere that keeps the box inside the image.
    center_x = (2 * u[2 * n + 1] - 1) * (width - crop_w) / 2
    center_y = (2 * u[2 * n + 2] - 1) * (height - crop_h) / 2
    return {
        'apply': below(u[2 * n], p),
        'crop_width': crop_w,
        'crop_height': crop_h,
        'center_x': center_x,
        'center_y': center_y,
    }


def _crop_matrix(draw: Draw, shape) -> jax.Array:
    # The box (centre (cx, cy), size w x h) is moved to the origin and stretched to W x H.
    sx, sy = shape[1] / draw['crop_width'], shape[0] / draw['crop_height']
    matrix = compose(scale_matrix(sx, sy), translation_matrix(-draw['center_x'], -draw['center_y']))
    return _gated(draw, matrix)


def _check_scale(params) -> None:
    check_order('scale', 'min_factor', params['min_factor'], 'max_factor', params['max_factor'])


def _check_center_crop(params) -> None:
    check_order(
        'center_crop',
        'min_fraction',
        params['min_fraction'],
        'max_fraction',
        params['max_fraction'],
    )


rotate = OpSpec(
    'rotate',
    GEOMETRIC,
    'rotation by a uniform angle (degrees, counter-clockwise)',
    {
        'degrees': Param('range', (0.0, 360.0), 'angle range in degrees', -360.0, 360.0),
        **_fill_params(),
    },
    sample=_sample_rotate,
    draws=2,
    matrix=lambda draw, shape: _gated(draw, rotation_matrix(draw['degrees'])),
)

translate = OpSpec(
    'translate',
    GEOMETRIC,
    'shift by dx, dy uniform in [-max_pixels, max_pixels] (independent)',
    {'max_pixels': Param('float', 10.0, 'largest shift in pixels', 0.0, 1e4), **_fill_params()},
    sample=_sample_translate,
    draws=3,
    matrix=lambda draw, shape: _gated(draw, translation_matrix(draw['dx'], draw['dy'])),
)

scale = OpSpec(
    'scale',
    GEOMETRIC,
    'isotropic zoom by a log-uniform factor in [min_factor, max_factor]',
    {
        'min_factor': Param(
            'float', 1 / 1.6, 'smallest factor (< 1 shrinks)', 0.0, 100.0, open_low=True
        ),
        'max_factor': Param(
            'float', 1.6, 'largest factor (> 1 magnifies)', 0.0, 100.0, open_low=True
        ),
        **_fill_params(),
    },
    sample=_sample_scale,
    draws=2,
    matrix=lambda draw, shape: _gated(draw, scale_matrix(draw['factor'], draw['factor'])),
    validate=_check_scale,
)

flip_lr = OpSpec(
    'flip_lr',
    GEOMETRIC,
    'horizontal (left-right) flip with probability p',
    _fill_params(p_default=0.5),
    sample=_sample_flip,
    draws=1,
    matrix=lambda draw, shape: _gated(draw, scale_matrix(-1.0, 1.0)),
)

flip_ud = OpSpec(
    'flip_ud',
    GEOMETRIC,
    'vertical (up-down) flip with probability p',
    _fill_params(p_default=0.5),
    sample=_sample_flip,
    draws=1,
    matrix=lambda draw, shape: _gated(draw, scale_matrix(1.0, -1.0)),
)

shear = OpSpec(
    'shear',
    GEOMETRIC,
    'horizontal shear: verticals lean by a uniform angle (degrees)',
    {
        'degrees': Param('range', (-20.0, 20.0), 'shear angle range in degrees', -75.0, 75.0),
        **_fill_params(),
    },
    sample=_sample_rotate,
    draws=2,  # the same draw: an angle in a range
    matrix=lambda draw, shape: _gated(draw, shear_matrix(draw['degrees'], 0.0)),
)

stretch = OpSpec(
    'stretch',
    GEOMETRIC,
    'anisotropic scale: x by f and y by 1/f, f log-uniform in [1/max_factor, max_factor]',
    {'max_factor': Param('float', 1.3, 'largest stretch factor', 1.0, 100.0), **_fill_params()},
    sample=_sample_stretch,
    draws=2,
    matrix=lambda draw, shape: _gated(draw, scale_matrix(draw['factor'], 1 / draw['factor'])),
)

center_crop = OpSpec(
    'center_crop',
    GEOMETRIC,
    'crop a centred box of side fraction f (uniform in [min_fraction, max_fraction]) of the '
    'image, resampled back to full size',
    {
        'min_fraction': Param('float', 0.75, 'smallest side fraction', 0.0, 1.0, open_low=True),
        'max_fraction': Param('float', 1.0, 'largest side fraction', 0.0, 1.0, open_low=True),
        **_fill_params(),
    },
    sample=_sample_center_crop,
    draws=2,
    matrix=lambda draw, shape: _gated(
        draw, scale_matrix(1 / draw['fraction'], 1 / draw['fraction'])
    ),
    validate=_check_center_crop,
)

random_resized_crop = OpSpec(
    'random_resized_crop',
    GEOMETRIC,
    'Inception crop: area fraction uniform in scale, aspect (w/h) log-uniform in ratio, '
    f'placed uniformly, resampled to full size ({RESIZED_CROP_ATTEMPTS} tries, '
    'then the whole image)',
    {
        'scale': Param(
            'range', (0.08, 1.0), 'area fraction range', 0.0, 1.0, open_low=True, scalar=FIXED
        ),
        'ratio': Param(
            'range',
            (3 / 4, 4 / 3),
            'aspect ratio (width / height) range',
            0.0,
            100.0,
            open_low=True,
            scalar=FIXED,
        ),
        **_fill_params(),
    },
    sample=_sample_random_resized_crop,
    draws=2 * RESIZED_CROP_ATTEMPTS + 3,
    matrix=_crop_matrix,
)

GEOMETRIC_OPS = (
    rotate,
    translate,
    scale,
    flip_lr,
    flip_ud,
    shear,
    stretch,
    center_crop,
    random_resized_crop,
)
