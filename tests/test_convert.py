"""Checkpoint conversion: tiny torchvision/timm/big_vision models (tests/fixtures/convert, made by
tests/fixtures/make_convert_fixtures.py) converted and run; logits must match the reference's."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import nets.convert as convert
from nets.convert.tensors import read_safetensors
from train.checkpointing import load_checkpoint

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'convert'

# case, source, registered model, fields the tensors cannot fix, image size
CASES = [
    ('torchvision_resnet_basic', 'torchvision', 'resnet18', {}, None),
    ('torchvision_resnet_bottleneck', 'torchvision', 'resnet50', {}, None),
    ('torchvision_vit', 'torchvision', 'vit_b16', {'num_heads': 2}, None),
    ('torchvision_vgg_bn', 'torchvision', 'vgg11_bn', {}, None),
    ('torchvision_alexnet', 'torchvision', 'alexnet', {}, None),
    ('torchvision_convnext', 'torchvision', 'convnext_t', {}, None),
    ('torchvision_swin', 'torchvision', 'swin_t', {}, 16),
    ('timm_resnet', 'timm', 'resnet18', {}, None),
    ('timm_vit', 'timm', 'vit_b16', {'num_heads': 2}, None),
    ('timm_convnext', 'timm', 'convnext_t', {}, None),
    ('big_vision_vit', 'big_vision', 'vit_b16', {}, None),
    ('torchvision_googlenet', 'torchvision', 'googlenet', {}, 48),
    ('torchvision_inception_v3', 'torchvision', 'inception_v3', {'transform_input': False}, 80),
    ('timm_dm_nfnet', 'timm', 'nfnet_f0', {}, 40),
    ('timm_nfnet_l', 'timm', 'nfnet_f1', {'activation': 'silu'}, 40),
    ('timm_swin', 'timm', 'swin_t', {}, 32),
    ('timm_vgg', 'timm', 'vgg11', {}, 64),
    ('timm_inception_v3', 'timm', 'inception_v3', {}, 80),
]


def checkpoint(case: str, source: str) -> Path:
    return FIXTURES / f'{case}{".npz" if source == "big_vision" else ".safetensors"}'


def max_relative_difference(logits, reference) -> float:
    return float(np.max(np.abs(logits - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize(
    ('case', 'source', 'model', 'fields', 'size'), CASES, ids=[c[0] for c in CASES]
)
def test_converted_model_gives_the_reference_logits(case, source, model, fields, size):
    converted = convert.convert(
        source, model, checkpoint(case, source), fields=fields, image_size=size
    )
    io = np.load(FIXTURES / f'{case}_io.npz')
    # Compiled: eager dispatch of the deeper models' many small ops takes longer than XLA.
    logits = np.asarray(jax.jit(converted.create().apply)(converted.variables, io['inputs']))
    assert logits.shape == io['logits'].shape
    assert max_relative_difference(logits, io['logits']) < 1e-5


def test_sizes_come_from_the_tensors_and_source_fields_from_the_source():
    resnet = convert.convert(
        'torchvision', 'resnet50', checkpoint('torchvision_resnet_bottleneck', 'torchvision')
    )
    assert resnet.fields['stage_sizes'] == (1, 2, 1, 1) and resnet.fields['width'] == 4
    assert resnet.fields['block'] == 'bottleneck' and resnet.fields['num_classes'] == 7
    swin = convert.convert(
        'torchvision', 'swin_t', checkpoint('torchvision_swin', 'torchvision'), image_size=16
    )
    assert swin.fields['num_heads'] == (1, 2, 4) and swin.fields['window_size'] == 2
    vit = convert.convert('big_vision', 'vit_b16', checkpoint('big_vision_vit', 'big_vision'))
    assert vit.fields['mlp_activation'] == 'gelu_tanh' and vit.fields['num_heads'] == 2


def test_torchvision_inception_and_timm_nfnet_fields_come_from_the_source():
    googlenet = convert.convert(
        'torchvision', 'googlenet', checkpoint('torchvision_googlenet', 'torchvision')
    )
    assert googlenet.fields['width_multiplier'] == 1 / 8 and googlenet.fields['bn_epsilon'] == 1e-3
    assert googlenet.fields['aux_logits'] is False and googlenet.fields['transform_input']
    assert googlenet.input_shape == (224, 224, 3) and "['aux1', 'aux2']" in googlenet.notes[0]
    assert 'aux_head1' not in googlenet.params
    deepmind = convert.convert('timm', 'nfnet_f0', checkpoint('timm_dm_nfnet', 'timm'))
    assert deepmind.fields['conv_padding'] == 'same' and deepmind.fields['ws_epsilon'] == 1e-5
    assert deepmind.fields['depths'] == (1, 2, 1, 1) and deepmind.fields['stem_widths'][-1] == 16
    timm_form = convert.convert(
        'timm', 'nfnet_f0', checkpoint('timm_nfnet_l', 'timm'), fields={'activation': 'silu'}
    )
    assert timm_form.fields['conv_padding'] == 'symmetric'
    assert timm_form.fields['final_conv_mult'] == 1.5 and timm_form.fields['se_ratio'] == 0.25
    np.testing.assert_array_equal(timm_form.params['stage1_block1']['skip_gain'], 1.0)


def test_timm_swin_vgg_and_inception_fields_come_from_the_source():
    swin = convert.convert('timm', 'swin_t', checkpoint('timm_swin', 'timm'), image_size=32)
    assert swin.fields['depths'] == (2, 2, 2, 1) and swin.fields['num_heads'] == (1, 1, 2, 4)
    assert swin.fields['window_size'] == 4 and swin.fields['embed_dim'] == 4
    # The last stage's 2x2 map uses a 2x2 window: a 3x3 table, as timm made it.
    assert swin.params['stage3_block0']['window_attention']['relative_position_bias'][
        'relative_position_bias_table'
    ].shape == (9, 4)
    vgg = convert.convert('timm', 'vgg11', checkpoint('timm_vgg', 'timm'), image_size=64)
    assert vgg.fields['pooled_size'] == 2 and vgg.fields['fc_width'] == 16
    assert vgg.fields['batch_norm'] is False and 'ConvMlp' in vgg.notes[0]
    inception = convert.convert('timm', 'inception_v3', checkpoint('timm_inception_v3', 'timm'))
    assert inception.fields['transform_input'] is False and inception.fields['bn_epsilon'] == 1e-3
    assert inception.input_shape == (299, 299, 3) and len(inception.notes) == 1
    assert "['AuxLogits']" in inception.notes[0] and 'aux_logits=False' in inception.notes[0]


def test_timm_swin_with_merges_at_stage_ends_converts_the_same(tmp_path):
    """The original code's and older timm's layout: layers.N.downsample ends stage N (none after
    the last), the classifier is `head`, and the shifted-window masks are stored."""
    tensors = read_safetensors(checkpoint('timm_swin', 'timm'))
    renamed = {'layers.1.blocks.1.attn_mask': np.zeros((16, 16, 16), np.float32)}
    for name, value in tensors.items():
        if name.startswith('head.fc.'):
            name = name.replace('head.fc.', 'head.')
        elif '.downsample.' in name:
            stage = int(name.split('.')[1])
            name = name.replace(f'layers.{stage}.', f'layers.{stage - 1}.')
        renamed[name] = value
    np.savez(tmp_path / 'swin_end.npz', **renamed)
    converted = convert.convert('timm', 'swin_t', tmp_path / 'swin_end.npz', image_size=32)
    io = np.load(FIXTURES / 'timm_swin_io.npz')
    logits = converted.create().apply(converted.variables, io['inputs'])
    assert max_relative_difference(np.asarray(logits), io['logits']) < 1e-5


def test_timm_vgg_refuses_maps_its_head_would_slide_over():
    path = checkpoint('timm_vgg', 'timm')
    with pytest.raises(ValueError, match=r'image_size 96 .* slides its 2x2 .* 3x3 map'):
        convert.convert('timm', 'vgg11', path, image_size=96)
    assert convert.convert('timm', 'vgg11', path, image_size=95).input_shape == (95, 95, 3)


def test_position_table_is_resampled_for_another_image_size():
    """Converting for 16 px equals applying the 32 px table at 16 px (the model resamples the
    same way when it meets another grid)."""
    path = checkpoint('torchvision_vit', 'torchvision')
    native = convert.convert('torchvision', 'vit_b16', path, fields={'num_heads': 2})
    small = convert.convert('torchvision', 'vit_b16', path, fields={'num_heads': 2}, image_size=16)
    assert small.params['pos_embedding'].shape == (1, 1 + 2 * 2, 32)
    assert small.input_shape == (16, 16, 3) and 'resampled' in small.notes[0]
    images = np.load(FIXTURES / 'torchvision_vit_io.npz')['inputs'][:, :16, :16]
    expected = native.create().apply(native.variables, images)
    np.testing.assert_allclose(small.create().apply(small.variables, images), expected, atol=1e-5)


def test_converted_folder_holds_a_loadable_checkpoint_and_its_description(tmp_path):
    path = checkpoint('torchvision_resnet_basic', 'torchvision')
    out = convert.convert_to_folder('torchvision', 'resnet18', path, tmp_path / 'converted')
    described = json.loads((out / convert.METADATA_FILE).read_text())
    assert described['model'] == 'resnet18' and described['source'] == 'torchvision'
    assert described['fields']['stage_sizes'] == [1, 1, 1, 1]
    saved = load_checkpoint(out / convert.CHECKPOINTS)
    tensors = read_safetensors(path)
    np.testing.assert_array_equal(saved['params']['head']['bias'], tensors['fc.bias'])
    np.testing.assert_array_equal(
        saved['model_state']['batch_stats']['stem']['norm']['var'], tensors['bn1.running_var']
    )
    with pytest.raises(ValueError, match='not empty'):
        convert.convert_to_folder('torchvision', 'resnet18', path, out)


def test_bad_requests_fail_with_one_line_naming_the_choices(tmp_path):
    path = checkpoint('torchvision_resnet_basic', 'torchvision')
    with pytest.raises(ValueError, match=r"Unknown source 'caffe'.*big_vision"):
        convert.convert('caffe', 'resnet18', path)
    with pytest.raises(ValueError, match=r"no big_vision mapping for 'resnet18'.*torchvision:vit"):
        convert.convert('big_vision', 'resnet18', path)
    with pytest.raises(FileNotFoundError, match='no checkpoint file'):
        convert.convert('torchvision', 'resnet18', tmp_path / 'missing.safetensors')
    # A ViT checkpoint read as a ResNet: the tensors it needs are not there.
    with pytest.raises(ValueError, match="has no tensor 'conv1.weight'"):
        convert.convert('torchvision', 'resnet18', checkpoint('torchvision_vit', 'torchvision'))
    with pytest.raises(ValueError, match=r"'inception_v2'.*'googlenet', 'inception_v3'"):
        convert.convert('torchvision', 'inception_v2', path)
    with pytest.raises(ValueError, match=r"timm has no counterpart of 'googlenet'.*inception_v3"):
        convert.convert('timm', 'googlenet', checkpoint('timm_inception_v3', 'timm'))
    with pytest.raises(ValueError, match=r'not a timm NFNet-F checkpoint.*dm_nfnet_f\*'):
        convert.convert('timm', 'nfnet_f0', checkpoint('timm_resnet', 'timm'))
    with pytest.raises(ValueError, match=r"no NFNet gamma for activation 'swish'.*'gelu'"):
        nfnet = checkpoint('timm_dm_nfnet', 'timm')
        convert.convert('timm', 'nfnet_f0', nfnet, fields={'activation': 'swish'})


def test_tensors_without_a_place_in_the_model_are_named(tmp_path):
    tensors = read_safetensors(checkpoint('torchvision_resnet_basic', 'torchvision'))
    tensors['layer1.0.se.fc.weight'] = np.ones((2, 8), np.float32)
    np.savez(tmp_path / 'extra.npz', **tensors)
    with pytest.raises(ValueError, match=r"no place in resnet18.*'layer1\.0\.se\.fc\.weight'"):
        convert.convert('torchvision', 'resnet18', tmp_path / 'extra.npz')


def test_a_field_that_contradicts_the_tensors_fails_the_fit_check():
    path = checkpoint('torchvision_resnet_basic', 'torchvision')
    with pytest.raises(ValueError, match='do not fit resnet18'):
        convert.convert('torchvision', 'resnet18', path, fields={'stage_sizes': (1, 1, 1)})
