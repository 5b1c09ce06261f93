"""Accuracy of a trained classifier on test images moved by per-image affine warps: the
invariance lesson's shifted and rotated test sets and the deformable comparison's rotated and
zoomed one are both built here, with data/augment's bilinear warp (black fill)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data.augment.affine import compose, rotation_matrix, scale_matrix, translation_matrix, warp


def affine_matrices(
    degrees: np.ndarray,
    dx: np.ndarray | None = None,
    dy: np.ndarray | None = None,
    zoom: np.ndarray | None = None,
) -> jax.Array:
    """(N, 3, 3) matrices: zoom about the centre, then rotate by `degrees`, then translate."""
    degrees = jnp.asarray(degrees, jnp.float32)
    ones, zeros = jnp.ones_like(degrees), jnp.zeros_like(degrees)
    dx = zeros if dx is None else jnp.asarray(dx, jnp.float32)
    dy = zeros if dy is None else jnp.asarray(dy, jnp.float32)
    zoom = ones if zoom is None else jnp.asarray(zoom, jnp.float32)

    def one(angle, x, y, z):
        rotated = compose(rotation_matrix(angle), scale_matrix(z, z))
        return compose(translation_matrix(x, y), rotated)

    return jax.vmap(one)(degrees, dx, dy, zoom)


def random_rotation_zoom(
    count: int, max_zoom: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image angles uniform in [0, 360) and zooms log-uniform in [1/max_zoom, max_zoom]: a
    fixed draw, so every model meets the same test set."""
    rng = np.random.default_rng(seed)
    degrees = rng.uniform(0.0, 360.0, count).astype(np.float32)
    zoom = np.exp(rng.uniform(-np.log(max_zoom), np.log(max_zoom), count)).astype(np.float32)
    return degrees, zoom


def warped_accuracy_fn(
    trained: Any, batch_size: int = 1000
) -> Callable[[jax.Array, jax.Array, jax.Array], float]:
    """accuracy(images, labels, matrices) of a restored run (`experiments.analysis.runs`) on
    unit-range (N, H, W, C) images, each warped by its (3, 3) matrix; `batch_size` images per
    forward pass."""

    @jax.jit
    def correct(images, labels, matrices) -> jax.Array:
        warped = jax.vmap(warp)(images, matrices)
        logits = trained.model.apply(trained.variables, trained.task.standardise(warped))
        return jnp.sum(jnp.argmax(logits, -1) == labels)

    def accuracy(images: jax.Array, labels: jax.Array, matrices: jax.Array) -> float:
        total = 0
        for start in range(0, len(labels), batch_size):
            end = start + batch_size
            total += int(correct(images[start:end], labels[start:end], matrices[start:end]))
        return total / len(labels)

    return accuracy
