"""Tests for the modern ConvNets: the deformable ResNet-50, ConvNeXt and NFNet.

Parameter counts of the registered variants use `jax.eval_shape` only; each
family trains one tiny jitted step on 28x28x1 inputs with its small stem, and
NFNet's signal propagation is checked at init. The deformable convolution itself
is tested in test_nets_deformable_conv.py. Everything compiled here is tiny, so
the file runs in well under a minute on two CPU cores.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
import nets.models.convnext
import nets.models.deformable
import nets.models.nfnet
from nets.layers import blocks
from nets.models.nfnet import ACTIVATION_GAMMAS, NFBlock
from tests.nets_harness import TinyRun, assert_products_in_bfloat16, fast_jit, rng

IMAGENET_INPUT = (1, 224, 224, 3)
FASHION_INPUT = (2, 28, 28, 1)


# --------------------------------------------------------------------------- parameter counts

# torchvision convnext_*(num_classes=1000).
CONVNEXT_ANCHORS = {
    'convnext_t': 28_589_128,
    'convnext_s': 50_223_688,
    'convnext_b': 88_591_464,
    'convnext_l': 197_767_336,
}

# Brock et al. 2021, Table 1 (millions).
NFNET_ANCHORS = {
    'nfnet_f0': 71.5e6,
    'nfnet_f1': 132.6e6,
    'nfnet_f2': 193.8e6,
    'nfnet_f3': 254.9e6,
    'nfnet_f4': 316.1e6,
    'nfnet_f5': 377.2e6,
    'nfnet_f6': 438.4e6,
}

RESNET50 = 25_557_032


@pytest.mark.parametrize('name, expected', sorted(CONVNEXT_ANCHORS.items()))
def test_convnext_param_count_matches_torchvision(name, expected):
    assert nets.count_params(nets.create(name), IMAGENET_INPUT) == expected


@pytest.mark.parametrize('name, expected', sorted(NFNET_ANCHORS.items()))
def test_nfnet_param_count_matches_paper(name, expected):
    count = nets.count_params(nets.create(name), IMAGENET_INPUT)
    assert abs(count - expected) <= 0.005 * expected
    assert round(count / 1e5) == round(expected / 1e5)  # equal to the table's 0.1M precision


def offset_conv_params(version: str, groups: int = 1) -> int:
    """Offset (and v2 mask) convs of deformable_resnet50: one 3x3 conv per deformable
    bottleneck, predicting 2·9·G (+9·G) channels from the bottleneck width."""
    channels = (3 if version == 'v2' else 2) * 9 * groups
    blocks = {128: 4, 256: 6, 512: 3}  # conv3_x, conv4_x, conv5_x
    return sum(n * (9 * width * channels + channels) for width, n in blocks.items())


def test_deformable_resnet50_param_count_and_resnet50_names():
    def shapes(model):
        return jax.eval_shape(
            model.init, {'params': rng(0)}, jax.ShapeDtypeStruct(IMAGENET_INPUT, jnp.float32)
        )['params']

    def flat(tree):
        return {
            jax.tree_util.keystr(p): a.shape
            for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]
        }

    resnet = flat(shapes(nets.create('resnet50')))
    deformable = flat(shapes(nets.create('deformable_resnet50')))
    assert sum(math.prod(s) for s in resnet.values()) == RESNET50
    assert (
        sum(math.prod(s) for s in deformable.values())
        == 26_428_295
        == RESNET50 + offset_conv_params('v2')
    )
    # Same names and shapes as resnet50 plus one offset conv in each of the 13
    # bottlenecks of stages 1-3: ResNet weights load directly.
    assert {k: deformable[k] for k in resnet} == resnet
    extra = [k for k in deformable if k not in resnet]
    assert len(extra) == 2 * 13 and all("['conv2']['conv']['offset']" in k for k in extra)
    assert not any('stage0' in k for k in extra)


def test_deformable_resnet50_v1_and_conv5_only_param_counts():
    v1 = nets.create('deformable_resnet50', deform_version='v1')
    assert (
        nets.count_params(v1, IMAGENET_INPUT) == 26_137_874 == RESNET50 + offset_conv_params('v1')
    )
    # DCNv1's placement: only the three conv5_x 3x3 convs are deformable.
    conv5_only = nets.create('deformable_resnet50', deform_version='v1', deformable_stages=(3,))
    assert nets.count_params(conv5_only, IMAGENET_INPUT) == RESNET50 + 3 * (9 * 512 * 18 + 18)


def test_deformable_basic_blocks_make_both_3x3_convs_deformable():
    model = nets.create(
        'deformable_resnet50', block='basic', stage_sizes=(2, 2, 2, 2)
    )  # a deformable resnet18
    # Each deformable 3x3 conv adds an offset+mask conv over its own input channels.
    inputs = [64, 128, 128, 128] + [128, 256, 256, 256] + [256, 512, 512, 512]
    extra = sum(9 * cin * 27 + 27 for cin in inputs)
    assert (
        nets.count_params(model, IMAGENET_INPUT) == 11_689_512 + extra
    )  # torchvision resnet18 + offsets
    assert model.min_input_size() == 32


def test_registered_names_and_families():
    assert nets.list_models('convnext') == sorted(CONVNEXT_ANCHORS)
    assert nets.list_models('nfnet') == sorted(NFNET_ANCHORS)
    assert nets.list_models('deformable') == ['deformable_resnet50']
    assert nets.model_defaults('nfnet_f3') == {'depths': (4, 8, 24, 12), 'dropout_rate': 0.4}
    assert nets.model_fields('convnext_b')['dims'] == (128, 256, 512, 1024)
    assert nets.model_fields('convnext_t')['layer_scale_init'] == 1e-6
    fields = nets.model_fields('deformable_resnet50')
    assert fields['deform_version'] == 'v2' and fields['deformable_stages'] == (1, 2, 3)


@pytest.mark.parametrize(
    'name, overrides',
    [
        ('convnext_t', dict(stem='small')),
        ('nfnet_f0', dict(stem='small')),
        ('deformable_resnet50', dict(stem='cifar')),
    ],
)
def test_full_size_models_take_fashion_mnist_with_small_stem(name, overrides):
    model = nets.create(name, num_classes=10, **overrides)
    logits, _ = jax.eval_shape(
        lambda x: model.init_with_output({'params': rng(0), 'dropout': rng(0)}, x),
        jax.ShapeDtypeStruct(FASHION_INPUT, jnp.float32),
    )
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


# --------------------------------------------------------------------------- tiny forward/backward

# id: (model name, overrides, has dropout or stochastic depth, has batch norm)
CASES = {
    'deformable_resnet': (
        'deformable_resnet50',
        dict(stage_sizes=(1, 1), width=4, stem='cifar', deformable_stages=(1,), num_classes=10),
        False,
        True,
    ),
    # Layer scale 0.5 (not 1e-6) so that dropped blocks change the logits visibly.
    'convnext': (
        'convnext_t',
        dict(
            depths=(1, 2),
            dims=(8, 16),
            stem='small',
            drop_path_rate=0.5,
            layer_scale_init=0.5,
            num_classes=10,
        ),
        True,
        False,
    ),
    'nfnet': (
        'nfnet_f0',
        dict(
            depths=(1, 2),
            widths=(16, 32),
            group_width=8,
            stem='small',
            drop_path_rate=0.5,
            num_classes=10,
        ),
        True,
        False,
    ),
}


@functools.cache
def tiny_run(case_id: str) -> TinyRun:
    name, overrides, has_dropout, has_batch_norm = CASES[case_id]
    return TinyRun(
        name, overrides, FASHION_INPUT, has_dropout=has_dropout, has_batch_norm=has_batch_norm
    )


@pytest.mark.parametrize('case_id', sorted(CASES))
def test_tiny_train_step(case_id):
    run = tiny_run(case_id)
    assert set(run.variables) == ({'params', 'batch_stats'} if run.has_batch_norm else {'params'})
    grads, (logits, updates) = run.train(seed=0)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(
        run.variables['params']
    )
    leaves = [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(np.sum(np.abs(g))) for g in leaves) > 0
    if run.has_batch_norm:
        old, new = jax.device_get((run.variables['batch_stats'], updates['batch_stats']))
        assert all(
            jax.tree_util.tree_leaves(
                jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), old, new)
            )
        )
    eval_logits = run.eval_apply(run.variables, run.x)
    assert eval_logits.shape == (2, 10) and np.all(np.isfinite(eval_logits))


def test_deformable_resnet_tiny_structure():
    run = tiny_run('deformable_resnet')
    params = run.variables['params']
    assert (
        'offset' not in params['stage0_block0']['conv2']['conv']
    )  # stage 0 stays a plain ResNet stage
    offset = params['stage1_block0']['conv2']['conv']['offset']
    assert offset['kernel'].shape == (3, 3, 8, 27)
    assert not np.any(offset['kernel']) and not np.any(offset['bias'])  # starts on the regular grid
    # The zero-initialised offset conv must still learn: offsets and mask logits get gradients.
    grads, _ = run.train(seed=0)
    offset_grad = np.asarray(grads['stage1_block0']['conv2']['conv']['offset']['kernel'])
    assert np.all(np.isfinite(offset_grad))
    assert (
        float(np.sum(np.abs(offset_grad[..., :18]))) > 0
        and float(np.sum(np.abs(offset_grad[..., 18:]))) > 0
    )


def test_nfnet_tiny_structure():
    run = tiny_run('nfnet')
    params = run.variables['params']
    block = params['stage1_block0']
    assert float(block['skip_gain']) == 0.0  # SkipInit
    assert block['conv1']['kernel'].shape == (3, 3, 8, 16)  # width 32·0.5 = 16 in groups of 8
    assert set(block['conv0']) == {'kernel', 'gain', 'bias'}
    assert 'conv_shortcut' in block and 'conv_shortcut' not in params['stage1_block1']
    assert params['final_conv']['kernel'].shape == (1, 1, 32, 64)  # 2 x last width
    assert block['se']['fc1']['kernel'].shape == (32, 16)
    grads, _ = run.train(seed=0)
    assert float(np.abs(grads['stage1_block1']['skip_gain'])) > 0


@pytest.mark.parametrize('case_id', sorted(c for c in CASES if CASES[c][2]))
def test_stochastic_depth_and_dropout_only_in_train_mode(case_id):
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


def test_convnext_tiny_layout():
    params = tiny_run('convnext').variables['params']
    block = params['stage1_block1']
    np.testing.assert_array_equal(
        block['layer_scale'], np.full(16, 0.5, np.float32)
    )  # layer_scale_init
    assert block['dwconv']['kernel'].shape == (7, 7, 1, 16)  # depthwise
    assert block['pwconv1']['kernel'].shape == (16, 64) and block['pwconv2']['kernel'].shape == (
        64,
        16,
    )
    assert params['stem']['kernel'].shape == (2, 2, 1, 8)  # 'small': 2x2 stride-2 patchify
    assert params['downsample1']['kernel'].shape == (2, 2, 8, 16)
    # The layer scale is one parameter per channel and block; 0 removes it.
    no_scale = nets.create('convnext_t', num_classes=10, stem='small', layer_scale_init=0.0)
    with_scale = nets.count_params(
        nets.create('convnext_t', num_classes=10, stem='small'), (1, 28, 28, 1)
    )
    assert (
        with_scale - nets.count_params(no_scale, (1, 28, 28, 1))
        == 3 * 96 + 3 * 192 + 9 * 384 + 3 * 768
    )


@pytest.mark.parametrize('case_id', sorted(CASES))
def test_bfloat16_compute(case_id):
    run = tiny_run(case_id)
    model = nets.create(run.name, **dict(run.overrides, dtype='bfloat16'))
    apply = functools.partial(model.apply, train=False)
    logits = fast_jit(apply)(run.variables, run.x)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    reference = np.asarray(run.eval_apply(run.variables, run.x))
    scale = float(np.max(np.abs(reference))) + 1e-3
    assert float(np.max(np.abs(logits - reference))) < 0.1 * scale
    assert_products_in_bfloat16(jax.make_jaxpr(apply)(run.variables, run.x))


# ------------------------------------------------------------------------- NFNet signal propagation


def test_activation_gammas_give_unit_variance():
    z = np.linspace(-12.0, 12.0, 480_001)
    density = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    values = fast_jit(lambda z: {name: blocks.activation(name)(z) for name in ACTIVATION_GAMMAS})(z)
    for name, f in values.items():
        f = np.asarray(f, np.float64)
        mean = np.trapezoid(f * density, z)
        std = math.sqrt(np.trapezoid((f - mean) ** 2 * density, z))
        assert ACTIVATION_GAMMAS[name] * std == pytest.approx(1.0, abs=1e-5), name
    assert ACTIVATION_GAMMAS['relu'] == pytest.approx(math.sqrt(2 / (1 - 1 / math.pi)), rel=1e-12)
    assert ACTIVATION_GAMMAS['gelu'] == pytest.approx(1.7015, abs=1e-3)


def test_nfnet_residual_branches_keep_unit_variance_at_init():
    # The tiny network's three kinds of block (projection, strided transition,
    # identity skip), with their initial parameters, each fed unit-variance noise
    # scaled to the std β its position implies: the residual branch (before the
    # zero skip gain) keeps unit variance thanks to weight standardisation, γ, β
    # and the doubled squeeze-excite gate.
    run = tiny_run('nfnet')
    blocks = [
        ('stage0_block0', NFBlock(16, strides=1, beta=1.0, group_width=8), 8),
        ('stage1_block0', NFBlock(32, strides=2, beta=1.0, group_width=8), 16),
        ('stage1_block1', NFBlock(32, strides=1, beta=math.sqrt(1.04), group_width=8), 32),
        (
            'stage1_block1',
            NFBlock(32, strides=1, beta=math.sqrt(1.04), group_width=8, activation='relu'),
            32,
        ),
    ]
    data = np.random.default_rng(5)
    inputs = [
        (data.normal(size=(8, 14, 14, c)) * block.beta).astype(np.float32) for _, block, c in blocks
    ]

    def apply_blocks(params, inputs):
        results = []
        for (name, block, _), x in zip(blocks, inputs):
            out, state = block.apply({'params': params[name]}, x, mutable=['intermediates'])
            results.append((state['intermediates']['residual_variance'][0], out))
        return results

    results = fast_jit(apply_blocks)(run.variables['params'], inputs)
    for (name, block, _), x, (variance, out) in zip(blocks, inputs, results):
        # Measured 0.76-1.03 here (0.74-1.19 for fresh blocks up to width 1536); a loose bound.
        assert 0.5 < float(variance) < 2, (name, block.activation, float(variance))
        if block.strides == 1 and x.shape[-1] == block.features:
            np.testing.assert_array_equal(out, x)  # skip gain 0: the block starts as the identity


def test_nfnet_network_residual_variance_at_init():
    # In the whole tiny network on unit-variance noise. Before any downsampling
    # the branch variance is O(1); a 2x2 average-pool shortcut divides the
    # variance of spatially white features by up to 4 (the reference design does
    # the same) and the scaled GELU shrinks small signals, so the block after a
    # transition is only bounded loosely here (measured 0.056).
    run = tiny_run('nfnet')
    _, state = fast_jit(functools.partial(run.model.apply, mutable=['intermediates']))(
        run.variables, run.x
    )
    variances = {
        name: float(v['residual_variance'][0]) for name, v in state['intermediates'].items()
    }
    assert set(variances) == {'stage0_block0', 'stage1_block0', 'stage1_block1'}
    assert 0.1 < variances['stage0_block0'] < 10 and 0.1 < variances['stage1_block0'] < 10
    assert 0.1 / 4 < variances['stage1_block1'] < 10


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    'name, field, value, valid_choice',
    [
        ('convnext_t', 'stem', 'tiny', 'small'),
        ('nfnet_f0', 'stem', 'cifar', 'small'),
        ('nfnet_f0', 'activation', 'mish', 'gelu'),
        ('deformable_resnet50', 'deform_version', 'v3', 'v2'),
        ('deformable_resnet50', 'stem', 'small', 'cifar'),
        ('deformable_resnet50', 'block', 'wide', 'bottleneck'),
    ],
)
def test_invalid_choice_names_value_and_choices(name, field, value, valid_choice):
    with pytest.raises(ValueError) as err:
        nets.create(name, **{field: value})
    assert value in str(err.value) and valid_choice in str(err.value)


@pytest.mark.parametrize(
    'name, overrides, fragments',
    [
        ('convnext_t', dict(depths=(3, 3), dims=(96, 192, 384)), ['depths', 'dims']),
        ('convnext_t', dict(drop_path_rate=1.5), ['drop_path_rate', '1.5']),
        ('convnext_t', dict(layer_scale_init=-1.0), ['layer_scale_init', '-1.0']),
        ('convnext_t', dict(kernel_size=4), ['kernel_size', '4']),
        ('nfnet_f0', dict(widths=(64, 512, 1536, 1536)), ['[64]', 'group_width 128', '256']),
        ('nfnet_f0', dict(dropout_rate=1.0), ['dropout_rate', '1.0']),
        ('nfnet_f0', dict(depths=(1, 2)), ['depths', 'widths']),
        (
            'deformable_resnet50',
            dict(deformable_stages=(2, 4)),
            ['deformable stage 4', '[0, 1, 2, 3]'],
        ),
        ('deformable_resnet50', dict(stage_sizes=(1, 1)), ['deformable stage 2', '[0, 1]']),
        ('deformable_resnet50', dict(offset_groups=0), ['offset_groups', '0']),
    ],
)
def test_invalid_values_fail_in_create(name, overrides, fragments):
    with pytest.raises(ValueError) as err:
        nets.create(name, **overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


# Narrow versions (the minimum size does not depend on widths) keep the traces cheap.
NARROW = {
    'convnext_t': dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8)),
    'nfnet_f0': dict(depths=(1, 1, 1, 1), widths=(16, 16, 16, 16), group_width=8),
    'deformable_resnet50': dict(stage_sizes=(1, 1, 1, 1), width=4),
}


@pytest.mark.parametrize(
    'name, overrides, size, minimum',
    [
        ('convnext_t', dict(), 28, 32),
        ('convnext_t', dict(stem='small'), 15, 16),
        ('nfnet_f0', dict(), 16, 32),
        ('nfnet_f0', dict(stem='small'), 7, 8),
        ('deformable_resnet50', dict(), 28, 32),
        ('deformable_resnet50', dict(stem='cifar'), 4, 8),
    ],
)
def test_too_small_inputs_name_size_and_minimum(name, overrides, size, minimum):
    model = nets.create(name, num_classes=10, **NARROW[name], **overrides)
    with pytest.raises(ValueError) as err:
        nets.count_params(model, (1, size, size, 1))
    assert f'{size}x{size}' in str(err.value) and f'minimum {minimum}x{minimum}' in str(err.value)
    nets.count_params(model, (1, minimum, minimum, 1))  # the minimum itself works
    with pytest.raises(ValueError, match=f'{minimum - 1}x{minimum}'):
        nets.count_params(model, (1, minimum - 1, minimum, 1))  # either side too small fails
