"""Augmentation properties, not snapshots: identities, exact geometric equalities, sampled
values inside their declared ranges, determinism, dtype and range, label mixing, and the
pipeline's checks. Images are tiny and compiles are shared, so the file runs in well under a
minute on 2 cores."""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data import augment
from data.augment import affine, photometric
from data.augment.spec import MAX_STANDARD_NORMAL, MIXING

KEY = jax.random.PRNGKey(0)

# Parameters at which every op is the identity. Every op must appear here.
IDENTITY = {
    'rotate': {'degrees': 0.0},
    'translate': {'max_pixels': 0.0},
    'scale': {'min_factor': 1.0, 'max_factor': 1.0},
    'flip_lr': {'p': 0.0},
    'flip_ud': {'p': 0.0},
    'shear': {'degrees': 0.0},
    'stretch': {'max_factor': 1.0},
    'center_crop': {'min_fraction': 1.0},
    'random_resized_crop': {'scale': 1.0, 'ratio': 9 / 7},  # the whole 7x9 image
    'brightness': {'max_delta': 0.0},
    'contrast': {'max_delta': 0.0},
    'saturation': {'max_delta': 0.0},
    'hue': {'max_delta': 0.0},
    'color_jitter': {'brightness': 0.0, 'contrast': 0.0, 'saturation': 0.0, 'hue': 0.0},
    'gaussian_noise': {'stddev': 0.0},
    'gaussian_blur': {'sigma': 0.0},
    'pca_lighting': {'alphastd': 0.0},
    'cutout': {'area': 0.0},
    'random_erasing': {'p': 0.0},
    # Every candidate but autocontrast and equalize (no magnitude) is the identity at M=0.
    'randaugment': {
        'magnitude': 0.0,
        'ops': ['identity', 'rotate', 'translate_x', 'sharpness', 'solarize', 'posterize'],
    },
    'mixup': {'alpha': 0.0},
    'cutmix': {'alpha': 0.0},
}

# A pipeline touching every kind of op, shared by the determinism and dtype tests.
CHAIN = [
    {'op': 'rotate', 'degrees': 30},
    {'op': 'translate', 'max_pixels': 2},
    {'op': 'scale'},
    {'op': 'flip_lr'},
    {'op': 'shear'},
    {'op': 'stretch'},
    {'op': 'random_resized_crop'},
    {'op': 'color_jitter'},
    {'op': 'gaussian_noise'},
    {'op': 'gaussian_blur', 'sigma': (0.1, 1.0)},
    {'op': 'cutout', 'size': 3},
    {'op': 'random_erasing', 'p': 1.0},
    {'op': 'randaugment', 'ops': ['rotate', 'translate_x', 'contrast', 'hue']},
    {'op': 'mixup', 'alpha': 0.4},
    {'op': 'cutmix', 'p': 0.5},
]


def random_images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


# LLVM's optimisations (not XLA's graph passes) take about half of the compile time on CPU,
# and no property tested here depends on them.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def pipeline_of(ops, num_classes=5):
    return jax.jit(
        augment.make_augmenter(ops, num_classes=num_classes), compiler_options=FAST_COMPILE
    )


# ---------------------------------------------------------------------------- identities


def test_identity_parameters_give_the_identity():
    assert set(IDENTITY) == set(augment.OPS), 'every op needs its identity parameters here'
    per_example = [
        {'op': op, **params} for op, params in IDENTITY.items() if augment.OPS[op].kind != MIXING
    ]
    mixing = [
        {'op': op, **params} for op, params in IDENTITY.items() if augment.OPS[op].kind == MIXING
    ]
    images = random_images((4, 7, 9, 3))
    labels = np.array([0, 1, 2, 4])
    out, probs = pipeline_of(per_example + mixing)(KEY, images, labels)
    # The hue op's RGB -> HSV -> RGB round trip is exact only to float rounding.
    np.testing.assert_allclose(out, images, atol=2e-6)
    np.testing.assert_array_equal(probs, np.eye(5)[labels])


def test_flip_twice_is_the_identity():
    image = random_images((5, 6, 2))

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def flips(x):
        lr = augment.flip_lr(KEY, x, p=1.0)
        ud = augment.flip_ud(KEY, x, p=1.0)
        return lr, ud, augment.flip_lr(KEY, lr, p=1.0), augment.flip_ud(KEY, ud, p=1.0)

    lr, ud, lr_lr, ud_ud = flips(image)
    np.testing.assert_array_equal(lr, image[:, ::-1])
    np.testing.assert_array_equal(ud, image[::-1])
    np.testing.assert_array_equal(lr_lr, image)
    np.testing.assert_array_equal(ud_ud, image)


@pytest.mark.parametrize('size', [8, 7])
def test_rotation_by_90_degrees_equals_rot90(size):
    image = random_images((size, size, 2))
    turns = {1: 90.0, 2: 180.0, 3: 270.0, -1: -90.0}

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def rotations(x):
        return {k: augment.rotate(KEY, x, degrees=(d, d)) for k, d in turns.items()}

    for k, rotated in rotations(image).items():
        np.testing.assert_allclose(
            rotated, np.rot90(image, k, axes=(0, 1)), atol=1e-5, err_msg=f'{turns[k]} degrees'
        )


def test_compose_and_invert_are_the_matrix_product_and_inverse():
    rng = np.random.default_rng(3)
    for _ in range(3):
        a, b = (
            affine.compose(
                affine.compose(
                    affine.rotation_matrix(rng.uniform(-180, 180)),
                    affine.shear_matrix(*rng.uniform(-30, 30, 2)),
                ),
                affine.translation_matrix(*rng.uniform(-5, 5, 2)),
            )
            for _ in range(2)
        )
        np.testing.assert_allclose(affine.compose(a, b), np.asarray(a) @ np.asarray(b), atol=1e-5)
        np.testing.assert_allclose(affine.compose(affine.invert_affine(a), a), np.eye(3), atol=1e-5)


_warp_translate = {
    mode: jax.jit(
        lambda x, dx, dy, mode=mode: affine.warp(x, affine.translation_matrix(dx, dy), mode, 0.25),
        compiler_options=FAST_COMPILE,
    )
    for mode in augment.FILL_MODES
}
_NUMPY_PAD = {'constant': 'constant', 'nearest': 'edge', 'reflect': 'symmetric', 'wrap': 'wrap'}


@settings(max_examples=25, deadline=None)
@given(dx=st.integers(-5, 5), dy=st.integers(-5, 5), mode=st.sampled_from(augment.FILL_MODES))
def test_integer_translation_is_a_shifted_copy(dx, dy, mode):
    height, width, pad = 7, 9, 6
    image = random_images((height, width, 2), seed=(dx + 5) * 11 + dy + 5)
    out = np.asarray(_warp_translate[mode](image, float(dx), float(dy)))
    # Inside the valid region, a shifted copy: out[i, j] = image[i - dy, j - dx].
    rows, cols = slice(max(dy, 0), height + min(dy, 0)), slice(max(dx, 0), width + min(dx, 0))
    src_rows = slice(max(-dy, 0), height + min(-dy, 0))
    src_cols = slice(max(-dx, 0), width + min(-dx, 0))
    np.testing.assert_allclose(out[rows, cols], image[src_rows, src_cols], atol=1e-6)
    # Outside it, exactly what the fill mode promises (numpy's pad modes of the same meaning).
    kwargs = {'constant_values': 0.25} if mode == 'constant' else {}
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=_NUMPY_PAD[mode], **kwargs)
    expected = padded[pad - dy : pad - dy + height, pad - dx : pad - dx + width]
    np.testing.assert_allclose(out, expected, atol=1e-6)


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def _colour_identities(image):
    grey = jnp.repeat(image[..., :1], 3, axis=-1)
    return {
        'hue_third': photometric.adjust_hue(image, 1 / 3),
        'grey': grey,
        'grey_saturated': photometric.adjust_saturation(grey, 1.7),
        'grey_hue': photometric.adjust_hue(grey, 0.3),
        'blurred_constant': photometric.gaussian_blur_image(jnp.full_like(image, 0.3), 1.5, 9),
    }


def test_colour_and_blur_identities():
    image = random_images((6, 5, 4))
    out = _colour_identities(image)
    # A third of a turn of hue sends red to green, green to blue, blue to red; channel 4 passes.
    np.testing.assert_allclose(out['hue_third'][..., :3], image[..., [2, 0, 1]], atol=1e-5)
    np.testing.assert_array_equal(out['hue_third'][..., 3], image[..., 3])
    # Grey pixels have no saturation or hue to change.
    np.testing.assert_allclose(out['grey_saturated'], out['grey'], atol=1e-6)
    np.testing.assert_allclose(out['grey_hue'], out['grey'], atol=1e-6)
    np.testing.assert_allclose(out['blurred_constant'], 0.3, atol=1e-6)


def test_saturation_and_hue_are_no_ops_on_one_channel_images():
    images = random_images((3, 6, 6, 1))
    out, _ = pipeline_of([{'op': 'saturation', 'max_delta': 1.0}, {'op': 'hue', 'max_delta': 0.5}])(
        KEY, images, np.zeros(3, np.int32)
    )
    np.testing.assert_array_equal(out, images)


# ---------------------------------------------------------------------------- sampled values


def _check_in(values, low, high, what):
    values = np.asarray(values)
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, (
        f'{what}: [{values.min()}, {values.max()}] not inside [{low}, {high}]'
    )


SHAPE = (20, 30, 3)
# (op, parameters) whose sampled values the range test checks; all drawn in one compile.
RANGE_CASES = {
    'rotate': {'degrees': (-30, 45)},
    'translate': {'max_pixels': 3},
    'scale': {'min_factor': 0.5, 'max_factor': 2.0},
    'flip_lr': {'p': 0.3},
    'shear': {},
    'stretch': {},
    'center_crop': {'min_fraction': 0.5, 'max_fraction': 0.9},
    'random_resized_crop': {},
    'brightness': {'max_delta': 0.3},
    'contrast': {'max_delta': 0.3},
    'saturation': {'max_delta': 0.3},
    'hue': {'max_delta': 0.2},
    'color_jitter': {'brightness': 0.1, 'contrast': 0.2, 'saturation': 0.3, 'hue': 0.05},
    'gaussian_blur': {'sigma': (0.5, 1.5)},
    'pca_lighting': {'alphastd': 0.1},
    'cutout': {'size': 4},
    'random_erasing': {'p': 1.0},
    'randaugment': {'num_ops': 3, 'ops': ['rotate', 'hue']},
}


@functools.partial(jax.jit, static_argnums=1, compiler_options=FAST_COMPILE)
def _draw_all(key, count):
    """Per op: `count` draws from random uniforms plus the extremes 0 and 1-, and the same draws
    from those uniforms padded with NaNs (sample() must read only the `draws` it declares)."""
    draws, again = {}, {}
    for i, (op, params) in enumerate(RANGE_CASES.items()):
        spec = augment.OPS[op]
        resolved = spec.resolve(params)
        n = spec.num_draws(resolved)
        u = jax.random.uniform(jax.random.fold_in(key, i), (count, n))
        u = jnp.concatenate(
            [u, jnp.zeros((1, n)), jnp.full((1, n), np.nextafter(np.float32(1), 0))]
        )
        padded = jnp.concatenate([u, jnp.full((len(u), 3), jnp.nan)], axis=1)
        draws[op] = jax.vmap(
            lambda v, spec=spec, resolved=resolved: spec.sample(v, SHAPE, **resolved)
        )(u)
        again[op] = jax.vmap(
            lambda v, spec=spec, resolved=resolved: spec.sample(v, SHAPE, **resolved)
        )(padded)
    return draws, again


def test_sampled_parameters_stay_in_their_ranges():
    # Every per-example op with a sampled value (flip_ud samples like flip_lr; noise draws only p).
    per_example = {op for op, spec in augment.OPS.items() if spec.kind != MIXING}
    assert set(RANGE_CASES) == per_example - {'flip_ud', 'gaussian_noise'}
    all_draws, again = jax.tree.map(np.asarray, _draw_all(jax.random.PRNGKey(1), 2000))
    for op in all_draws:
        for name in all_draws[op]:
            np.testing.assert_array_equal(
                all_draws[op][name],
                again[op][name],
                err_msg=f'{op}.{name} reads more uniforms than it declares',
            )
    d = all_draws['rotate']
    _check_in(d['degrees'], -30, 45, 'rotate')
    d = all_draws['translate']
    _check_in(d['dx'], -3, 3, 'dx'), _check_in(d['dy'], -3, 3, 'dy')
    d = all_draws['scale']
    _check_in(d['factor'], 0.5, 2.0, 'scale')
    assert abs(np.mean(d['factor'] < 1) - 0.5) < 0.05, 'log-uniform: shrinking as likely as growing'
    assert abs(all_draws['flip_lr']['apply'].mean() - 0.3) < 0.05
    _check_in(all_draws['shear']['degrees'], -20, 20, 'shear')
    _check_in(all_draws['stretch']['factor'], 1 / 1.3, 1.3, 'stretch')
    _check_in(all_draws['center_crop']['fraction'], 0.5, 0.9, 'center_crop')
    d = all_draws['random_resized_crop']
    w, h = d['crop_width'], d['crop_height']
    whole = (w == 30) & (h == 20)  # the fallback after ten rejected boxes
    assert whole.mean() < 0.01
    _check_in((w * h / 600)[~whole], 0.08, 1.0, 'crop area')
    _check_in((w / h)[~whole], 3 / 4, 4 / 3, 'crop aspect')
    _check_in(np.abs(d['center_x']) + w / 2, 0, 15, 'crop inside (x)')
    _check_in(np.abs(d['center_y']) + h / 2, 0, 10, 'crop inside (y)')
    for op in ('brightness', 'contrast', 'saturation'):
        _check_in(all_draws[op]['factor'], 0.7, 1.3, op)
    _check_in(all_draws['hue']['delta'], -0.2, 0.2, 'hue')
    d = all_draws['color_jitter']
    for name, delta in (('brightness', 0.1), ('contrast', 0.2), ('saturation', 0.3)):
        _check_in(d[name], 1 - delta, 1 + delta, f'color_jitter.{name}')
    _check_in(d['hue'], -0.05, 0.05, 'color_jitter.hue')
    _check_in(all_draws['gaussian_blur']['sigma'], 0.5, 1.5, 'blur sigma')
    alpha = all_draws['pca_lighting']['alpha']
    _check_in(alpha, -0.1 * MAX_STANDARD_NORMAL, 0.1 * MAX_STANDARD_NORMAL, 'lighting alpha')
    assert np.all(np.abs(alpha[:-2].std(axis=0) - 0.1) < 0.01), 'alpha ~ N(0, alphastd^2)'
    d = all_draws['cutout']
    _check_in(d['top'] + 2, 0, 19, 'cutout centre row')
    _check_in(d['left'] + 2, 0, 29, 'cutout centre column')
    d = all_draws['random_erasing']
    applied = d['apply']
    assert applied.mean() > 0.99
    top, left, h, w = (d[k][applied] for k in ('top', 'left', 'height', 'width'))
    _check_in(top, 0, 20, 'erasing top'), _check_in(top + h, 0, 20, 'erasing bottom')
    _check_in(left, 0, 30, 'erasing left'), _check_in(left + w, 0, 30, 'erasing right')
    # Box sides are whole pixels: the area is the target area up to that rounding.
    _check_in((h + 0.5) * (w + 0.5) / 600, 0.02, np.inf, 'erasing area (low)')
    _check_in((h - 0.5) * (w - 0.5) / 600, 0, 1 / 3, 'erasing area (high)')
    d = all_draws['randaugment']
    _check_in(d['op_index'], 0, 1, 'randaugment op index')
    assert set(np.unique(d['sign'])) == {-1.0, 1.0}
    assert len(np.unique(d['op_index'][:, 0])) == 2


def test_mixing_weights_stay_in_range():
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def lams(keys):
        out = {}
        for op, alpha in (('mixup', 0.4), ('cutmix', 1.0)):
            spec = augment.OPS[op]
            params = spec.resolve({'alpha': alpha})
            out[op] = jax.vmap(
                lambda k, spec=spec, params=params: spec.sample(k, (8, 6, 10, 1), **params)['lam']
            )(keys)
        return out

    for op, lam in lams(jax.random.split(KEY, 500)).items():
        _check_in(lam, 0, 1, f'{op} lam')
        assert np.std(lam) > 0.1


# ---------------------------------------------------------------------------- pipelines


@pytest.fixture(scope='module')
def chain():
    return pipeline_of(CHAIN)


def test_same_key_same_output_and_different_keys_differ(chain):
    images, labels = random_images((6, 10, 12, 3)), np.arange(6) % 5
    a, probs_a = chain(KEY, images, labels)
    b, probs_b = chain(KEY, images, labels)
    c, _ = chain(jax.random.PRNGKey(1), images, labels)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(probs_a, probs_b)
    assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 0.01
    # Each example gets its own key: identical inputs come out different.
    out, _ = chain(KEY, np.repeat(images[:1], 6, axis=0), labels)
    assert all(np.abs(np.asarray(out[0] - out[i])).mean() > 0.01 for i in range(1, 6))


_SMALL_CHAIN = pipeline_of(
    [{'op': 'rotate'}, {'op': 'color_jitter'}, {'op': 'random_erasing'}, {'op': 'cutmix'}]
)


@pytest.mark.parametrize(
    'shape,dtype',
    [((6, 10, 12, 3), np.float32), ((3, 9, 7, 1), jnp.bfloat16), ((4, 6, 6, 4), np.uint8)],
)
def test_outputs_keep_dtype_shape_and_range(chain, shape, dtype):
    images = random_images(shape)
    images = (images * 255).astype(np.uint8) if dtype == np.uint8 else jnp.asarray(images, dtype)
    # The full chain on the first shape (compiled once for the determinism test too), a
    # smaller one on the other sizes, channel counts and dtypes.
    augmenter = chain if dtype == np.float32 else _SMALL_CHAIN
    out, probs = augmenter(KEY, images, np.arange(shape[0]) % 5)
    assert out.shape == shape and out.dtype == dtype
    high = 255 if dtype == np.uint8 else 1.0
    assert float(jnp.min(out)) >= 0 and float(jnp.max(out)) <= high
    assert probs.shape == (shape[0], 5) and probs.dtype == jnp.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert np.all(np.asarray(probs) >= 0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_mixup_and_cutmix_label_weights_sum_to_one_and_match_the_mixed_area(seed):
    batch = 5
    colours = np.linspace(0.1, 0.9, batch, dtype=np.float32)
    images = np.broadcast_to(colours[:, None, None, None], (batch, 8, 10, 1)).copy()
    labels = np.arange(batch)
    key = jax.random.PRNGKey(seed)
    partner = labels[::-1]
    # mixup: every pixel of example i is lam_i * c_i + (1 - lam_i) * c_partner.
    out, probs = _mixup(key, images, labels)
    out, probs = np.asarray(out), np.asarray(probs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    for i in range(batch):
        if partner[i] == i:
            assert probs[i, i] == pytest.approx(1.0)
            continue
        lam = (out[i] - colours[partner[i]]) / (colours[i] - colours[partner[i]])
        np.testing.assert_allclose(lam, probs[i, i], atol=1e-4)
        assert probs[i, i] + probs[i, partner[i]] == pytest.approx(1.0, abs=1e-6)
    # cutmix: the partner's label weight is the fraction of its pixels in the image.
    out, probs = _cutmix(key, images, labels)
    out, probs = np.asarray(out), np.asarray(probs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    for i in range(batch):
        if partner[i] == i:
            continue
        from_partner = np.mean(np.isclose(out[i], colours[partner[i]]))
        assert probs[i, partner[i]] == pytest.approx(from_partner, abs=1e-6)
        assert probs[i, i] == pytest.approx(1 - from_partner, abs=1e-6)


_mixup = pipeline_of([{'op': 'mixup', 'alpha': 1.0}])
_cutmix = pipeline_of([{'op': 'cutmix', 'alpha': 1.0}])


def test_mixes_labels_flag():
    assert not augment.make_augmenter([{'op': 'rotate'}], num_classes=3).mixes_labels
    assert augment.make_augmenter([{'op': 'rotate'}, {'op': 'cutmix'}], num_classes=3).mixes_labels
    assert not augment.make_augmenter([], num_classes=3).mixes_labels


def _count_primitive(jaxpr, name: str) -> int:
    """Occurrences of a primitive in a jaxpr, counting inside nested jaxprs (jit, vmap, cond)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _count_primitive(sub.jaxpr, name)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _count_primitive(sub, name)
    return count


def _gathers(augmenter, shape=(2, 6, 6, 1)) -> int:
    closed = jax.make_jaxpr(augmenter)(KEY, jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32))
    return _count_primitive(closed.jaxpr, 'gather')


def test_consecutive_geometric_ops_cost_one_warp():
    five = [
        {'op': 'rotate'},
        {'op': 'translate'},
        {'op': 'scale'},
        {'op': 'flip_lr'},
        {'op': 'shear'},
    ]
    fused = augment.make_augmenter(five, num_classes=2)
    assert fused.num_warps == 1 and _gathers(fused) == 1
    split = augment.make_augmenter(five[:2] + [{'op': 'brightness'}] + five[2:], num_classes=2)
    assert split.num_warps == 2 and _gathers(split) == 2


def test_a_run_shares_the_fill_set_on_any_of_its_ops():
    augmenter = augment.make_augmenter(
        [
            {'op': 'rotate'},
            {'op': 'translate', 'fill_mode': 'reflect'},
            {'op': 'brightness'},
            {'op': 'scale'},
        ],
        num_classes=2,
    )
    first, second = augmenter.plan.per_example[0], augmenter.plan.per_example[2]
    assert [s.params['fill_mode'] for s in first] == ['reflect', 'reflect']
    assert second[0].params['fill_mode'] == 'constant'


def test_sharded_batch_gives_the_same_output():
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ('data',))
    batch = 2 * len(devices)
    images, labels = random_images((batch, 6, 8, 3)), np.arange(batch) % 3
    augmenter = pipeline_of(
        [{'op': 'rotate'}, {'op': 'brightness'}, {'op': 'mixup'}], num_classes=3
    )
    expected = augmenter(KEY, images, labels)
    sharding = NamedSharding(mesh, PartitionSpec('data'))
    sharded = augmenter(KEY, jax.device_put(images, sharding), jax.device_put(labels, sharding))
    for a, b in zip(expected, sharded):
        np.testing.assert_allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    'ops,message',
    [
        ([{'op': 'rotat'}], r"ops\[0\]: unknown augmentation op 'rotat'; valid ops: .*'rotate'"),
        (
            [{'op': 'rotate'}, {'op': 'flip', 'p': 1}],
            r"ops\[1\]: unknown augmentation op 'flip'.*'flip_lr'",
        ),
        ([{'degrees': 3}], r"no 'op' key.*valid ops"),
        (
            [{'op': 'rotate', 'degree': 3}],
            r"'rotate' has no parameter 'degree'; its parameters: \['degrees'",
        ),
        ([{'op': 'rotate', 'degrees': 400}], r'degrees=400 is invalid; valid: .*\[-360, 360\]'),
        ([{'op': 'rotate', 'degrees': (10, -10)}], r'low > high'),
        (
            [{'op': 'translate', 'max_pixels': -1}],
            r'max_pixels=-1 is invalid; valid: a float in \[0, 10000\]',
        ),
        ([{'op': 'flip_lr', 'p': 1.5}], r'p=1.5 is invalid; valid: a float in \[0, 1\]'),
        ([{'op': 'scale', 'min_factor': 2.0}], r'min_factor=2.0 must be <= max_factor=1.6'),
        (
            [{'op': 'scale', 'max_factor': 0}],
            r'max_factor=0 is invalid; valid: a float in \(0, 100\]',
        ),
        ([{'op': 'gaussian_blur', 'kernel_size': 4}], r'kernel_size=4 must be odd'),
        ([{'op': 'cutout', 'size': 2.5}], r'size=2.5 is invalid \(not an integer\)'),
        (
            [{'op': 'rotate', 'fill_mode': 'mirror'}],
            r"fill_mode='mirror' is invalid; valid: one of \['constant'",
        ),
        (
            [{'op': 'randaugment', 'ops': ['rotate', 'invert']}],
            r"a list of names from \['identity'",
        ),
        (
            [{'op': 'mixup'}, {'op': 'rotate'}],
            r"'mixup' mixes whole batches and must come after .*'rotate'",
        ),
        (
            [{'op': 'rotate', 'fill_mode': 'reflect'}, {'op': 'scale', 'fill_mode': 'wrap'}],
            r"consecutive geometric ops.*different fill_mode \('reflect' and 'wrap'\)",
        ),
        ('rotate', r'must be a list of dicts'),
    ],
)
def test_check_ops_names_the_bad_value_and_the_valid_choices(ops, message):
    with pytest.raises(ValueError, match=message):
        augment.check_ops(ops)


def test_check_ops_accepts_config_style_values():
    augment.check_ops(
        [
            {'op': 'rotate', 'degrees': [-10, 10]},
            {'op': 'translate', 'max_pixels': 4},
            {'op': 'randaugment', 'ops': ['rotate', 'hue'], 'num_ops': 1.0},
            {'op': 'cutmix', 'alpha': 1},
        ]
    )
    augment.check_ops([])
    with pytest.raises(ValueError, match='num_classes must be a positive int'):
        augment.make_augmenter([], num_classes=0)
