"""Tests for the `nets` model zoo: registry, parameter counts, shared layers,
attention, and a tiny jitted forward/backward pass for every model family.

Big models are only sized with `jax.eval_shape` (via `nets.count_params`);
real computation happens on tiny configurations only, so the file runs in
well under a minute on two CPU cores.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nets
from nets.layers import blocks
from nets.layers.attention import MultiHeadAttention, attention_weights, dot_product_attention
from nets.models.mlp import MLP
from nets.models.resnet import ResNet
from tests.nets_harness import TinyRun, assert_products_in_bfloat16, fast_jit, rng

IMAGENET_INPUT = (1, 224, 224, 3)


# torchvision resnet*(num_classes=1000).
RESNET_ANCHORS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
}

# Reference ViT counts at 224 px, 1000 classes, class token, learned posemb.
VIT_ANCHORS = {
    'vit_ti16': 5_717_416,
    'vit_s16': 22_050_664,
    'vit_b16': 86_567_656,
    'vit_b32': 88_224_232,
    'vit_l16': 304_326_632,
    'vit_l32': 306_535_400,
    'vit_h14': 632_045_800,
}


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize('name, expected', sorted(RESNET_ANCHORS.items()))
def test_resnet_param_count_matches_torchvision(name, expected):
    assert nets.count_params(nets.create(name, num_classes=1000), IMAGENET_INPUT) == expected


@pytest.mark.parametrize('name, expected', sorted(VIT_ANCHORS.items()))
def test_vit_param_count_matches_reference(name, expected):
    model = nets.create(name, num_classes=1000, pool='token', posemb='learned')
    count = nets.count_params(model, IMAGENET_INPUT)
    assert abs(count - expected) <= 0.005 * expected
    assert count == expected  # the layout is exact, not just close


def vit_closed_form(
    image: int,
    patch: int,
    channels: int,
    hidden: int,
    depth: int,
    mlp: int,
    num_classes: int,
    class_token: bool,
    learned_posemb: bool,
) -> int:
    tokens = (image // patch) ** 2 + class_token
    embedding = patch * patch * channels * hidden + hidden
    block = 2 * 2 * hidden + (4 * hidden * hidden + 4 * hidden) + (2 * hidden * mlp + mlp + hidden)
    return (
        embedding
        + class_token * hidden
        + learned_posemb * tokens * hidden
        + depth * block
        + 2 * hidden
        + hidden * num_classes
        + num_classes
    )


@pytest.mark.parametrize(
    'patch_size, pool, posemb',
    [
        (8, 'token', 'learned'),
        (14, 'token', 'sincos2d'),
        (28, 'gap', 'learned'),
        (32, 'gap', 'sincos2d'),
    ],
)
def test_vit_any_patch_size_and_head_options(patch_size, pool, posemb):
    model = nets.create('vit_b16', patch_size=patch_size, pool=pool, posemb=posemb)
    expected = vit_closed_form(
        224,
        patch_size,
        3,
        768,
        12,
        3072,
        1000,
        class_token=pool == 'token',
        learned_posemb=posemb == 'learned',
    )
    assert nets.count_params(model, IMAGENET_INPUT) == expected


def test_vit_representation_size_adds_pre_logits():
    base = nets.count_params(nets.create('vit_ti16'), IMAGENET_INPUT)
    with_repr = nets.count_params(nets.create('vit_ti16', representation_size=100), IMAGENET_INPUT)
    # pre_logits 192->100 (+bias), head input shrinks from 192 to 100.
    assert with_repr - base == (192 * 100 + 100) + (100 - 192) * 1000


def cifar_resnet_closed_form(
    depth: int, projection: bool, in_channels: int = 3, num_classes: int = 10
) -> int:
    """He et al. §4.2 ResNet: conv3x3 stem (16), 3 stages x n basic blocks, widths 16/32/64."""
    n = (depth - 2) // 6
    conv_bn = lambda cin, cout, k: k * k * cin * cout + 2 * cout  # noqa: E731
    total = conv_bn(in_channels, 16, 3)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv_bn(cin, width, 3) + conv_bn(width, width, 3)
            if projection and cin != width:
                total += conv_bn(cin, width, 1)
            cin = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize('depth', [20, 32, 44, 56, 110])
def test_cifar_resnet_param_count(depth):
    name = f'resnet{depth}'
    assert nets.model_defaults(name)['stage_sizes'] == ((depth - 2) // 6,) * 3
    projection = nets.count_params(nets.create(name), (1, 32, 32, 3))
    pad = nets.count_params(nets.create(name, shortcut='pad'), (1, 32, 32, 3))
    assert projection == cifar_resnet_closed_form(depth, projection=True)
    assert pad == cifar_resnet_closed_form(depth, projection=False)
    # Two projection shortcuts (16->32, 32->64), each a 1x1 conv + BN.
    assert projection - pad == (16 * 32 + 64) + (32 * 64 + 128)


def test_cifar_resnet_sizes_match_paper():
    # Paper (option A): resnet20 0.27M, resnet110 1.7M.
    assert nets.count_params(nets.create('resnet20', shortcut='pad'), (1, 32, 32, 3)) == 269_722
    assert 0.26e6 < nets.count_params(nets.create('resnet20'), (1, 32, 32, 3)) < 0.28e6
    assert 1.65e6 < nets.count_params(nets.create('resnet110'), (1, 32, 32, 3)) < 1.75e6


def test_count_params_batch_stats_adds_running_mean_and_var():
    model = nets.create('resnet20')
    params = nets.count_params(model, (1, 32, 32, 3))
    with_stats = nets.count_params(model, (1, 32, 32, 3), batch_stats=True)
    # Running mean + var per BatchNorm channel: stem 16, 6 norms per stage of width
    # 16/32/64, plus the two projection shortcuts (32 and 64).
    expected_bn = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64 + 32 + 64)
    assert with_stats - params == expected_bn


def test_mlp_and_cnn_param_counts():
    mlp = nets.create('mlp', hidden_sizes=(64, 32), num_classes=10)
    assert nets.count_params(mlp, (1, 28, 28, 1)) == (784 * 64 + 64) + (64 * 32 + 32) + (
        32 * 10 + 10
    )
    assert nets.count_params(nets.create('mlp', depth=3, width=16), (1, 40, 1)) == (
        (40 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 10 + 10)
    )
    assert nets.count_params(nets.create('mlp', depth=0), (1, 8)) == 8 * 10 + 10
    cnn = nets.create('cnn', channels=(8, 16), convs_per_stage=2, head_hidden=0)
    expected = (
        (9 * 1 * 8 + 16)
        + (9 * 8 * 8 + 16)
        + (9 * 8 * 16 + 32)
        + (9 * 16 * 16 + 32)
        + (16 * 10 + 10)
    )
    assert nets.count_params(cnn, (1, 28, 28, 1)) == expected
    # Global average pooling: the count does not depend on the input size.
    assert nets.count_params(cnn, (1, 64, 64, 1)) == expected
    cnn1d = nets.create('cnn', channels=(8, 16), kernel_size=5, head_hidden=12)
    expected1d = (
        (5 * 8 + 16)
        + (5 * 8 * 8 + 16)
        + (5 * 8 * 16 + 32)
        + (5 * 16 * 16 + 32)
        + (16 * 12 + 12)
        + (12 * 10 + 10)
    )
    assert nets.count_params(cnn1d, (1, 40, 1)) == expected1d
    # Flatten head: the classifier sees every position of the last (7x7x16) feature map.
    flat = nets.create('cnn', channels=(8, 16), convs_per_stage=1, head='flatten', head_hidden=0)
    assert nets.count_params(flat, (1, 28, 28, 1)) == (
        (9 * 1 * 8 + 16) + (9 * 8 * 16 + 32) + (7 * 7 * 16 * 10 + 10)
    )


@settings(max_examples=8, deadline=None)
@given(heads=st.integers(1, 4), head_dim=st.integers(1, 8), length=st.integers(1, 5))
def test_multi_head_attention_param_count_matches_pytorch(heads, head_dim, length):
    d = heads * head_dim
    assert (
        nets.count_params(MultiHeadAttention(num_heads=heads), (2, length, d)) == 4 * d * d + 4 * d
    )


# --------------------------------------------------------------------------- tiny forward/backward

TINY_VIT = dict(
    patch_size=4,
    hidden_size=32,
    depth=2,
    num_heads=2,
    mlp_dim=64,
    num_classes=10,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    drop_path_rate=0.1,
)

# id: (model name, overrides, input shape, has dropout, has batch norm)
CASES = {
    'mlp_image': (
        'mlp',
        dict(depth=2, width=32, dropout_rate=0.5, batch_norm=True),
        (2, 28, 28, 1),
        True,
        True,
    ),
    'mlp_signal': (
        'mlp',
        dict(hidden_sizes=(16,), activation='tanh', dropout_rate=0.5),
        (2, 40, 1),
        True,
        False,
    ),
    'cnn_image': (
        'cnn',
        dict(channels=(8, 16), dropout_rate=0.5, head_hidden=16),
        (2, 28, 28, 1),
        True,
        True,
    ),
    'cnn_signal': (
        'cnn',
        dict(channels=(8, 16), pool='avg', activation='gelu', dropout_rate=0.5),
        (2, 40, 1),
        True,
        True,
    ),
    'cnn_flatten': (
        'cnn',
        dict(channels=(8, 16), convs_per_stage=1, head='flatten', head_hidden=16, dropout_rate=0.5),
        (2, 28, 28, 1),
        True,
        True,
    ),
    'resnet18_cifar': (
        'resnet18',
        dict(stem='cifar', width=8, num_classes=10),
        (2, 32, 32, 3),
        False,
        True,
    ),
    'resnet20': ('resnet20', dict(), (2, 28, 28, 1), False, True),
    'resnet_bottleneck_pad': (
        'resnet50',
        dict(
            stage_sizes=(1, 1),
            width=4,
            num_classes=10,
            stem='imagenet',
            shortcut='pad',
            zero_init_residual=True,
        ),
        (2, 32, 32, 3),
        False,
        True,
    ),
    'vit_token_learned': (
        'vit_ti16',
        dict(TINY_VIT, pool='token', posemb='learned'),
        (2, 32, 32, 3),
        True,
        False,
    ),
    'vit_gap_sincos': (
        'vit_ti16',
        dict(TINY_VIT, pool='gap', posemb='sincos2d', representation_size=16),
        (2, 32, 32, 3),
        True,
        False,
    ),
}
BF16_CASES = ['mlp_image', 'cnn_signal', 'resnet18_cifar', 'vit_token_learned']


@functools.cache
def tiny_run(case_id: str) -> TinyRun:
    name, overrides, shape, has_dropout, has_batch_norm = CASES[case_id]
    return TinyRun(name, overrides, shape, has_dropout=has_dropout, has_batch_norm=has_batch_norm)


@pytest.mark.parametrize('case_id', sorted(CASES))
def test_tiny_train_step(case_id):
    run = tiny_run(case_id)
    num_classes = run.model.num_classes
    assert set(run.variables) == ({'params', 'batch_stats'} if run.has_batch_norm else {'params'})

    grads, (logits, updates) = run.train(seed=0)
    assert logits.shape == (run.x.shape[0], num_classes)
    assert logits.dtype == jnp.float32
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(
        run.variables['params']
    )
    # Host-side checks: eager jnp ops would compile once per leaf shape.
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(np.sum(np.abs(g))) for g in leaves) > 0

    if run.has_batch_norm:
        old, new = jax.device_get((run.variables['batch_stats'], updates['batch_stats']))
        changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), old, new)
        assert all(jax.tree_util.tree_leaves(changed)), (
            'every BatchNorm must update its running stats in train mode'
        )
    else:
        assert 'batch_stats' not in updates or not updates['batch_stats']

    eval_logits = run.eval_apply(run.variables, run.x)
    assert eval_logits.shape == (run.x.shape[0], num_classes)
    assert np.all(np.isfinite(eval_logits))


@pytest.mark.parametrize('case_id', sorted(c for c in CASES if CASES[c][3]))
def test_dropout_only_in_train_mode(case_id):
    run = tiny_run(case_id)
    _, (logits_a, _) = run.train(seed=1)
    _, (logits_a_again, _) = run.train(seed=1)
    _, (logits_b, _) = run.train(seed=2)
    np.testing.assert_array_equal(logits_a, logits_a_again)
    assert not np.allclose(logits_a, logits_b), (
        'different dropout rngs must give different train outputs'
    )
    eval_a = run.eval_apply(run.variables, run.x, rngs={'dropout': rng(1)})
    eval_b = run.eval_apply(run.variables, run.x, rngs={'dropout': rng(2)})
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(eval_a, run.eval_apply(run.variables, run.x))


@pytest.mark.parametrize('case_id', BF16_CASES)
def test_bfloat16_compute(case_id):
    run = tiny_run(case_id)
    model = nets.create(run.name, **dict(run.overrides, dtype='bfloat16'))
    assert model.dtype == jnp.bfloat16
    apply = functools.partial(model.apply, train=False)
    # Same parameter tree (param_dtype stays float32), so reuse the float32 variables.
    logits = fast_jit(apply)(run.variables, run.x)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    reference = np.asarray(run.eval_apply(run.variables, run.x))
    scale = float(np.max(np.abs(reference))) + 1e-3
    assert float(np.max(np.abs(logits - reference))) < 0.1 * scale
    # The matmuls/convs themselves must multiply bfloat16 operands, not just cast the output.
    assert_products_in_bfloat16(jax.make_jaxpr(apply)(run.variables, run.x))
    init_vars = jax.eval_shape(model.init, {'params': rng(0)}, run.x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(init_vars['params'])} == {
        jnp.dtype(jnp.float32)
    }


def test_zero_init_residual_zeroes_last_block_norm():
    run = tiny_run('resnet_bottleneck_pad')
    params = run.variables['params']
    for stage_block in ('stage0_block0', 'stage1_block0'):
        np.testing.assert_array_equal(params[stage_block]['conv3']['norm']['scale'], 0.0)
        assert float(np.min(params[stage_block]['conv1']['norm']['scale'])) == 1.0
    assert 'shortcut' not in params['stage1_block0']  # 'pad' shortcuts have no parameters


@pytest.mark.parametrize('pool, posemb', [('token', 'sincos2d'), ('gap', 'learned')])
def test_vit_other_pool_posemb_combinations(pool, posemb):
    # The two combinations not trained above, checked abstractly (no compile):
    # they recombine code paths the trained cases run.
    model = nets.create('vit_ti16', **dict(TINY_VIT, pool=pool, posemb=posemb))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    logits, variables = jax.eval_shape(lambda x: model.init_with_output({'params': rng(0)}, x), x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    params = variables['params']
    assert ('cls' in params) == (pool == 'token')
    assert ('pos_embedding' in params) == (posemb == 'learned')
    if posemb == 'learned':
        assert params['pos_embedding'].shape == (1, 64, 32)  # 8x8 patches, no class token


def test_sincos2d_posemb():
    from nets.layers.position import sincos_2d as sincos2d_posemb

    pos = sincos2d_posemb(3, 4, 8)
    assert pos.shape == (12, 8)
    assert np.all(np.abs(pos) <= 1.0)
    # Row-major grid: x varies fastest; first quarter is sin(x * omega_0) = sin(x).
    np.testing.assert_allclose(pos[:4, 0], np.sin(np.arange(4)), atol=1e-6)
    np.testing.assert_allclose(pos[::4, 4], np.sin(np.arange(3)), atol=1e-6)
    assert len({tuple(row) for row in np.round(pos, 5)}) == 12  # every position distinct
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos2d_posemb(2, 2, 6)


def test_resnet_imagenet_stem_resolution():
    # 224 px: stem conv /2, max pool /2, three strided stages /8 -> 7x7 before pooling.
    model = nets.create('resnet18', width=4)
    shapes = jax.eval_shape(
        lambda x: model.init_with_output({'params': rng(0)}, x, capture_intermediates=True),
        jax.ShapeDtypeStruct(IMAGENET_INPUT, jnp.float32),
    )
    (logits, variables) = shapes
    assert logits.shape == (1, 1000)
    last_block = variables['intermediates']['stage3_block1']['__call__'][0]
    assert last_block.shape == (1, 7, 7, 32)


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_families():
    resnets = [
        'resnet18',
        'resnet34',
        'resnet50',
        'resnet101',
        'resnet152',
        'resnet20',
        'resnet32',
        'resnet44',
        'resnet56',
        'resnet110',
    ]
    assert nets.list_models('resnet') == sorted(resnets)
    assert nets.list_models('vit') == sorted([*VIT_ANCHORS, 'vit_r50_b16'])
    assert nets.list_models('mlp') == ['mlp'] and nets.list_models('cnn') == ['cnn']
    everything = nets.list_models()
    assert everything == sorted(set(everything))
    assert set(resnets + list(VIT_ANCHORS) + ['mlp', 'cnn']) <= set(everything)
    assert {
        'cnn',
        'mlp',
        'resnet',
        'vit',
        'alexnet',
        'vgg',
        'inception',
        'inception_resnet',
        'convnext',
        'nfnet',
        'deformable',
    } <= set(nets.list_families())
    assert sum(len(nets.list_models(f)) for f in nets.list_families()) == len(everything)
    assert nets.list_models('no_such_family') == []
    assert nets.model_family('vit_b16') == 'vit'
    assert nets.model_family('resnet20') == 'resnet'


def test_model_defaults_and_fields():
    assert nets.model_defaults('resnet50') == {'stage_sizes': (3, 4, 6, 3), 'block': 'bottleneck'}
    fields = nets.model_fields('resnet50')
    assert fields['stage_sizes'] == (3, 4, 6, 3) and fields['block'] == 'bottleneck'
    assert fields['num_classes'] == 1000 and fields['stem'] == 'imagenet' and fields['width'] == 64
    assert fields['dtype'] == jnp.float32
    assert 'parent' not in fields and 'name' not in fields
    assert nets.model_fields('resnet20')['stem'] == 'cifar'
    vit_fields = nets.model_fields('vit_b32')
    assert (vit_fields['patch_size'], vit_fields['hidden_size'], vit_fields['mlp_dim']) == (
        32,
        768,
        3072,
    )
    # model_defaults returns a copy.
    nets.model_defaults('resnet50')['block'] = 'basic'
    assert nets.model_defaults('resnet50')['block'] == 'bottleneck'


def test_create_applies_overrides_and_normalises_values():
    model = nets.create('resnet18', num_classes=7, stage_sizes=[1, 1], dtype='bfloat16')
    assert isinstance(model, ResNet)
    assert model.num_classes == 7 and model.stage_sizes == (1, 1) and model.dtype == jnp.bfloat16
    assert model.block == 'basic'
    mlp = nets.create('mlp', hidden_sizes=[8, 4])
    assert mlp.hidden_sizes == (8, 4) and mlp.layer_sizes == (8, 4)
    assert nets.create('mlp', depth=3, width=5).layer_sizes == (5, 5, 5)


def test_unknown_model_name():
    with pytest.raises(ValueError) as err:
        nets.create('resnet19')
    message = str(err.value)
    assert 'resnet19' in message and 'resnet18' in message and 'vit_b16' in message
    for lookup in (nets.model_family, nets.model_defaults, nets.model_fields):
        with pytest.raises(ValueError, match='resnet19'):
            lookup('resnet19')


def test_unknown_override_key():
    with pytest.raises(ValueError) as err:
        nets.create('resnet18', widht=32)
    message = str(err.value)
    assert 'widht' in message and 'resnet18' in message
    assert 'width' in message and 'stage_sizes' in message


@pytest.mark.parametrize(
    'name, field, value, valid_choice',
    [
        ('mlp', 'activation', 'relu6', 'leaky_relu'),
        ('mlp', 'kernel_init', 'kaiming', 'he_normal'),
        ('cnn', 'pool', 'median', 'avg'),
        ('cnn', 'head', 'dense', 'flatten'),
        ('cnn', 'activation', 'mish', 'silu'),
        ('resnet18', 'stem', 'tiny', 'cifar'),
        ('resnet18', 'block', 'wide', 'bottleneck'),
        ('resnet18', 'shortcut', 'option_c', 'projection'),
        ('vit_b16', 'pool', 'cls', 'gap'),
        ('vit_b16', 'posemb', 'rope', 'sincos2d'),
        ('vit_b16', 'head_init', 'ones', 'zeros'),
    ],
)
def test_invalid_choice_names_value_and_choices(name, field, value, valid_choice):
    with pytest.raises(ValueError) as err:
        nets.create(name, **{field: value})
    assert value in str(err.value) and valid_choice in str(err.value)


@pytest.mark.parametrize(
    'name, overrides, fragment',
    [
        ('vit_b16', dict(num_heads=5), 'num_heads'),
        ('vit_b16', dict(dropout_rate=1.5), 'dropout_rate'),
        ('vit_ti16', dict(hidden_size=6, num_heads=3, posemb='sincos2d'), 'divisible by 4'),
        ('cnn', dict(channels=()), 'channels'),
        ('resnet18', dict(stage_sizes=()), 'stage_sizes'),
        ('mlp', dict(width=0), 'width'),
    ],
)
def test_invalid_values_fail_in_create(name, overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        nets.create(name, **overrides)


def test_patch_size_must_divide_image():
    model = nets.create('vit_ti16', patch_size=5)
    with pytest.raises(ValueError) as err:
        nets.count_params(model, (1, 32, 32, 3))
    assert '5' in str(err.value) and '32x32' in str(err.value)


def test_cnn_rejects_too_small_inputs():
    with pytest.raises(ValueError, match='too small'):
        nets.count_params(nets.create('cnn', channels=(4, 4, 4)), (1, 6, 1))


def test_register_rejects_duplicates_and_unknown_fields():
    with pytest.raises(ValueError, match='already registered'):
        nets.register('resnet18', ResNet, family='resnet')
    with pytest.raises(ValueError, match='depht'):
        nets.register('test_only_mlp', MLP, family='mlp', depht=3)
    assert 'test_only_mlp' not in nets.list_models()


# --------------------------------------------------------------------------- shared layers

# These small tests run each computation inside one jitted function: eager jax
# ops compile one by one, which is what makes tiny tests slow on CPU.

ACTIVATION_NAMES = (
    'relu',
    'gelu',
    'tanh',
    'sigmoid',
    'elu',
    'leaky_relu',
    'silu',
    'swish',
    'selu',
    'softplus',
    'identity',
)
INITIALIZER_NAMES = (
    'he_normal',
    'he_uniform',
    'glorot_normal',
    'xavier_normal',
    'glorot_uniform',
    'xavier_uniform',
    'lecun_normal',
    'lecun_uniform',
    'normal',
    'truncated_normal',
    'zeros',
    'orthogonal',
)


def test_activations():
    x = np.linspace(-3.0, 3.0, 13, dtype=np.float32)
    ys = fast_jit(lambda x: {name: blocks.activation(name)(x) for name in ACTIVATION_NAMES})(x)
    for name, y in ys.items():
        assert y.shape == x.shape and np.all(np.isfinite(y)), name
    np.testing.assert_allclose(ys['swish'], ys['silu'])
    np.testing.assert_allclose(ys['identity'], x)
    np.testing.assert_allclose(ys['relu'], np.maximum(x, 0))
    np.testing.assert_allclose(ys['leaky_relu'][0], -0.03, rtol=1e-5)
    # Exact (erf) GELU: gelu(1) = Phi(1) = 0.8413447.
    np.testing.assert_allclose(ys['gelu'][8], 0.8413447, rtol=1e-5)
    with pytest.raises(ValueError, match='softplus'):
        blocks.activation('relu6')


def test_initializers():
    def sample(key):
        out = {name: blocks.initializer(name)(key, (64, 32)) for name in INITIALIZER_NAMES}
        out['normal_big'] = blocks.initializer('normal')(key, (256, 256))
        out['he_big'] = blocks.initializer('he_normal')(key, (512, 512))
        out['orthogonal_square'] = blocks.initializer('orthogonal')(key, (16, 16))
        return out

    samples = jax.device_get(fast_jit(sample)(rng(0)))
    for name in INITIALIZER_NAMES:
        assert samples[name].shape == (64, 32) and samples[name].dtype == np.float32, name
    assert np.std(samples['normal_big']) == pytest.approx(0.01, rel=0.05)
    assert np.max(np.abs(samples['zeros'])) == 0.0
    assert np.var(samples['he_big']) == pytest.approx(2 / 512, rel=0.1)
    ortho = samples['orthogonal_square']
    np.testing.assert_allclose(ortho @ ortho.T, np.eye(16), atol=1e-5)
    with pytest.raises(ValueError, match='orthogonal'):
        blocks.initializer('kaiming')
    assert blocks.default_initializer_name('relu') == 'he_normal'
    assert blocks.default_initializer_name('selu') == 'lecun_normal'


@pytest.mark.parametrize(
    'shape, kernel_shape', [((2, 16, 3), (3, 3, 8)), ((2, 8, 8, 3), (3, 3, 3, 8))]
)
def test_conv_norm_act_spatial_rank_from_input(shape, kernel_shape):
    block = blocks.ConvNormAct(8, kernel_size=3, strides=2)
    plain_block = blocks.ConvNormAct(8, use_norm=False, activation='identity')
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)

    def run(key, x):
        variables = block.init(key, x)
        y, _ = block.apply(variables, x, train=True, mutable=['batch_stats'])
        return variables, y, plain_block.init(key, x)

    variables, y, plain = fast_jit(run)(rng(0), x)
    assert variables['params']['conv']['kernel'].shape == kernel_shape
    assert 'bias' not in variables['params']['conv']  # the norm has the bias
    assert y.shape == (shape[0],) + tuple(s // 2 for s in shape[1:-1]) + (8,)
    assert float(np.min(y)) >= 0.0  # relu
    assert set(plain['params']['conv']) == {'kernel', 'bias'} and 'batch_stats' not in plain


def test_mlp_block_shapes():
    block = blocks.MlpBlock(hidden_features=12, dropout_rate=0.5)
    x = np.ones((2, 5, 4), np.float32)

    def run(key, x):
        params = block.init(key, x)['params']
        return (
            params,
            block.apply({'params': params}, x),
            block.apply({'params': params}, x, train=True, rngs={'dropout': key}),
        )

    params, eval_out, train_out = fast_jit(run)(rng(0), x)
    assert params['fc1']['kernel'].shape == (4, 12) and params['fc2']['kernel'].shape == (12, 4)
    assert eval_out.shape == (2, 5, 4) and train_out.shape == (2, 5, 4)
    assert not np.allclose(eval_out, train_out)


def test_drop_path_drops_whole_examples():
    drop = blocks.DropPath(rate=0.25)
    x = np.ones((4000, 3, 2), np.float32)
    np.testing.assert_array_equal(drop.apply({}, x), x)  # eval: identity, no rng needed
    y = fast_jit(lambda x, key: drop.apply({}, x, train=True, rngs={'dropout': key}))(x, rng(0))
    per_example = np.asarray(y).reshape(4000, -1)
    kept = np.all(np.isclose(per_example, 1 / 0.75), axis=1)
    dropped = np.all(per_example == 0, axis=1)
    assert np.all(kept | dropped)  # each example is dropped as a whole
    assert dropped.mean() == pytest.approx(0.25, abs=0.03)
    assert float(np.mean(per_example)) == pytest.approx(1.0, abs=0.05)  # unbiased


# --------------------------------------------------------------------------- attention


def reference_attention(q, k, v, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum('bhqk,bkhd->bqhd', weights, v), weights


def test_dot_product_attention_matches_formula():
    data = np.random.default_rng(0)
    q = data.normal(size=(2, 3, 2, 4)).astype(np.float32)
    k = data.normal(size=(2, 5, 2, 4)).astype(np.float32)
    v = data.normal(size=(2, 5, 2, 4)).astype(np.float32)
    causal_like = np.tril(np.ones((3, 5), bool), k=2)[None, None]
    bias = np.zeros((1, 1, 3, 5), np.float32)
    bias[..., 0] = -1e9

    def run(q, k, v):
        return (
            dot_product_attention(q, k, v, return_weights=True),
            dot_product_attention(q, k, v),
            dot_product_attention(q, k, v, mask=causal_like, return_weights=True),
            attention_weights(q, k, bias=bias),
        )

    (out, weights), out_only, (masked_out, masked_weights), biased = fast_jit(run)(q, k, v)
    ref_out, ref_weights = reference_attention(q, k, v)
    assert out.shape == (2, 3, 2, 4) and weights.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
    np.testing.assert_allclose(out_only, out)

    ref_out, ref_weights = reference_attention(q, k, v, causal_like)
    np.testing.assert_allclose(masked_out, ref_out, atol=1e-5)
    assert float(np.max(np.where(causal_like, 0.0, masked_weights))) == 0.0
    np.testing.assert_allclose(biased[..., 0], 0.0, atol=1e-7)


def test_multi_head_attention_sows_weights_without_changing_outputs():
    mha = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    data = np.random.default_rng(0)
    x_q = data.normal(size=(3, 4, 8)).astype(np.float32)
    x_kv = data.normal(size=(3, 6, 8)).astype(np.float32)
    key_mask = np.arange(6)[None, None, None, :] < 3

    def run(key, x_q, x_kv):
        variables = mha.init(key, x_q)
        sow = functools.partial(mha.apply, mutable=['intermediates'])
        return (
            variables,
            mha.apply(variables, x_q),
            sow(variables, x_q),
            sow(variables, x_q, x_kv),
            sow(variables, x_q, x_kv, mask=key_mask),
        )

    variables, default_out, (out, state), (cross, cross_state), (_, masked_state) = fast_jit(run)(
        rng(1), x_q, x_kv
    )
    assert set(variables) == {'params'}  # nothing sown at init
    np.testing.assert_array_equal(out, default_out)
    (weights,) = state['intermediates']['attention_weights']
    assert weights.shape == (3, 2, 4, 4)  # (batch, heads, q_len, k_len)
    np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, atol=1e-6)

    assert cross.shape == (3, 4, 8)
    assert cross_state['intermediates']['attention_weights'][0].shape == (3, 2, 4, 6)

    (masked,) = masked_state['intermediates']['attention_weights']
    np.testing.assert_allclose(masked[..., 3:], 0.0)
    np.testing.assert_allclose(np.sum(masked, axis=-1), 1.0, atol=1e-6)


def test_vit_exposes_attention_weights_per_block():
    run = tiny_run('vit_token_learned')
    apply = fast_jit(functools.partial(run.model.apply, mutable=['intermediates']))
    out, state = apply(run.variables, run.x)
    np.testing.assert_allclose(out, run.eval_apply(run.variables, run.x), atol=1e-6)
    tokens = (32 // 4) ** 2 + 1
    for i in range(2):
        (weights,) = state['intermediates'][f'encoderblock_{i}']['attention']['attention_weights']
        assert weights.shape == (2, 2, tokens, tokens)
        np.testing.assert_allclose(np.sum(weights, axis=-1), 1.0, atol=1e-5)
