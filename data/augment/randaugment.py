"""RandAugment (Cubuk et al., 2020): N ops drawn uniformly per example, all at magnitude M.

The candidate ops are built from this library's geometric, photometric and colour ops
(color.py). Magnitude M on the 0-10 scale maps linearly to each op's strength, M=10 giving the
maximum below (the paper's maxima where the paper has the op; torchvision's and timm's
mappings), and each drawn op gets a random sign where the op has a direction:

    op            strength at magnitude M (m = M / 10, sign s = +-1)
    identity      -
    autocontrast  -                           (no magnitude)
    equalize      -                           (no magnitude)
    rotate        s * 30 m degrees
    shear_x/y     shear coefficient s * 0.3 m (tan of the angle)
    translate_x/y s * 0.45 m * image width / height
    brightness    factor 1 + 0.9 m s
    contrast      factor 1 + 0.9 m s
    saturation    factor 1 + 0.9 m s          (the paper's "color"; no-op if fewer than 3
                                               channels)
    sharpness     factor 1 + 0.9 m s
    solarize      invert levels >= 256 (1 - m) (timm: M=0 inverts nothing)
    posterize     keep 8 - round(4 m) bits    (torchvision: 8 bits at M=0, 4 at M=10)
    hue           s * 0.25 m turns            (not in the paper; no-op if fewer than 3 channels)
    gaussian_blur sigma 2 m pixels            (not in the paper)

The default candidates are the paper's fourteen (`PAPER_OPS`: all of the above but hue and
gaussian_blur). Every op is the identity at M=0 except autocontrast and equalize
(`UNSCALED_OPS`), which have no magnitude.

One warp per example: the drawn geometric ops are composed into one matrix (in draw order) and
applied first, then the drawn photometric ops in draw order. Moving the geometry in front of the
colour changes is exact for these pointwise colour ops except at the fill, which is then
colour-adjusted too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data.augment import affine, color, photometric
from data.augment.geometry import FILL_MODES
from data.augment.spec import POLICY, Draw, OpSpec, Param, below, integer_below, probability

MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRACTION = 0.45
MAX_FACTOR_DELTA = 0.9
MAX_HUE_TURNS = 0.25
MAX_BLUR_SIGMA = 2.0
MAX_POSTERIZE_BITS_REMOVED = 4


def _shear_degrees(coefficient: jax.Array) -> jax.Array:
    return jnp.rad2deg(jnp.arctan(coefficient))


# name -> (signed strength s*m, image shape) -> forward matrix
GEOMETRIC_CANDIDATES = {
    'rotate': lambda v, shape: affine.rotation_matrix(MAX_ROTATE_DEGREES * v),
    'shear_x': lambda v, shape: affine.shear_matrix(_shear_degrees(MAX_SHEAR * v), 0.0),
    'shear_y': lambda v, shape: affine.shear_matrix(0.0, _shear_degrees(MAX_SHEAR * v)),
    'translate_x': lambda v, shape: affine.translation_matrix(
        MAX_TRANSLATE_FRACTION * v * shape[1], 0.0
    ),
    'translate_y': lambda v, shape: affine.translation_matrix(
        0.0, MAX_TRANSLATE_FRACTION * v * shape[0]
    ),
}

# name -> (image, signed strength s*m, unsigned magnitude m) -> image
PHOTOMETRIC_CANDIDATES = {
    'brightness': lambda x, v, m: photometric.adjust_brightness(x, 1 + MAX_FACTOR_DELTA * v),
    'contrast': lambda x, v, m: photometric.adjust_contrast(x, 1 + MAX_FACTOR_DELTA * v),
    'saturation': lambda x, v, m: photometric.adjust_saturation(x, 1 + MAX_FACTOR_DELTA * v),
    'hue': lambda x, v, m: photometric.adjust_hue(x, MAX_HUE_TURNS * v),
    'gaussian_blur': lambda x, v, m: photometric.gaussian_blur_image(
        x, MAX_BLUR_SIGMA * m, photometric.blur_kernel_size(MAX_BLUR_SIGMA * m)
    ),
    'autocontrast': lambda x, v, m: color.autocontrast(x),
    'equalize': lambda x, v, m: color.equalize(x),
    'sharpness': lambda x, v, m: color.adjust_sharpness(x, 1 + MAX_FACTOR_DELTA * v),
    # The threshold on the 0-255 level scale, moved to the [0, 1] scale of the images.
    'solarize': lambda x, v, m: color.solarize(x, 256.0 * (1 - m) / 255.0),
    'posterize': lambda x, v, m: color.posterize(x, 8 - round(MAX_POSTERIZE_BITS_REMOVED * m)),
}

CANDIDATES = ('identity', *GEOMETRIC_CANDIDATES, *PHOTOMETRIC_CANDIDATES)
UNSCALED_OPS = ('autocontrast', 'equalize')
PAPER_OPS = tuple(name for name in CANDIDATES if name not in ('hue', 'gaussian_blur'))


def _sample(u, shape, *, num_ops, ops, p, **_) -> Draw:
    return {
        'apply': below(u[0], p),
        'op_index': integer_below(u[1 : num_ops + 1], len(ops)),
        'sign': jnp.where(u[num_ops + 1 : 2 * num_ops + 1] < 0.5, 1.0, -1.0),
    }


def _apply(key, image, draw, *, num_ops, magnitude, ops, fill_mode, fill_value, **_) -> jax.Array:
    m = magnitude / 10
    out = image
    if any(name in GEOMETRIC_CANDIDATES for name in ops):
        matrix = affine.identity_matrix()
        for layer in range(num_ops):
            strength = draw['sign'][layer] * m
            choices = jnp.stack(
                [
                    GEOMETRIC_CANDIDATES[name](strength, image.shape)
                    if name in GEOMETRIC_CANDIDATES
                    else affine.identity_matrix()
                    for name in ops
                ]
            )
            matrix = affine.compose(choices[draw['op_index'][layer]], matrix)
        out = affine.warp(out, matrix, fill_mode, fill_value)
    if any(name in PHOTOMETRIC_CANDIDATES for name in ops):

        def branch(name):
            if name in PHOTOMETRIC_CANDIDATES:
                return lambda x, v: PHOTOMETRIC_CANDIDATES[name](x, v, m)
            return lambda x, v: x

        branches = [branch(name) for name in ops]
        for layer in range(num_ops):
            out = jax.lax.switch(draw['op_index'][layer], branches, out, draw['sign'][layer] * m)
    return jnp.where(draw['apply'], out, image)


randaugment = OpSpec(
    'randaugment',
    POLICY,
    'N ops drawn per example from `ops`, each at magnitude M (0-10) with a random sign; '
    'see data/augment/randaugment.py for the magnitude table',
    {
        'num_ops': Param('int', 2, 'ops drawn per example (with replacement)', 0, 10),
        'magnitude': Param('float', 9.0, 'strength on the 0-10 scale', 0.0, 10.0),
        'ops': Param(
            'names', PAPER_OPS, "the candidate ops (default: the paper's 14)", choices=CANDIDATES
        ),
        'p': probability(),
        'fill_mode': Param(
            'choice', 'constant', 'how points outside the input are filled', choices=FILL_MODES
        ),
        'fill_value': Param('float', 0.0, "value of 'constant' fill", 0.0, 1.0),
    },
    sample=_sample,
    draws=lambda num_ops, **_: 2 * num_ops + 1,
    apply=_apply,
)
