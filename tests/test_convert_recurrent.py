"""Checkpoint conversion of PyTorch nn.LSTM / nn.GRU / nn.RNN models (source 'torch'): tiny
classifiers and language models (tests/fixtures/convert, made by
tests/fixtures/make_convert_fixtures.py) converted and run; logits must match PyTorch's."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nets
import nets.convert as convert
from nets.convert.tensors import read_safetensors
from nets.layers.recurrent import GRUCell

FIXTURES = Path(__file__).resolve().parent / 'fixtures' / 'convert'

# case, registered model: classifiers on (2, 7, 5) sequences, language models on (2, 9) ids
CASES = [
    ('torch_lstm_classifier', 'lstm'),  # 2 layers, bidirectional
    ('torch_gru_classifier', 'gru'),
    ('torch_rnn_classifier', 'rnn'),  # bidirectional
    ('torch_gru_lm', 'char_gru'),  # 2 layers
    ('torch_lstm_lm', 'char_lstm'),
]


def checkpoint(case: str) -> Path:
    return FIXTURES / f'{case}.safetensors'


@pytest.mark.parametrize(('case', 'model'), CASES, ids=[c[0] for c in CASES])
def test_converted_recurrent_model_gives_the_reference_logits(case, model):
    converted = convert.convert('torch', model, checkpoint(case))
    io = np.load(FIXTURES / f'{case}_io.npz')
    logits = np.asarray(converted.create().apply(converted.variables, io['inputs']))
    assert logits.shape == io['logits'].shape
    reference = io['logits']
    assert np.max(np.abs(logits - reference)) / np.max(np.abs(reference)) < 1e-5


def test_sizes_and_the_gru_form_come_from_the_tensors():
    lstm = convert.convert('torch', 'lstm', checkpoint('torch_lstm_classifier'))
    assert lstm.fields['num_layers'] == 2 and lstm.fields['bidirectional'] is True
    assert lstm.fields['hidden_size'] == 6 and lstm.fields['num_classes'] == 4
    assert set(lstm.params['rnn']['layer1']) == {'forward', 'backward'}
    lm = convert.convert('torch', 'char_gru', checkpoint('torch_gru_lm'))
    assert lm.fields['reset_after'] is True and lm.fields['embed_dim'] == 6
    assert lm.fields['num_classes'] == 11 and lm.input_dtype == 'int32'
    # PyTorch's hidden bias of the candidate stays apart; its r and z biases are summed in.
    tensors = read_safetensors(checkpoint('torch_gru_lm'))
    cell = lm.params['layer1']['cell']
    np.testing.assert_array_equal(cell['recurrent_bias'], tensors['rnn.bias_hh_l1'][16:])
    r = tensors['rnn.bias_ih_l1'][:8] + tensors['rnn.bias_hh_l1'][:8]
    z = tensors['rnn.bias_ih_l1'][8:16] + tensors['rnn.bias_hh_l1'][8:16]
    np.testing.assert_allclose(cell['bias'][:8], z, rtol=1e-6)
    np.testing.assert_allclose(cell['bias'][8:16], r, rtol=1e-6)


def test_converted_language_model_folder_records_token_inputs(tmp_path):
    out = convert.convert_to_folder('torch', 'char_lstm', checkpoint('torch_lstm_lm'), tmp_path)
    described = convert.read_metadata(out)
    assert described['input_dtype'] == 'int32' and described['fields']['hidden_size'] == 8


def test_bad_recurrent_requests_fail_with_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"cell is 'gru', 'lstm''s is 'lstm'; convert it as 'gru'"):
        convert.convert('torch', 'lstm', checkpoint('torch_gru_classifier'))
    with pytest.raises(ValueError, match=r"'char_lstm' reads one direction"):
        convert.convert('torch', 'char_lstm', checkpoint('torch_lstm_classifier'))
    with pytest.raises(ValueError, match=r"'char_transformer'.*'char_lstm', 'char_gru'"):
        convert.convert('torch', 'char_transformer', checkpoint('torch_lstm_lm'))
    with pytest.raises(ValueError, match=r'no torch mapping for .resnet18.*torch:rnn'):
        convert.convert('torch', 'resnet18', checkpoint('torch_lstm_lm'))
    tensors = read_safetensors(checkpoint('torch_lstm_classifier'))
    tensors['extra.weight'] = np.ones((3, 12), np.float32)
    np.savez(tmp_path / 'two_heads.npz', **tensors)
    with pytest.raises(ValueError, match=r"one nn.Linear head.*weight-only \['extra'\]"):
        convert.convert('torch', 'lstm', tmp_path / 'two_heads.npz')


def test_reset_after_gru_cell_has_the_candidates_recurrent_bias_and_pytorchs_equations():
    features, hidden = 3, 4
    cell = GRUCell(hidden, reset_after=True)
    x, h = jnp.ones((2, features)), jnp.full((2, hidden), 0.5)
    variables = cell.init(jax.random.key(0), h, x)
    params = variables['params']
    assert params['recurrent_bias'].shape == (hidden,)
    params = jax.tree.map(lambda p: p + 0.1, params)
    w_x, w_h, b, b_hn = (
        params[k] for k in ('input_kernel', 'recurrent_kernel', 'bias', 'recurrent_bias')
    )
    gx, gh = x @ w_x + b, h @ w_h
    z = jax.nn.sigmoid(gx[:, :hidden] + gh[:, :hidden])
    r = jax.nn.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = jnp.tanh(gx[:, 2 * hidden :] + r * (gh[:, 2 * hidden :] + b_hn))
    new_h, _ = cell.apply({'params': params}, h, x)
    np.testing.assert_allclose(new_h, z * h + (1 - z) * n, rtol=1e-6)
    # The paper's form (the default) has no such bias: a GRU model's parameter count is unchanged.
    plain = nets.create('gru', hidden_size=hidden, num_classes=2)
    after = nets.create('gru', hidden_size=hidden, num_classes=2, reset_after=True)
    shape = (1, 5, features)
    assert nets.count_params(after, shape) == nets.count_params(plain, shape) + hidden
