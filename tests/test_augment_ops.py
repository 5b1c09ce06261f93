"""The colour ops of data/augment/color.py against small numpy references and PIL (which timm's
RandAugment calls) on uint8-valued images, their RandAugment magnitudes, PCA lighting, and the
spec checks of the new names. Images are tiny and the jitted functions are shared."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from data import augment
from data.augment import color
from data.augment.spec import MAX_STANDARD_NORMAL

randaugment_module = importlib.import_module('data.augment.randaugment')

FAST_COMPILE = {'xla_backend_optimization_level': 0}
SHAPES = [(32, 30, 3), (17, 33, 1)]  # >= 256 pixels, so equalize has a non-zero step


def uint8_images(shape, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.uint8)


def unit(levels):
    return np.asarray(levels, np.float32) / np.float32(255)


# ---------------------------------------------------------------------------- numpy references


def np_autocontrast(x):
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    spread = high - low
    out = (x - low) / np.where(spread > 0, spread, 1)
    return np.where(spread > 0, out, x)


def np_equalize(levels):
    """PIL.ImageOps.equalize's lookup table, channel by channel."""
    out = levels.copy()
    for c in range(levels.shape[-1]):
        histogram = np.bincount(levels[..., c].ravel(), minlength=256)
        used = histogram[histogram > 0]
        step = (used.sum() - used[-1]) // 255
        if step == 0:
            continue
        lut, running = [], step // 2
        for count in histogram:
            lut.append(min(running // step, 255))
            running += count
        out[..., c] = np.array(lut)[levels[..., c]]
    return out


def np_posterize(levels, bits):
    return levels & ~np.uint8(2 ** (8 - bits) - 1)


def np_solarize(levels, threshold):
    return np.where(levels >= threshold, 255 - levels, levels)


def np_sharpness(x, factor):
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = x.copy()
    for i in range(1, x.shape[0] - 1):
        for j in range(1, x.shape[1] - 1):
            smooth[i, j] = np.einsum('ij,ijc->c', kernel, x[i - 1 : i + 2, j - 1 : j + 2])
    return np.clip(smooth + factor * (x - smooth), 0, 1)


def np_lighting(x, alpha):
    shift = color.IMAGENET_EIGENVECTORS @ (alpha * color.IMAGENET_EIGENVALUES)
    return np.clip(x + shift, 0, 1)


def pil_apply(operation, levels):
    """A PIL.ImageOps/ImageEnhance function on an (H, W, C) uint8 array."""
    grey = levels.shape[-1] == 1
    out = np.asarray(operation(Image.fromarray(levels[..., 0] if grey else levels)))
    return out[..., None] if grey else out


# ---------------------------------------------------------------------------- the functions


@functools.partial(jax.jit, static_argnames=('bits',), compiler_options=FAST_COMPILE)
def _ops(x, threshold, factor, bits):
    return {
        'autocontrast': color.autocontrast(x),
        'equalize': color.equalize(x),
        'posterize': color.posterize(x, bits),
        'solarize': color.solarize(x, threshold),
        'sharpness': color.adjust_sharpness(x, factor),
    }


def _levels(x):
    return np.round(np.asarray(x) * 255).astype(np.uint8)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('low,high', [(0, 256), (90, 150)])  # full range and low contrast
def test_ops_match_numpy_and_pil(shape, low, high):
    levels = uint8_images(shape, seed=shape[0] + low, low=low, high=high)
    x = unit(levels)
    threshold, factor, bits = 120, 1.7, 3
    out = _ops(x, np.float32(threshold) / np.float32(255), factor, bits)
    for name, value in out.items():
        assert value.shape == x.shape and value.dtype == jnp.float32, name
    np.testing.assert_allclose(out['autocontrast'], np_autocontrast(x), atol=1e-6)
    np.testing.assert_array_equal(_levels(out['equalize']), np_equalize(levels))
    np.testing.assert_array_equal(_levels(out['posterize']), np_posterize(levels, bits))
    np.testing.assert_array_equal(_levels(out['solarize']), np_solarize(levels, threshold))
    np.testing.assert_allclose(out['sharpness'], np_sharpness(x, factor), atol=1e-6)
    # PIL, which rounds its intermediate images: exact, or within one level where it does.
    np.testing.assert_array_equal(_levels(out['equalize']), pil_apply(ImageOps.equalize, levels))
    np.testing.assert_array_equal(
        _levels(out['posterize']), pil_apply(lambda im: ImageOps.posterize(im, bits), levels)
    )
    np.testing.assert_array_equal(
        _levels(out['solarize']), pil_apply(lambda im: ImageOps.solarize(im, threshold), levels)
    )
    for name, operation in (
        ('autocontrast', ImageOps.autocontrast),
        ('sharpness', lambda im: ImageEnhance.Sharpness(im).enhance(factor)),
    ):
        difference = _levels(out[name]).astype(int) - pil_apply(operation, levels)
        assert np.abs(difference).max() <= 1, name


def test_edge_cases():
    constant = np.full((16, 16, 2), 0.4, np.float32)
    out = _ops(constant, 2.0, 0.0, 8)
    for name in ('autocontrast', 'equalize', 'posterize', 'solarize', 'sharpness'):
        np.testing.assert_array_equal(out[name], constant, err_msg=name)
    x = unit(uint8_images((16, 16, 3)))
    out = _ops(x, 0.0, 1.0, 8)
    np.testing.assert_allclose(out['solarize'], 1 - x)  # threshold 0 inverts everything
    np.testing.assert_allclose(out['sharpness'], x, atol=1e-6)  # factor 1 is the identity
    np.testing.assert_array_equal(_ops(x, 2.0, 1.0, 0)['posterize'], 0 * x)  # no bits kept
    tiny = unit(uint8_images((2, 5, 3)))  # all border: nothing to smooth
    np.testing.assert_array_equal(color.adjust_sharpness(tiny, 0.0), tiny)
    with pytest.raises(ValueError, match=r'bits=9 is invalid; valid: an int in \[0, 8\]'):
        color.posterize(x, 9)


def test_ops_vmap_over_a_batch():
    levels = uint8_images((3, 16, 17, 3), seed=3)
    batch = jax.jit(jax.vmap(color.equalize), compiler_options=FAST_COMPILE)(unit(levels))
    for image, out in zip(levels, batch):
        np.testing.assert_array_equal(_levels(out), np_equalize(image))


# ---------------------------------------------------------------------------- RandAugment


def _randaugment_one(op, magnitude, images, seed):
    """Each image through randaugment with `op` as the only candidate, one op, always applied."""
    params = dict(ops=[op], num_ops=1, magnitude=magnitude)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(images))
    run = jax.vmap(lambda key, image: augment.OPS['randaugment'](key, image, **params))
    return np.asarray(jax.jit(run, compiler_options=FAST_COMPILE)(keys, images))


@pytest.mark.parametrize('magnitude', [3.0, 10.0])
def test_randaugment_magnitudes(magnitude):
    m = magnitude / 10
    images = unit(uint8_images((4, 16, 16, 3), seed=int(magnitude)))
    expected = {
        'autocontrast': [np_autocontrast(x) for x in images],
        'equalize': [unit(np_equalize(_levels(x))) for x in images],
        'posterize': [unit(np_posterize(_levels(x), 8 - round(4 * m))) for x in images],
        'solarize': [unit(np_solarize(_levels(x), 256 * (1 - m))) for x in images],
    }
    for op, want in expected.items():
        np.testing.assert_allclose(_randaugment_one(op, magnitude, images, 0), want, atol=1e-6)
    # Sharpness takes a random sign: factor 1 + 0.9 m or 1 - 0.9 m.
    out = _randaugment_one('sharpness', magnitude, images, 0)
    for x, y in zip(images, out):
        errors = [np.abs(y - np_sharpness(x, 1 + s * 0.9 * m)).max() for s in (1, -1)]
        assert min(errors) < 1e-6


def test_randaugment_defaults_to_the_papers_ops_and_magnitude_zero_is_the_identity():
    assert augment.OPS['randaugment'].params['ops'].default == randaugment_module.PAPER_OPS
    assert len(randaugment_module.PAPER_OPS) == 14
    scaled = [
        op for op in randaugment_module.CANDIDATES if op not in randaugment_module.UNSCALED_OPS
    ]
    images = np.random.default_rng(0).uniform(size=(8, 9, 7, 3)).astype(np.float32)
    pipeline = augment.make_augmenter(
        [{'op': 'randaugment', 'ops': scaled, 'num_ops': 3, 'magnitude': 0.0}], num_classes=2
    )
    out, _ = jax.jit(pipeline, compiler_options=FAST_COMPILE)(
        jax.random.PRNGKey(0), images, np.zeros(8, np.int32)
    )
    np.testing.assert_allclose(out, images, atol=2e-6)


# ---------------------------------------------------------------------------- PCA lighting


def test_imagenet_principal_components_are_orthonormal():
    vectors = color.IMAGENET_EIGENVECTORS
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-3)
    assert list(color.IMAGENET_EIGENVALUES) == sorted(color.IMAGENET_EIGENVALUES, reverse=True)


def test_pca_lighting_adds_the_sampled_shift():
    spec = augment.OPS['pca_lighting']
    params = spec.resolve({'alphastd': 0.1})
    u = jax.random.uniform(jax.random.PRNGKey(1), (4000, spec.num_draws(params)))
    alpha = np.asarray(jax.vmap(lambda v: spec.sample(v, (8, 8, 3), **params)['alpha'])(u))
    assert alpha.shape == (4000, 3)
    assert np.abs(alpha).max() <= 0.1 * MAX_STANDARD_NORMAL
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.06)
    np.testing.assert_allclose(alpha.mean(axis=0), 0.0, atol=0.01)
    x = unit(uint8_images((5, 6, 4), seed=2))
    draw = {'apply': jnp.asarray(True), 'alpha': jnp.asarray([1.5, -2.0, 3.0])}
    out = np.asarray(spec.apply(None, x, draw, **params))
    np.testing.assert_allclose(out[..., :3], np_lighting(x[..., :3], draw['alpha']), atol=1e-6)
    np.testing.assert_array_equal(out[..., 3], x[..., 3])  # channels past RGB pass through
    grey = x[..., :1]
    np.testing.assert_array_equal(spec.apply(None, grey, draw, **params), grey)


def test_pca_lighting_in_a_uint8_pipeline():
    levels = uint8_images((4, 8, 8, 3), seed=4)
    pipeline = augment.make_augmenter(
        [{'op': 'pca_lighting', 'alphastd': 0.5}, {'op': 'randaugment'}], num_classes=3
    )
    out, probs = jax.jit(pipeline, compiler_options=FAST_COMPILE)(
        jax.random.PRNGKey(0), levels, np.zeros(4, np.int32)
    )
    assert out.shape == levels.shape and out.dtype == jnp.uint8 and probs.shape == (4, 3)
    assert not np.array_equal(out, levels)
    off, _ = augment.make_augmenter([{'op': 'pca_lighting', 'alphastd': 0.0}], num_classes=3)(
        jax.random.PRNGKey(0), levels, np.zeros(4, np.int32)
    )
    np.testing.assert_array_equal(off, levels)


# ---------------------------------------------------------------------------- spec checks


@pytest.mark.parametrize(
    'ops,message',
    [
        (
            [{'op': 'pca_lighting', 'alphastd': -0.1}],
            r'alphastd=-0.1 is invalid; valid: a float in \[0, 1\]',
        ),
        ([{'op': 'pca_lighting', 'alpha_std': 0.1}], r"no parameter 'alpha_std'.*'alphastd'"),
        (
            [{'op': 'randaugment', 'ops': ['solarize', 'invert']}],
            r"ops=\['solarize', 'invert'\] is invalid; valid: a list of names from \[.*'posterize'",
        ),
        ([{'op': 'lighting'}], r"unknown augmentation op 'lighting'.*'pca_lighting'"),
    ],
)
def test_bad_values_of_the_new_names_are_rejected(ops, message):
    with pytest.raises(ValueError, match=message):
        augment.check_ops(ops)


def test_the_new_names_pass_the_checks():
    augment.check_ops(
        [
            {'op': 'pca_lighting'},
            {'op': 'pca_lighting', 'alphastd': 0.2, 'p': 0.5},
            {
                'op': 'randaugment',
                'ops': ['autocontrast', 'equalize', 'posterize', 'solarize', 'sharpness'],
            },
        ]
    )
    assert augment.OPS['pca_lighting'].kind == 'photometric'
