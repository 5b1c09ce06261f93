"""Tests for the core families of the `nets` model zoo (MLP, CNN, ResNet, ViT): parameter
counts against torchvision, reference implementations and closed forms, and a tiny jitted
forward/backward pass per configuration. The registry is tested in test_nets_registry.py, the
shared layers and attention in test_nets_layers.py.

Big models are only sized with `jax.eval_shape` (via `nets.count_params`);
real computation happens on tiny configurations only, so the file runs in
well under a minute on two CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nets
from nets.layers.attention import MultiHeadAttention
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
