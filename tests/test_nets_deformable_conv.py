"""Tests for the deformable convolution (nets/models/deformable.py): `deformable_conv` against a
plain-loop numpy reference, integer offsets against a shifted plain conv, zero offsets and unit
masks against `nn.Conv`, and its argument errors. Each test compiles one tiny jitted function.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nets.models.deformable import DeformableConv, deformable_conv
from tests.nets_harness import fast_jit, rng


def reference_deformable_conv(x, kernel, offsets, masks, stride, pad, dilation):
    """Deformable conv by plain loops over examples, output pixels, taps and channels."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    taps = kh * kw
    groups = offsets.shape[-1] // (2 * taps)
    out_h = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * pad - dilation * (kw - 1) - 1) // stride + 1

    def bilinear(b, y, xx, c):
        total = 0.0
        for yy in (math.floor(y), math.floor(y) + 1):
            for xc in (math.floor(xx), math.floor(xx) + 1):
                if 0 <= yy < h and 0 <= xc < w:  # zero outside the image
                    total += (1 - abs(y - yy)) * (1 - abs(xx - xc)) * x[b, yy, xc, c]
        return total

    out = np.zeros((n, out_h, out_w, cout))
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                for a in range(kh):
                    for q in range(kw):
                        k = a * kw + q
                        for c in range(cin):
                            g = c // (cin // groups)
                            dy, dx = offsets[b, i, j, 2 * (g * taps + k) : 2 * (g * taps + k) + 2]
                            m = 1.0 if masks is None else masks[b, i, j, g * taps + k]
                            y = i * stride - pad + a * dilation + dy
                            xx = j * stride - pad + q * dilation + dx
                            out[b, i, j] += m * bilinear(b, y, xx, c) * kernel[a, q, c]
    return out


# (stride, dilation, offset groups, masks)
REFERENCE_CASES = [
    (1, 1, 1, True),
    (2, 1, 1, True),
    (1, 2, 1, False),
    (2, 2, 2, True),
    (1, 1, 2, False),
]


def test_deformable_conv_matches_loop_reference():
    data = np.random.default_rng(0)
    x = data.normal(size=(1, 5, 6, 2))
    kernel = data.normal(size=(3, 3, 2, 3))
    inputs, wanted = [], []
    for stride, dilation, groups, use_masks in REFERENCE_CASES:
        pad = dilation
        out_h = (5 + 2 * pad - 2 * dilation - 1) // stride + 1
        out_w = (6 + 2 * pad - 2 * dilation - 1) // stride + 1
        # Offsets up to a few pixels: samples fall between pixels and past the border.
        offsets = data.normal(scale=1.5, size=(1, out_h, out_w, groups * 18))
        masks = data.uniform(size=(1, out_h, out_w, groups * 9)) if use_masks else None
        inputs.append((offsets, masks))
        wanted.append(reference_deformable_conv(x, kernel, offsets, masks, stride, pad, dilation))

    def run(x, kernel, inputs):
        return [
            deformable_conv(
                x, kernel, offsets, masks, strides=stride, padding=dilation, dilation=dilation
            )
            for (offsets, masks), (stride, dilation, _, _) in zip(inputs, REFERENCE_CASES)
        ]

    as32 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), tree)  # noqa: E731
    got = fast_jit(run)(as32(x), as32(kernel), as32(inputs))
    for case, out, want in zip(REFERENCE_CASES, got, wanted):
        assert out.shape == want.shape, case
        np.testing.assert_allclose(out, want, atol=2e-5, rtol=1e-5, err_msg=str(case))


def test_deformable_conv_integer_offsets_shift_the_grid():
    # An integer offset (dy, dx) on every tap is a plain conv of the shifted
    # (zero-filled) image: checks the (dy, dx) order and the border handling.
    data = np.random.default_rng(1)
    x = data.normal(size=(1, 6, 7, 2)).astype(np.float32)
    kernel = data.normal(size=(3, 3, 2, 4)).astype(np.float32)
    offsets = np.tile(np.array([2.0, -1.0], np.float32), (1, 6, 7, 9))

    def run(x, kernel, offsets):
        # Tap (a, b) of output (i, j) reads x[i + 1 + a, j - 2 + b]: a VALID conv of
        # shifted[u, v] = x[u + 1, v - 2], zero where that falls outside x.
        shifted = jnp.pad(x[:, 1:], ((0, 0), (0, 3), (2, 0), (0, 0)))
        plain = jax.lax.conv_general_dilated(
            shifted, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
        )
        return deformable_conv(x, kernel, offsets, padding=1), plain

    out, plain = fast_jit(run)(x, kernel, offsets)
    np.testing.assert_allclose(out, plain, atol=1e-5)


# (version, stride, dilation, offset groups)
PLAIN_CASES = [('v1', 1, 1, 1), ('v2', 2, 1, 2), ('v2', 1, 2, 1), ('v1', 2, 2, 2)]


def test_zero_offsets_and_unit_masks_equal_plain_conv():
    data = np.random.default_rng(2)
    x = data.normal(size=(2, 9, 8, 4)).astype(np.float32)
    kernel = data.normal(size=(3, 3, 4, 5)).astype(np.float32)
    bias = data.normal(size=(5,)).astype(np.float32)
    layers_and_params = []
    for version, stride, dilation, groups in PLAIN_CASES:
        # mask_scale=2: v2's zero mask logits (its initial state) give masks of exactly 2·0.5 = 1.
        layer = DeformableConv(
            5,
            3,
            strides=stride,
            dilation=dilation,
            version=version,
            offset_groups=groups,
            mask_scale=2.0,
        )
        channels = (3 if version == 'v2' else 2) * 9 * groups
        offset = {
            'kernel': np.zeros((3, 3, 4, channels), np.float32),
            'bias': np.zeros(channels, np.float32),
        }
        layers_and_params.append((layer, {'kernel': kernel, 'bias': bias, 'offset': offset}))

    def run(x):
        results = []
        for (layer, params), (_, stride, dilation, groups) in zip(layers_and_params, PLAIN_CASES):
            plain = nn.Conv(
                5,
                (3, 3),
                strides=stride,
                padding=[(dilation, dilation)] * 2,
                kernel_dilation=dilation,
            ).apply({'params': {'kernel': kernel, 'bias': bias}}, x)
            zeros = jnp.zeros(plain.shape[:3] + (18 * groups,))
            core = deformable_conv(
                x, kernel, zeros, strides=stride, padding=dilation, dilation=dilation
            )
            results.append((layer.apply({'params': params}, x), plain, core + bias))
        # DCNv2's own initialisation (mask_scale=1): masks 0.5, half the plain conv.
        v2_offset = {'kernel': jnp.zeros((3, 3, 4, 27)), 'bias': jnp.zeros(27)}
        half = DeformableConv(5, 3, use_bias=False).apply(
            {'params': {'kernel': kernel, 'offset': v2_offset}}, x
        )
        no_bias = nn.Conv(5, (3, 3), padding=1, use_bias=False).apply(
            {'params': {'kernel': kernel}}, x
        )
        # Padding by name: TensorFlow 'SAME' puts the extra row/column of a strided conv last.
        same = nn.Conv(5, (3, 3), strides=2, padding='SAME', use_bias=False).apply(
            {'params': {'kernel': kernel}}, x
        )
        core_same = deformable_conv(
            x, kernel, jnp.zeros(same.shape[:3] + (18,)), strides=2, padding='SAME'
        )
        return results, (half, no_bias), (same, core_same)

    results, (half, no_bias), (same, core_same) = fast_jit(run)(x)
    for case, (layer_out, plain_out, core_out) in zip(PLAIN_CASES, results):
        assert layer_out.shape == plain_out.shape, case
        np.testing.assert_allclose(layer_out, plain_out, atol=1e-5, err_msg=str(case))
        np.testing.assert_allclose(core_out, plain_out, atol=1e-5, err_msg=str(case))
    np.testing.assert_allclose(half, 0.5 * no_bias, atol=1e-5)
    assert same.shape == (2, 5, 4, 5)
    np.testing.assert_allclose(core_same, same, atol=1e-5)


def test_deformable_conv_rejects_bad_arguments():
    x = jnp.zeros((1, 5, 5, 4))
    kernel = jnp.zeros((3, 3, 4, 2))
    with pytest.raises(ValueError, match=r'offsets must have shape \(1, 5, 5, G\*18\)'):
        deformable_conv(x, kernel, jnp.zeros((1, 5, 5, 17)), padding=1)
    with pytest.raises(ValueError, match='3 offset groups do not divide the 4 input channels'):
        deformable_conv(x, kernel, jnp.zeros((1, 5, 5, 54)), padding=1)
    with pytest.raises(
        ValueError, match=r"Unknown padding 'FULL'; valid choices: \['SAME', 'VALID'\]"
    ):
        deformable_conv(x, kernel, jnp.zeros((1, 5, 5, 18)), padding='full')
    with pytest.raises(ValueError) as err:
        DeformableConv(4, version='v3')
    assert 'v3' in str(err.value) and 'v1' in str(err.value) and 'v2' in str(err.value)
    with pytest.raises(ValueError, match='offset_groups 3 does not divide the 4 input channels'):
        jax.eval_shape(DeformableConv(4, offset_groups=3).init, rng(0), x)
