"""How good are generated images: the Fréchet distance in the feature space of a classifier
trained by this codebase, its real-vs-real floor, and class coverage.

Fréchet distance between the Gaussians fitted to two feature sets (Heusel et al.'s FID, with
our own classifier in place of Inception, so the numbers are NOT comparable with published
FIDs):
    FD = ||μ₁ - μ₂||² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^½).
The trace of the matrix square root is computed as tr((Σ₁^½ Σ₂ Σ₁^½)^½) (similar matrices, same
eigenvalues), whose argument is symmetric positive semi-definite: two symmetric eigen-
decompositions in float64, tiny negative eigenvalues (rounding) clipped to 0, no complex parts
to discard (scipy.linalg.sqrtm of the non-symmetric Σ₁ Σ₂ can return them).

The estimate is biased upwards for finite samples, so a number means little alone: `real_floor`
is the distance between two disjoint halves of real data of the same size, the value a perfect
generator would get at that sample size.

Features (`FeatureExtractor`): the input of a trained classifier's final Dense layer (`head`),
i.e. its penultimate-layer activations, captured with `flax.linen.intercept_methods` from the
ordinary forward pass in eval mode; the same pass gives the predicted classes for coverage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.analysis.runs import load_run


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D) (unbiased, float64)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f'need (N >= 2, D) features, got shape {features.shape}')
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f'shapes differ: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}'
        )
    root1 = _psd_sqrt(sigma1)
    middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
    distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))  # rounding can dip a zero distance just below 0


def feature_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def disjoint_halves(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random index sets of count // 2 each."""
    order = np.random.default_rng(seed).permutation(count)
    half = count // 2
    return np.sort(order[:half]), np.sort(order[half : 2 * half])


def real_floor(features: np.ndarray, seed: int = 0) -> float:
    """The distance between two disjoint halves of real features: what a generator that draws
    from the data distribution itself scores with as many samples as one half."""
    first, second = disjoint_halves(len(features), seed)
    return feature_distance(features[first], features[second])


def class_coverage(predicted: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """(fraction of the classes predicted for at least one sample, histogram of the fraction
    of samples per class)."""
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=num_classes)[:num_classes]
    return float(np.mean(counts > 0)), counts / max(counts.sum(), 1)


def to_pixels(images: np.ndarray | jax.Array) -> np.ndarray:
    """Generated images in [-1, 1] -> uint8 pixels, as a PNG would store them (real images are
    quantised too, so both sides reach the classifier alike)."""
    images = (np.asarray(images, np.float32) + 1.0) / 2.0
    return np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)


class FeatureExtractor:
    """Penultimate-layer features and predicted classes of the classifier trained in `workdir`
    (any model whose final layer is a Dense named `head`, as every classifier here has)."""

    def __init__(self, workdir: str | Path, batch_size: int = 500):
        run = load_run(workdir)
        if run.config.task != 'classify':
            raise ValueError(f'{workdir} holds a {run.config.task!r} run, not a classifier')
        self.run = run
        self.num_classes = run.info.num_classes
        self.batch_size = batch_size
        self._forward = jax.jit(self._features_and_logits)

    def _features_and_logits(
        self, variables: dict[str, Any], pixels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        captured = []

        def grab_head_input(next_fun, args, kwargs, context):
            if (
                context.method_name == '__call__'
                and context.module.scope is not None
                and context.module.scope.path == ('head',)
            ):
                captured.append(args[0])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(grab_head_input):
            logits = self.run.model.apply(variables, self.run.task.normalise(pixels), train=False)
        if len(captured) != 1:
            raise ValueError(
                f'{type(self.run.model).__name__} has no top-level Dense "head" '
                'whose input could serve as features'
            )
        return captured[0].astype(jnp.float32), logits

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) -> (features (N, D), predicted classes (N,))."""
        features, predicted = [], []
        for start in range(0, len(pixels), self.batch_size):
            f, logits = self._forward(
                self.run.variables, jnp.asarray(pixels[start : start + self.batch_size])
            )
            features.append(np.asarray(f))
            predicted.append(np.asarray(jnp.argmax(logits, -1)))
        return np.concatenate(features), np.concatenate(predicted)
