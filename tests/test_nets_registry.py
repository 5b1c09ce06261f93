"""Tests for the model registry of `nets` (listing, defaults, fields, `create` with overrides,
`register`) and for the errors the registry and the core families give: unknown names and fields,
invalid choices and values, inputs a model cannot take."""

import jax.numpy as jnp
import pytest

import nets
from nets.models.mlp import MLP
from nets.models.resnet import ResNet
from tests.test_nets import VIT_ANCHORS


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
