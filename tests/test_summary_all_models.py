"""The model summary on every registered model: example inputs derived from each family, positive
parameters and FLOPs (traced, not compiled), FLOPs that grow with an LSTM's sequence length,
and the one-line error of the command line."""

import subprocess
import sys
from pathlib import Path

import pytest

import nets
from nets.tools import summary

ROOT = Path(__file__).resolve().parents[1]

# Reference counts the summary must reproduce (the papers' / official implementations').
KNOWN_PARAMS = {
    'resnet50': 25_557_032,
    'vit_b16': 86_567_656,
    'swin_t': 28_288_354,
    'transformer_base': 63_082_496,
}


@pytest.mark.parametrize('name', nets.list_models())
def test_summary_runs_on_every_registered_model(name):
    model = nets.create(name)
    inputs = summary.example_inputs(name, model)
    result = summary.summarize(name, model, inputs)
    assert result.params > 0 and result.flops > 0, (name, result.params, result.flops)
    assert result.params == KNOWN_PARAMS.get(name, result.params)
    assert result.xla_flops is None  # XLA's own count only when asked for
    if inputs.image is not None and nets.model_family(name) not in ('mlp', 'rnn'):
        assert result.rows, 'an image model has convolution or pooling layers'


def test_summary_text_of_a_sequence_model():
    text = summary.summary_of('transformer_tiny', length=16)
    assert 'inputs (16,) int32, targets (16,) int32' in text
    assert 'MAC = 2' in text and "GMACs (papers' FLOPs)" in text
    assert 'no convolution or pooling layer' in text


def lstm_flops(steps: int, *, xla: bool = False) -> float:
    model = nets.create('lstm')
    inputs = summary.example_inputs('lstm', model, image_size=28, channels=1, length=steps)
    count = summary.flops_per_example if xla else summary.analytic_flops_per_example
    return count(model, inputs)


def test_lstm_flops_count_every_time_step():
    # Per step the LSTM multiplies its 28 inputs and 128 hidden units by 4 gates' weights.
    hidden, features, classes = 128, 28, 10
    per_step = 2 * (features + hidden) * 4 * hidden
    assert lstm_flops(28) == 28 * per_step + 2 * hidden * classes  # 4.48 MFLOPs, not one step
    assert lstm_flops(56) - lstm_flops(28) == 28 * per_step
    # XLA's own count (element-wise work included) once its loops are corrected: twice the
    # steps, about twice the FLOPs (the head is the only part that does not scale).
    short, long = lstm_flops(28, xla=True), lstm_flops(56, xla=True)
    assert 4.4e6 < short < 5.0e6
    assert long / short == pytest.approx(2.0, rel=0.01)


def test_example_inputs_follow_the_family():
    specs = {
        name: summary.example_inputs(name, nets.create(name))
        for name in ('ddpm_unet_small', 'dcgan_28', 'char_transformer', 'resnet20', 'googlenet')
    }
    assert [s.shape for s in specs['ddpm_unet_small'].specs] == [(1, 28, 28, 1), (1,)]
    assert [s.shape for s in specs['dcgan_28'].specs] == [(1, 64)]  # the latent noise
    assert specs['char_transformer'].specs[0].dtype == 'int32'
    assert specs['resnet20'].specs[0].shape == (1, 32, 32, 3)  # a CIFAR-stem variant
    assert specs['googlenet'].specs[0].shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match='--length does not apply'):
        summary.example_inputs('resnet20', nets.create('resnet20'), length=8)
    with pytest.raises(ValueError, match='--input_size does not apply'):
        summary.example_inputs('dcgan', nets.create('dcgan'), image_size=32)


def test_unknown_model_is_a_one_line_usage_error():
    run = subprocess.run(
        [sys.executable, '-m', 'nets.tools.summary', 'resnet_999'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == summary.EXIT_USAGE == 64
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith('error: ') and "'resnet_999'" in lines[0]
    assert 'resnet50' in lines[0] and 'transformer_tiny' in lines[0]  # the valid choices
    assert 'Traceback' not in run.stderr and not run.stdout
