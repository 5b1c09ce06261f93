"""Sequence classifiers on recurrent layers (nets/layers/recurrent.py): 'rnn', 'lstm', 'gru'."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.recurrent import (
    CELLS,
    MERGES,
    StackedRNN,
    hidden_state,
    merge_directions,
    sequence_mask,
)
from nets.registry import register

Dtype = Any
READOUTS = ('last', 'mean', 'flatten')


class RNNClassifier(nn.Module):
    """Sequence classifier: a `StackedRNN`, a readout, dropout and a linear head.

    Inputs are (batch, time, channels) (MNIST-1D: (N, 40, 1)); images (N, H, W, C) are read
    row by row as (N, H, W·C). Readouts:
    - 'last': the final hidden state of the top layer, i.e. after the last valid step (for a
      bidirectional top layer the forward one's and the backward one's, which has read back
      to the first step, merged as `merge` says);
    - 'mean': the mean of the top layer's outputs over valid steps;
    - 'flatten': every time step's output, concatenated (Greydanus 2020's MNIST-1D GRU); the
      head then depends on the sequence length.
    `valid`/`lengths` mark padding as in `RNNLayer`. `reset_after=True` makes a GRU apply its
    reset gate after the recurrent product, as PyTorch's nn.GRU does (`GRUCell`).
    """

    num_classes: int = 10
    cell: str = 'gru'
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = 'concat'
    readout: str = 'last'
    dropout_rate: float = 0.0
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    forget_bias: float = 1.0  # LSTM only
    reset_after: bool = False  # GRU only
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_choice('readout', self.readout, READOUTS)
        blocks.check_choice('merge', self.merge, MERGES)
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_choice(
            'recurrent_kernel_init', self.recurrent_kernel_init, blocks.INITIALIZERS
        )
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if self.hidden_size < 1 or self.num_layers < 1 or self.unroll < 1:
            raise ValueError(
                f'hidden_size, num_layers and unroll must be positive, got '
                f'{self.hidden_size}, {self.num_layers}, {self.unroll}'
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        valid: jax.Array | None = None,
        lengths: jax.Array | None = None,
    ) -> jax.Array:
        if x.ndim < 3:
            raise ValueError(
                f'RNNClassifier expects (batch, time, channels) inputs, got shape {x.shape}'
            )
        x = x.reshape(x.shape[0], x.shape[1], -1).astype(self.dtype)
        mask = sequence_mask(x.shape[0], x.shape[1], valid, lengths)
        carries, outputs = StackedRNN(
            self.cell,
            self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            merge=self.merge,
            dropout_rate=self.dropout_rate,
            kernel_init=self.kernel_init,
            recurrent_kernel_init=self.recurrent_kernel_init,
            forget_bias=self.forget_bias,
            reset_after=self.reset_after,
            unroll=self.unroll,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='rnn',
        )(x, valid=mask, train=train, return_carry=True)
        if self.readout == 'last':
            top = carries[-1]
            if self.bidirectional:
                features = merge_directions(hidden_state(top[0]), hidden_state(top[1]), self.merge)
            else:
                features = hidden_state(top)
            features = features.astype(self.dtype)
        elif self.readout == 'mean':
            weights = mask[..., None].astype(outputs.dtype)
            features = jnp.sum(outputs * weights, axis=1) / jnp.maximum(
                jnp.sum(weights, axis=1), 1.0
            )
        else:
            features = outputs.reshape(outputs.shape[0], -1)
        features = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
        logits = Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head'
        )(features)
        return logits.astype(jnp.float32)


register('rnn', RNNClassifier, family='rnn', cell='rnn')
register('lstm', RNNClassifier, family='rnn', cell='lstm')
register('gru', RNNClassifier, family='rnn', cell='gru')
