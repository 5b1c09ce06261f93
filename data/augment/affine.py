"""3x3 affine matrices and the one bilinear warp that applies them (the geometric ops of
`data/augment/geometry.py` build their matrices from these).

Coordinate convention. A pixel at row i, column j of an H x W image has centred coordinates
    x = j - (W - 1) / 2      (to the right)
    y = i - (H - 1) / 2      (downwards)
so the origin is the centre of the image: rotations, scalings, shears and flips keep the
centre fixed. A geometric op's matrix A is *forward*: the content at (x, y) of its input moves
to A @ (x, y, 1) in its output. Positive rotation angles turn the content counter-clockwise
as displayed (like `np.rot90` with k=1); positive translations move it right and down.

Composition. The pipeline multiplies the matrices of consecutive geometric ops, op1 first:
    M = A_n @ ... @ A_2 @ A_1
and warps once: every output pixel p reads the input at M^-1 @ p by bilinear interpolation.
Points that fall outside the input take their value from the fill mode:
    'constant'  the fill value (interpolated with the border pixels, so edges are smooth)
    'nearest'   the nearest edge pixel
    'reflect'   the image mirrored about its edge (d c b a | a b c d | d c b a)
    'wrap'      the image repeated (a b c d | a b c d | a b c d)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

FILL_MODES = ('constant', 'nearest', 'reflect', 'wrap')


# ---------------------------------------------------------------------------- matrices


def identity_matrix() -> jax.Array:
    return jnp.eye(3, dtype=jnp.float32)


def _affine(a: Any, b: Any, tx: Any, c: Any, d: Any, ty: Any) -> jax.Array:
    zero, one = jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32)
    rows = [[a, b, tx], [c, d, ty], [zero, zero, one]]
    return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in row]) for row in rows])


def rotation_matrix(degrees: Any) -> jax.Array:
    """Counter-clockwise (as displayed) rotation about the image centre."""
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # With y pointing down, (cos, sin; -sin, cos) turns the x axis towards -y: upwards.
    return _affine(cos, sin, 0.0, -sin, cos, 0.0)


def translation_matrix(dx: Any, dy: Any) -> jax.Array:
    """Moves the content dx pixels right and dy pixels down."""
    return _affine(1.0, 0.0, dx, 0.0, 1.0, dy)


def scale_matrix(sx: Any, sy: Any) -> jax.Array:
    """Magnifies the content by sx horizontally and sy vertically (> 1 zooms in)."""
    return _affine(sx, 0.0, 0.0, 0.0, sy, 0.0)


def shear_matrix(degrees_x: Any = 0.0, degrees_y: Any = 0.0) -> jax.Array:
    """x += tan(degrees_x) * y and y += tan(degrees_y) * x: verticals lean by degrees_x."""
    shx = jnp.tan(jnp.deg2rad(jnp.asarray(degrees_x, jnp.float32)))
    shy = jnp.tan(jnp.deg2rad(jnp.asarray(degrees_y, jnp.float32)))
    return _affine(1.0, shx, 0.0, shy, 1.0, 0.0)


def compose(later: jax.Array, earlier: jax.Array) -> jax.Array:
    """later @ earlier for affine matrices, written out element by element: it fuses with the
    code around it (a matmul is a kernel of its own on GPU), and stays exact float32 where
    GPUs (TF32) and TPUs (bfloat16 passes) would round a float32 matmul to ~3 digits."""
    a, b, tx, c, d, ty = (
        later[0, 0],
        later[0, 1],
        later[0, 2],
        later[1, 0],
        later[1, 1],
        later[1, 2],
    )
    e, f, ux, g, h, uy = (
        earlier[0, 0],
        earlier[0, 1],
        earlier[0, 2],
        earlier[1, 0],
        earlier[1, 1],
        earlier[1, 2],
    )
    return _affine(
        a * e + b * g,
        a * f + b * h,
        a * ux + b * uy + tx,
        c * e + d * g,
        c * f + d * h,
        c * ux + d * uy + ty,
    )


def invert_affine(matrix: jax.Array) -> jax.Array:
    """Closed-form inverse of an affine 3x3 matrix (exact for flips and the identity)."""
    a, b, tx = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    c, d, ty = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return _affine(ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty))


# ---------------------------------------------------------------------------- the warp


def warp(
    image: jax.Array, matrix: jax.Array, fill_mode: str = 'constant', fill_value: float = 0.0
) -> jax.Array:
    """Resamples one (H, W, C) float image through the forward affine `matrix` (bilinear)."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f'Unknown fill_mode {fill_mode!r}; valid choices: {list(FILL_MODES)}')
    height, width, channels = image.shape
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32) - cy,
        jnp.arange(width, dtype=jnp.float32) - cx,
        indexing='ij',
    )
    inverse = invert_affine(matrix)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2] + cx
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2] + cy
    x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    # The four neighbours in one gather from the flattened image.
    rows = jnp.stack([y0, y0, y0 + 1, y0 + 1])
    cols = jnp.stack([x0, x0 + 1, x0, x0 + 1])
    if fill_mode == 'constant':
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        rows, cols = jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1)
    else:
        rows, cols = _remap(rows, height, fill_mode), _remap(cols, width, fill_mode)
    taps = jnp.take(image.reshape(height * width, channels), rows * width + cols, axis=0)
    if fill_mode == 'constant':
        taps = jnp.where(inside[..., None], taps, jnp.asarray(fill_value, image.dtype))
    v00, v01, v10, v11 = taps
    return ((1 - fy) * ((1 - fx) * v00 + fx * v01) + fy * ((1 - fx) * v10 + fx * v11)).astype(
        image.dtype
    )


def _remap(index: jax.Array, size: int, fill_mode: str) -> jax.Array:
    """Out-of-range indices -> in-range ones for the non-constant fill modes."""
    if fill_mode == 'nearest':
        return jnp.clip(index, 0, size - 1)
    if fill_mode == 'wrap':
        return jnp.mod(index, size)
    folded = jnp.mod(index, 2 * size)  # 'reflect': period 2*size, edge pixels repeated
    return jnp.where(folded < size, folded, 2 * size - 1 - folded)
