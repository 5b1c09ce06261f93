"""Conv arithmetic, receptive fields and the model summary (FLOPs, per-layer table)."""

import pytest

import nets
from nets.tools.arithmetic import ReceptiveField, Window, conv_output_size, receptive_field
from nets.tools.summary import flops_per_example, format_summary, layer_table


@pytest.mark.parametrize(
    'size,kernel,stride,padding,expected',
    [
        (32, 5, 1, 0, 28),  # (N - F)/S + 1
        (32, 3, 1, 1, 32),  # 'same' for 3x3, padding 1
        (224, 11, 4, 2, 55),  # AlexNet conv1
        (7, 3, 2, 0, 3),
        (224, 7, 2, 3, 112),  # ResNet stem
    ],
)
def test_conv_output_size(size, kernel, stride, padding, expected):
    assert conv_output_size(size, kernel, stride=stride, padding=padding) == expected


def test_conv_output_size_errors():
    with pytest.raises(ValueError, match='not an integer'):
        conv_output_size(10, 3, stride=2, exact=True)  # (10 - 3)/2 = 3.5
    assert conv_output_size(10, 3, stride=2) == 4  # floored when the layer allows it
    with pytest.raises(ValueError, match='does not fit'):
        conv_output_size(2, 5)
    with pytest.raises(ValueError, match='stride must be >= 1'):
        conv_output_size(8, 3, stride=0)
    assert conv_output_size(9, 3, dilation=2) == 5  # dilated 3x3 spans 5


def test_three_stacked_3x3_see_7x7_with_fewer_weights():
    assert receptive_field([(3,), (3,), (3,)]).size == 7
    assert receptive_field([Window(7)]).size == 7
    channels = 64
    assert 3 * (3 * 3 * channels * channels) < 7 * 7 * channels * channels  # 27C² vs 49C²


def test_receptive_field_with_strides_and_pooling():
    # conv 3x3/1, maxpool 2x2/2, conv 3x3/1: 3 -> 4 (jump 2) -> 4 + 2*2 = 8
    field = receptive_field([(3, 1), (2, 2), (3, 1)])
    assert field == ReceptiveField(8, 2)


def test_layer_table_traces_fields_through_a_real_model():
    model = nets.create('cnn', channels=(4,), convs_per_stage=3, num_classes=3)
    rows = layer_table(model, (1, 16, 16, 1))
    assert [r.op for r in rows] == ['conv 3x3/1'] * 3 + ['maxpool 2x2/2']
    assert [r.field[0].size for r in rows] == [3, 5, 7, 8]
    assert rows[-1].output_shape == (1, 8, 8, 4)


def test_resnet18_receptive_field_and_flops():
    model = nets.create('resnet18')
    rows = layer_table(model, (1, 224, 224, 3))
    assert rows[0].op == 'conv 7x7/2' and rows[0].field[0].size == 7
    assert rows[-1].field[0].size == 435  # the known theoretical field of ResNet-18
    gmacs = flops_per_example(model, (1, 224, 224, 3)) / 2e9
    assert 1.6 < gmacs < 1.9  # papers: 1.8 GMACs


def test_mlp_flops_are_two_per_multiply_add():
    model = nets.create('mlp', hidden_sizes=(32,), num_classes=10)
    flops = flops_per_example(model, (1, 64))
    assert 2 * (64 * 32 + 32 * 10) <= flops <= 2 * (64 * 32 + 32 * 10) * 1.2


def test_summary_text_names_both_flop_conventions():
    text = format_summary('cnn', nets.create('cnn', channels=(4, 8), num_classes=3), (1, 28, 28, 1))
    assert 'MAC = 2' in text and "GMACs (papers' FLOPs)" in text and 'receptive field' in text
