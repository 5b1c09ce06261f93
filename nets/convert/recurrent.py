"""PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` models (source 'torch') into the recurrent models.

Two targets, by the model name:
- 'lstm', 'gru', 'rnn' (`RNNClassifier`): a recurrent module plus one `nn.Linear` head reading
  the top layer's final hidden state, `h_n[-1]` (bidirectional: `cat(h_n[-2], h_n[-1])`), which
  is `readout='last'`; a head on the mean of the outputs converts with the field
  `readout='mean'`, one on every step's output with `readout='flatten'`.
- 'char_lstm', 'char_gru', 'char_rnn' (`RecurrentLM`): an `nn.Embedding`, a unidirectional
  recurrent module and one `nn.Linear` to the vocabulary (a head tied to the embedding converts
  as an untied copy).
The recurrent module's tensors are found by PyTorch's names (`<prefix>weight_ih_l0`, ...,
`_reverse` for the second direction) whatever the module is called (the prefix may be empty,
as when a bare nn.LSTM's state dict is saved with the head's); the head and the embedding are
the other modules (`<name>.weight` with and without `<name>.bias`). Sizes, layer count and
direction come from the tensors; the cell type must match the model's.

Layouts: PyTorch keeps (G·H, in) weights and two biases per gate; nets one (in, G·H) kernel
and one bias (the two summed). LSTM gates are i, f, g, o in both. PyTorch's GRU orders its gates
r, z, n and applies the reset gate after the hidden product, so a GRU converts with
`reset_after=True`, gates reordered to z, r, n and the candidate's hidden bias b_hn kept apart
('recurrent_bias'). nn.RNN converts as tanh (a ReLU nn.RNN has no counterpart), and an LSTM with
`proj_size` neither.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

import nets
from nets.convert.core import Converted
from nets.convert.tensors import FlaxTree, Tensors, dense_kernel

CELL_OF_GATES = {4: 'lstm', 3: 'gru', 1: 'rnn'}
CLASSIFIERS = ('lstm', 'gru', 'rnn')
LANGUAGE_MODELS = ('char_lstm', 'char_gru', 'char_rnn')
_FIRST = re.compile(r'(.*)weight_ih_l0$')


def _recurrent_prefix(tensors: Tensors) -> str:
    prefixes = sorted({m.group(1) for n in tensors.names() if (m := _FIRST.match(n))})
    if len(prefixes) != 1:
        raise ValueError(
            f'expected one nn.LSTM/GRU/RNN (a <prefix>weight_ih_l0 tensor), found {len(prefixes)}: '
            f'{[p + "weight_ih_l0" for p in prefixes] or tensors.names()[:5]}'
        )
    prefix = prefixes[0]
    if f'{prefix}weight_hr_l0' in tensors:
        raise ValueError(f'{prefix}weight_hr_l0: an LSTM with proj_size has no nets counterpart')
    return prefix


def _gru_order(array: np.ndarray) -> np.ndarray:
    """PyTorch's GRU gate blocks (r, z, n) along axis 0 in nets' order (z, r, n)."""
    r, z, n = np.split(array, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def _layer(
    tensors: Tensors, prefix: str, suffix: str, cell: str, tree: FlaxTree, path: str
) -> None:
    """One direction of one layer (PyTorch names `<prefix>weight_ih_<suffix>`, ...) into the
    cell at `path`."""
    w_ih = tensors.take(f'{prefix}weight_ih_{suffix}')
    w_hh = tensors.take(f'{prefix}weight_hh_{suffix}')
    width = w_ih.shape[0]
    biases = [
        tensors.take(f'{prefix}{kind}_{suffix}')
        if f'{prefix}{kind}_{suffix}' in tensors
        else np.zeros(width, np.float32)
        for kind in ('bias_ih', 'bias_hh')
    ]
    b_ih, b_hh = biases
    if cell == 'gru':
        # b_hn stays inside r ⊙ (W_hn h + b_hn): its own parameter, out of the summed bias.
        hidden = width // 3
        tree.param(f'{path}/recurrent_bias', b_hh[2 * hidden :])
        b_hh = np.concatenate([b_hh[: 2 * hidden], np.zeros(hidden, np.float32)])
        w_ih, w_hh, b_ih, b_hh = (_gru_order(a) for a in (w_ih, w_hh, b_ih, b_hh))
    tree.param(f'{path}/input_kernel', dense_kernel(w_ih))
    tree.param(f'{path}/recurrent_kernel', dense_kernel(w_hh))
    tree.param(f'{path}/bias', b_ih + b_hh)


def _read_recurrent(
    tensors: Tensors, model: str, fields: dict[str, Any], path: str, bidirectional_ok: bool
) -> tuple[FlaxTree, dict[str, Any], str]:
    """The recurrent module into the layers at `path` (with '{i}' for the layer index); returns
    the tree, the fields it fixes and its prefix."""
    prefix = _recurrent_prefix(tensors)
    hidden = tensors.shape(f'{prefix}weight_hh_l0')[1]
    gates = tensors.shape(f'{prefix}weight_ih_l0')[0] // hidden
    if gates not in CELL_OF_GATES:
        raise ValueError(f'{prefix}weight_ih_l0 holds {gates} gates; convertible: 4, 3, 1')
    cell = CELL_OF_GATES[gates]
    expected = fields.get('cell', nets.model_fields(model)['cell'])
    if cell != expected:
        raise ValueError(
            f"the checkpoint's cell is {cell!r}, {model!r}'s is {expected!r}; "
            f"convert it as {cell!r} or 'char_{cell}'"
        )
    bidirectional = f'{prefix}weight_ih_l0_reverse' in tensors
    if bidirectional and not bidirectional_ok:
        raise ValueError(f'{model!r} reads one direction; the checkpoint is bidirectional')
    num_layers = tensors.count(rf'{re.escape(prefix)}weight_ih_l(\d+)$')
    tree = FlaxTree()
    for i in range(num_layers):
        layer = path.format(i=i)
        if bidirectional:
            _layer(tensors, prefix, f'l{i}', cell, tree, f'{layer}/forward/cell')
            _layer(tensors, prefix, f'l{i}_reverse', cell, tree, f'{layer}/backward/cell')
        else:
            _layer(tensors, prefix, f'l{i}', cell, tree, f'{layer}/cell')
    inferred: dict[str, Any] = dict(cell=cell, hidden_size=hidden, num_layers=num_layers)
    if cell == 'gru':
        inferred['reset_after'] = True
    if bidirectional_ok:
        inferred['bidirectional'] = bidirectional
    return tree, inferred, prefix


def _modules(tensors: Tensors, prefix: str) -> tuple[list[str], list[str]]:
    """The modules outside the recurrent one: (with weight and bias, with a weight only)."""
    names = [n for n in tensors.names() if not (prefix and n.startswith(prefix))]
    weights = sorted(n[: -len('.weight')] for n in names if n.endswith('.weight'))
    linear = [m for m in weights if f'{m}.bias' in tensors]
    return linear, [m for m in weights if m not in linear]


def classifier(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """A PyTorch recurrent classifier into 'lstm' / 'gru' / 'rnn'; see the module docstring."""
    del image_size
    if model not in CLASSIFIERS:
        raise ValueError(f'no torch mapping for {model!r}; convertible rnn models: {CLASSIFIERS}')
    tree, inferred, prefix = _read_recurrent(tensors, model, fields, 'rnn/layer{i}', True)
    linear, other = _modules(tensors, prefix)
    if len(linear) != 1 or other:
        raise ValueError(
            f'expected one nn.Linear head beside the recurrent module, found linear {linear} '
            f'and weight-only {other}'
        )
    tree.dense(tensors, linear[0], 'head')
    reads = tensors.shape(f'{linear[0]}.weight')[1]
    step = inferred['hidden_size'] * (2 if inferred.get('bidirectional') else 1)
    readout = fields.get('readout', 'last')
    time = reads // step if readout == 'flatten' else 1
    inferred.update(num_classes=tensors.shape(f'{linear[0]}.weight')[0], readout=readout)
    features = tensors.shape(f'{prefix}weight_ih_l0')[1]
    return Converted(
        model, {**inferred, **fields}, tree.params, tree.model_state(), (time, features)
    )


def language_model(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """A PyTorch embedding - recurrent - linear language model into 'char_lstm' / 'char_gru' /
    'char_rnn'; see the module docstring."""
    del image_size
    if model not in LANGUAGE_MODELS:
        raise ValueError(
            f'no torch mapping for {model!r}; convertible language models: {LANGUAGE_MODELS}'
        )
    tree, inferred, prefix = _read_recurrent(tensors, model, fields, 'layer{i}', False)
    linear, other = _modules(tensors, prefix)
    if len(linear) != 1 or len(other) != 1:
        raise ValueError(
            f'expected one nn.Embedding and one nn.Linear beside the recurrent module, found '
            f'weight-only {other} and linear {linear}'
        )
    embedding = tensors.take(f'{other[0]}.weight')
    tree.param('embedding/embedding', embedding)
    tree.dense(tensors, linear[0], 'head')
    inferred.update(
        num_classes=embedding.shape[0], embed_dim=embedding.shape[1], tie_embeddings=False
    )
    return Converted(
        model,
        {**inferred, **fields},
        tree.params,
        tree.model_state(),
        (1,),
        input_dtype='int32',
    )
