"""Tests for the classic ConvNets: AlexNet, VGG, GoogLeNet, BN-Inception, Inception v3 and
Inception-ResNet-v2 — parameter counts against torchvision/timm, the Inception grid sizes, the
shared pooling helpers, and the error messages. The tiny forward/backward passes and the
auxiliary-logit protocol are tested in test_nets_classic_tiny.py.

Full-size models are only sized with `jax.eval_shape`, so the file stays well under a minute on
two busy CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
from nets.layers import blocks
from nets.layers.inception_blocks import max_pool
from nets.models.alexnet import local_response_norm
from nets.models.inception import InceptionA, InceptionV1Block, InceptionV2Block
from tests.nets_harness import fast_jit, rng

IMAGENET_INPUT = (1, 224, 224, 3)
INCEPTION_V3_INPUT = (1, 299, 299, 3)


# --------------------------------------------------------------------------- parameter counts

# (name, overrides, input shape) -> torchvision (timm for inception_resnet_v2) parameter count.
ANCHORS = [
    ('alexnet', {}, IMAGENET_INPUT, 61_100_840),
    ('vgg11', {}, IMAGENET_INPUT, 132_863_336),
    ('vgg13', {}, IMAGENET_INPUT, 133_047_848),
    ('vgg16', {}, IMAGENET_INPUT, 138_357_544),
    ('vgg19', {}, IMAGENET_INPUT, 143_667_240),
    ('vgg16_bn', {}, IMAGENET_INPUT, 138_365_992),
    ('vgg19_bn', {}, IMAGENET_INPUT, 143_678_248),
    ('googlenet', dict(aux_logits=False), IMAGENET_INPUT, 6_624_904),
    ('googlenet', {}, IMAGENET_INPUT, 13_004_888),
    ('inception_v3', {}, INCEPTION_V3_INPUT, 27_161_264),
    ('inception_v3', dict(aux_logits=False), INCEPTION_V3_INPUT, 23_834_568),
    ('inception_resnet_v2', {}, INCEPTION_V3_INPUT, 55_843_464),
]


@functools.cache
def _count(name: str, shape: tuple[int, ...], overrides: tuple[tuple[str, object], ...]) -> int:
    return nets.count_params(nets.create(name, **dict(overrides)), shape)


def count(name: str, shape: tuple[int, ...], **overrides) -> int:
    """`nets.count_params` of a registered model, cached: several tests size the same big model."""
    return _count(name, shape, tuple(sorted(overrides.items())))


@pytest.mark.parametrize(
    'name, overrides, shape, expected',
    ANCHORS,
    ids=[f'{n}-{"-".join(f"{k}={v}" for k, v in o.items())}' for n, o, _, _ in ANCHORS],
)
def test_param_count_matches_reference(name, overrides, shape, expected):
    assert count(name, shape, num_classes=1000, **overrides) == expected


def conv_bn(cin: int, cout: int, k: int) -> int:
    """Parameters of a bias-free k x k conv + BatchNorm (scale, bias)."""
    return k * k * cin * cout + 2 * cout


def test_vgg_bn_adds_scale_and_bias_per_conv_channel():
    for depth, convs in ((11, (1, 1, 2, 2, 2)), (13, (2, 2, 2, 2, 2))):
        plain = count(f'vgg{depth}', IMAGENET_INPUT, num_classes=1000)
        with_bn = count(f'vgg{depth}_bn', IMAGENET_INPUT, num_classes=1000)
        assert with_bn - plain == 2 * sum(n * w for n, w in zip(convs, (64, 128, 256, 512, 512)))


def test_inception_modules_closed_form():
    # GoogLeNet 3a on 192 channels: 1x1 | 1x1-3x3 | 1x1-3x3 (torchvision) or 5x5 | pool-1x1.
    for wide in (3, 5):
        block = InceptionV1Block(features=(64, 96, 128, 16, 32, 32), wide_kernel_size=wide)
        expected = (
            conv_bn(192, 64, 1)
            + conv_bn(192, 96, 1)
            + conv_bn(96, 128, 3)
            + conv_bn(192, 16, 1)
            + conv_bn(16, 32, wide)
            + conv_bn(192, 32, 1)
        )
        assert nets.count_params(block, (1, 28, 28, 192)) == expected
    # BN-Inception 3a: the 5x5 branch becomes 1x1 (64) - 3x3 (96) - 3x3 (96).
    block = InceptionV2Block(features=(64, 64, 64, 64, 96, 32), pool='avg')
    expected = (
        conv_bn(192, 64, 1)
        + conv_bn(192, 64, 1)
        + conv_bn(64, 64, 3)
        + conv_bn(192, 64, 1)
        + conv_bn(64, 96, 3)
        + conv_bn(96, 96, 3)
        + conv_bn(192, 32, 1)
    )
    assert expected == 219_072  # 3 x 12,416 + 36,992 + 55,488 + 83,136 + 6,208, by hand
    assert nets.count_params(block, (1, 28, 28, 192)) == expected
    # BN-Inception 3c (stride 2): no 1x1 branch, the max pool passes its 320 channels through.
    block = InceptionV2Block(features=(0, 128, 160, 64, 96, 0), pool='max', strides=2)
    expected = (
        conv_bn(320, 128, 1)
        + conv_bn(128, 160, 3)
        + conv_bn(320, 64, 1)
        + conv_bn(64, 96, 3)
        + conv_bn(96, 96, 3)
    )
    assert nets.count_params(block, (1, 28, 28, 320)) == expected
    # Inception v3 Mixed_5b: 1x1 64 | 1x1 48-5x5 64 | 1x1 64-3x3 96-3x3 96 | pool-1x1 32.
    expected = (
        conv_bn(192, 64, 1)
        + conv_bn(192, 48, 1)
        + conv_bn(48, 64, 5)
        + conv_bn(192, 64, 1)
        + conv_bn(64, 96, 3)
        + conv_bn(96, 96, 3)
        + conv_bn(192, 32, 1)
    )
    assert nets.count_params(InceptionA(pool_features=32), (1, 35, 35, 192)) == expected


def test_inception_v2_whole_model_size():
    total = count('inception_v2', IMAGENET_INPUT, num_classes=1000)
    # The paper gives no count; BN-Inception implementations have about 11.3M.
    assert 10.5e6 < total < 12e6
    assert total == 11_285_224  # this layout (pinned so changes are deliberate)


def test_aux_heads_add_their_closed_form_parameters():
    googlenet = count('googlenet', IMAGENET_INPUT, num_classes=1000)
    googlenet_no_aux = count('googlenet', IMAGENET_INPUT, num_classes=1000, aux_logits=False)
    # Each: 1x1 conv 128 + BN, FC 2048 -> 1024, FC 1024 -> 1000; on 4a (512) and 4d (528).
    head = lambda cin: conv_bn(cin, 128, 1) + (2048 * 1024 + 1024) + (1024 * 1000 + 1000)  # noqa: E731
    assert googlenet - googlenet_no_aux == head(512) + head(528)
    v3 = count('inception_v3', INCEPTION_V3_INPUT, num_classes=1000)
    v3_no_aux = count('inception_v3', INCEPTION_V3_INPUT, num_classes=1000, aux_logits=False)
    assert v3 - v3_no_aux == conv_bn(768, 128, 1) + conv_bn(128, 768, 5) + (768 * 1000 + 1000)


def test_small_input_options_shrink_the_classifier():
    # Global pooling instead of 6x6 / 7x7: the first FC layer sees the channels only.
    # AlexNet: torchvision's convs hold 2,469,696 parameters, 23,296 of them in the 11x11 conv1.
    alexnet = nets.count_params(
        nets.create('alexnet', stem='small', num_classes=10), (1, 28, 28, 1)
    )
    assert alexnet == (9 * 1 * 64 + 64) + (2_469_696 - 23_296) + (256 * 4096 + 4096) + (
        4096 * 4096 + 4096
    ) + (4096 * 10 + 10)
    vgg = nets.create('vgg16', stem='small', fc_width=512, num_classes=10)
    convs = 138_357_544 - (25088 * 4096 + 4096) - (4096 * 4096 + 4096) - (4096 * 1000 + 1000)
    assert nets.count_params(vgg, (1, 28, 28, 1)) == convs - 2 * 64 * 9 + (512 * 512 + 512) * 2 + (
        512 * 10 + 10
    )
    # pooled_size overrides the stem default: 2x2 of the last 32 channels (width 4) feed
    # fc1 (8 wide).
    pooled = nets.count_params(
        nets.create('vgg11', stem='small', pooled_size=2, width=4, fc_width=8), (1, 28, 28, 1)
    )
    default = nets.count_params(
        nets.create('vgg11', stem='small', width=4, fc_width=8), (1, 28, 28, 1)
    )
    assert pooled - default == (2 * 2 - 1) * 32 * 8


# --------------------------------------------------------------------------- grid sizes


@pytest.mark.parametrize(
    'name, overrides, shape, grids',
    [
        # Ceil-mode pools: 224 -> 112 -> 56 -> 28 -> 14 -> 7 (floor pools would end at 6x6).
        (
            'googlenet',
            dict(aux_logits=False),
            IMAGENET_INPUT,
            {'inception3a': 28, 'inception4a': 14, 'inception5b': 7},
        ),
        (
            'inception_v3',
            dict(aux_logits=False),
            INCEPTION_V3_INPUT,
            {'mixed_5b': 35, 'mixed_6a': 17, 'mixed_7c': 8},
        ),
    ],
)
def test_inception_grid_sizes(name, overrides, shape, grids):
    model = nets.create(name, width_multiplier=0.125, **overrides)
    capture = lambda module, method: method == '__call__' and module.name in grids  # noqa: E731
    init = functools.partial(
        model.init_with_output, {'params': rng(0)}, capture_intermediates=capture
    )
    _, variables = jax.eval_shape(init, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert {k: v['__call__'][0].shape[1] for k, v in variables['intermediates'].items()} == grids


# --------------------------------------------------------------------------- shared pieces


def reference_adaptive_avg_pool(x: np.ndarray, out: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool2d, written out cell by cell."""
    n, h, w, c = x.shape
    result = np.zeros((n, out, out, c), np.float64)
    for i in range(out):
        for j in range(out):
            h0, h1 = (i * h) // out, -(-(i + 1) * h // out)
            w0, w1 = (j * w) // out, -(-(j + 1) * w // out)
            result[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return result


def test_pooling_helpers_match_pytorch_semantics():
    data = np.random.default_rng(0)
    inputs = {
        (h, w, out): data.normal(size=(2, h, w, 3)).astype(np.float32)
        for h, w, out in [
            (13, 13, 6),
            (14, 14, 4),
            (17, 17, 5),
            (2, 2, 6),
            (1, 1, 7),
            (7, 9, 7),
            (5, 5, 1),
        ]
    }
    x = data.normal(size=(1, 7, 7, 1)).astype(np.float32)
    pooled, ceil_pooled, padded = fast_jit(
        lambda inputs, x: (
            {k: blocks.adaptive_avg_pool(v, k[2]) for k, v in inputs.items()},
            max_pool(x, 3, 2, ceil_mode=True),
            max_pool(x, 3, 2, padding=1),
        )
    )(inputs, x)
    for (h, w, out), value in inputs.items():
        if h == w:
            np.testing.assert_allclose(
                pooled[(h, w, out)], reference_adaptive_avg_pool(value, out), atol=1e-5
            )
        else:
            assert pooled[(h, w, out)].shape == (2, out, out, 3)
    # 7 -> ceil((7 - 3) / 2) + 1 = 3 either way; the last ceil-mode window would start at 6 < 7.
    assert ceil_pooled.shape == (1, 3, 3, 1) and padded.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(ceil_pooled[0, -1, -1, 0], x[0, 4:7, 4:7, 0].max())
    np.testing.assert_allclose(padded[0, 0, 0, 0], x[0, :2, :2, 0].max())

    assert (
        blocks.window_output_size(112, 3, 2, ceil_mode=True) == 56
    )  # GoogLeNet: floor would give 55
    assert blocks.window_output_size(112, 3, 2) == 55
    assert blocks.window_output_size(224, 11, 4, 2) == 55
    assert blocks.window_output_size(2, 3, 2, ceil_mode=True) == 0  # a window must fit
    assert blocks.window_output_size(8, 2, 2, ceil_mode=True) == 4
    assert blocks.scale_width(48, 0.125) == 6 and blocks.scale_width(3, 0.1) == 1


def test_local_response_norm_matches_formula():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype(np.float32) * 30
    y = np.asarray(fast_jit(local_response_norm)(x))
    squares = np.pad(x.astype(np.float64) ** 2, [(0, 0)] * 3 + [(2, 2)])
    window = sum(squares[..., i : i + 7] for i in range(5))
    np.testing.assert_allclose(y, x / (2.0 + 1e-4 * window) ** 0.75, rtol=1e-5)


# --------------------------------------------------------------------------- registry and errors


def test_registered_names_and_families():
    vggs = [f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')]
    assert nets.list_models('alexnet') == ['alexnet']
    assert nets.list_models('vgg') == sorted(vggs)
    assert nets.list_models('inception') == ['googlenet', 'inception_v2', 'inception_v3']
    assert nets.list_models('inception_resnet') == ['inception_resnet_v2']
    assert nets.model_defaults('vgg16_bn') == {'stage_convs': (2, 2, 3, 3, 3), 'batch_norm': True}
    assert nets.model_fields('googlenet')['aux_logits'] is True


@pytest.mark.parametrize(
    'name, min_imagenet, min_small',
    [
        ('alexnet', 63, 15),
        ('vgg16', 32, 16),
        ('googlenet', 31, 8),
        ('inception_v2', 11, 3),
        ('inception_v3', 299, 15),
        ('inception_resnet_v2', 75, 15),
    ],
)
def test_min_input_sizes(name, min_imagenet, min_small):
    assert nets.create(name).min_input_size() == min_imagenet
    assert nets.create(name, stem='small').min_input_size() == min_small
    # Every small stem takes Fashion-MNIST; the v3 aux head alone needs the 17x17 grid of ~299 px.
    assert min_small <= 28
    if name == 'inception_v3':
        assert nets.create(name, aux_logits=False).min_input_size() == 75


@pytest.mark.parametrize(
    'name, overrides, size, minimum',
    [
        ('alexnet', {}, 28, 63),
        ('vgg11', {}, 28, 32),
        ('vgg11_bn', dict(stem='small'), 12, 16),
        ('googlenet', {}, 28, 31),
        ('inception_v2', dict(stem='small'), 2, 3),
        ('inception_v3', {}, 224, 299),
        ('inception_resnet_v2', {}, 64, 75),
    ],
)
def test_too_small_input_names_size_and_minimum(name, overrides, size, minimum):
    with pytest.raises(ValueError) as err:
        nets.count_params(nets.create(name, **overrides), (1, size, size, 3))
    message = str(err.value)
    assert f'{size}x{size}' in message and f'{minimum}x{minimum}' in message
    if overrides.get('stem') != 'small':
        assert "stem='small'" in message


@pytest.mark.parametrize(
    'name, field, value, valid_choice',
    [
        ('alexnet', 'stem', 'cifar', 'small'),
        ('alexnet', 'activation', 'relu6', 'relu'),
        ('vgg16', 'stem', 'tiny', 'imagenet'),
        ('vgg16_bn', 'kernel_init', 'kaiming', 'he_normal'),
        ('googlenet', 'stem', 'mnist', 'small'),
        ('googlenet', 'wide_kernel_size', 7, '5'),
        ('inception_v2', 'activation', 'mish', 'silu'),
        ('inception_v3', 'stem', 'cifar', 'imagenet'),
        ('inception_resnet_v2', 'kernel_init', 'kaiming', 'orthogonal'),
    ],
)
def test_invalid_choice_names_value_and_choices(name, field, value, valid_choice):
    with pytest.raises(ValueError) as err:
        nets.create(name, **{field: value})
    assert str(value) in str(err.value) and valid_choice in str(err.value)


@pytest.mark.parametrize(
    'name, overrides, fragment',
    [
        ('alexnet', dict(dropout_rate=1.0), 'dropout_rate'),
        ('alexnet', dict(width=0), 'width'),
        ('vgg11', dict(stage_convs=(1, 1, 2)), 'stage_convs'),
        ('vgg11', dict(fc_width=0), 'fc_width'),
        ('vgg11', dict(pooled_size=0), 'pooled_size'),
        ('googlenet', dict(width_multiplier=0.0), 'width_multiplier'),
        ('googlenet', dict(aux_loss_weight=-0.3), 'aux_loss_weight'),
        ('inception_v3', dict(dropout_rate=-0.1), 'dropout_rate'),
        ('inception_resnet_v2', dict(num_blocks=(10, 20)), 'num_blocks'),
        ('inception_resnet_v2', dict(residual_scales=(0.17, 0.0, 0.2)), 'residual_scales'),
    ],
)
def test_invalid_values_fail_in_create(name, overrides, fragment):
    with pytest.raises(ValueError) as err:
        nets.create(name, **overrides)
    assert fragment in str(err.value) and str(list(overrides.values())[0]) in str(err.value)
