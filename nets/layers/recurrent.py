"""Recurrent layers: Elman RNN, LSTM and GRU cells, and layers that scan them over time
(one direction, both directions, stacks). The sequence classifier built on them is
`nets.models.rnn`.

Two entry points for other models:

- a cell step, one token at a time (seq2seq decoders, captioning):

      cell = LSTMCell(features=256)
      carry = cell.initial_carry(batch_size)
      carry, h = cell.apply(variables, carry, x_t)   # x_t: (batch, in_features)

  or, inside a module, `carry, h = self.cell(carry, x_t)`. The output is always the hidden
  state h; the carry is h for 'rnn'/'gru' and `LSTMState(c, h)` for 'lstm'.
- a whole sequence: `RNNLayer(cell='lstm', features=D)(x)` maps (batch, time, in_features) to
  (batch, time, D), with an optional `valid` (batch, time) mask or `lengths` (batch,). An
  LSTM layer runs `LSTMSequence`: the same cell and parameters, with the backward pass of
  `nets.kernels.fused_lstm` (weight gradients as one product over all steps).

Every cell keeps its weights as one input kernel (in_features, G·H), one recurrent kernel
(H, G·H) and one bias (G·H) for its G gates, written out in the order its docstring gives.
Each gate's block is drawn on its own: Glorot-uniform input kernels (Keras' default) and
orthogonal recurrent kernels (Saxe et al. 2014: a square orthogonal matrix keeps the norm of
the state through the recurrence at initialisation, so gradients over many steps neither
vanish nor explode from the start). One bias per gate, so an LSTM has exactly
4(d_in·H + H·H + H) parameters and a GRU 3(d_in·H + H·H + H) (PyTorch/cuDNN keep two biases);
a GRU with `reset_after=True` (PyTorch's and cuDNN's form) has H more, the recurrent bias of its
candidate, which the reset gate multiplies.

The carry stays float32 whatever `dtype` is: matmuls run in `dtype`, the state update in the
carry's precision, so bfloat16 compute does not round the memory away step after step.

Padding: a padded step (valid False) leaves the carry as it was and outputs zeros. A reverse
layer therefore passes its initial carry through trailing padding and starts at each
sequence's last valid step, and every direction reads exactly the valid steps in order.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from nets.kernels.fused_lstm import lstm_sequence, lstm_update
from nets.kernels.mixed_precision import matmul
from nets.layers import blocks

Dtype = Any
Carry = Any  # jax.Array (rnn, gru) or LSTMState (lstm)

MERGES = ('concat', 'sum')


class LSTMState(NamedTuple):
    """The LSTM carry: cell state c (the long-term memory) and hidden state h, both (batch, H)."""

    c: jax.Array
    h: jax.Array


def hidden_state(carry: Carry) -> jax.Array:
    """The hidden state h of any cell's carry."""
    return carry.h if isinstance(carry, LSTMState) else carry


def _per_gate(init: blocks.Initializer, num_gates: int) -> blocks.Initializer:
    """`init` drawn independently for each gate's block of columns: each gate is its own
    (in, H) matrix in the equations, so an orthogonal draw means an orthogonal square block."""

    def init_fn(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        *lead, width = shape
        keys = jax.random.split(key, num_gates)
        block = (*lead, width // num_gates)
        return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

    return init_fn


def _batch_shape(batch_size: int | Sequence[int]) -> tuple[int, ...]:
    # Anything but a sequence is one dimension (an int, or a symbolic size under jax.export).
    return tuple(batch_size) if isinstance(batch_size, (tuple, list)) else (batch_size,)


class _Cell(nn.Module):
    """Fields and weights every cell shares; subclasses write their equations in `__call__`."""

    features: int
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    num_gates = 1  # class constant, not a field

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f'features must be positive, got {self.features}')
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        blocks.check_choice(
            'recurrent_kernel_init', self.recurrent_kernel_init, blocks.INITIALIZERS
        )
        super().__post_init__()

    def bias_init(
        self, key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32
    ) -> jax.Array:
        return jnp.zeros(shape, dtype)

    def _weights(self, in_features: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(input kernel, recurrent kernel, bias); called from the compact `__call__`."""
        width = self.num_gates * self.features
        w_x = self.param(
            'input_kernel',
            _per_gate(blocks.initializer(self.kernel_init), self.num_gates),
            (in_features, width),
            self.param_dtype,
        )
        w_h = self.param(
            'recurrent_kernel',
            _per_gate(blocks.initializer(self.recurrent_kernel_init), self.num_gates),
            (self.features, width),
            self.param_dtype,
        )
        b = self.param('bias', self.bias_init, (width,), self.param_dtype)
        return w_x, w_h, b

    def initial_carry(self, batch_size: int | Sequence[int]) -> Carry:
        """The zero state for `batch_size` sequences (an int, or a tuple of leading dims)."""
        return jnp.zeros((*_batch_shape(batch_size), self.features), jnp.float32)


class SimpleRNNCell(_Cell):
    """Elman RNN: h' = tanh(W_x x + W_h h + b). Carry and output: h (batch, H)."""

    num_gates = 1

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        w_x, w_h, b = self._weights(x.shape[-1])
        x, h, w_x, w_h, b = promote_dtype(x, carry, w_x, w_h, b, dtype=self.dtype)
        h_new = jnp.tanh((matmul(x, w_x) + matmul(h, w_h) + b).astype(carry.dtype))
        return h_new, h_new.astype(self.dtype)


class LSTMCell(_Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et
    al. 2000). Gates in kernel order i, f, g, o:

        i = σ(W_i x + U_i h + b_i)        input gate
        f = σ(W_f x + U_f h + b_f)        forget gate
        g = tanh(W_g x + U_g h + b_g)     candidate
        o = σ(W_o x + U_o h + b_o)        output gate
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')

    The forget-gate bias starts at `forget_bias` = 1 (Gers et al. 2000; Jozefowicz et al. 2015;
    Keras' unit_forget_bias): f ≈ σ(1) ≈ 0.73 at initialisation, so the cell remembers by
    default and gradients flow through c over many steps before training has learnt to keep
    it. Carry: `LSTMState(c, h)`; output: h.
    """

    forget_bias: float = 1.0

    num_gates = 4

    def bias_init(
        self, key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32
    ) -> jax.Array:
        h = self.features
        return jnp.zeros(shape, dtype).at[h : 2 * h].set(self.forget_bias)

    def initial_carry(self, batch_size: int | Sequence[int]) -> LSTMState:
        zeros = jnp.zeros((*_batch_shape(batch_size), self.features), jnp.float32)
        return LSTMState(c=zeros, h=zeros)

    @nn.compact
    def __call__(self, carry: LSTMState, x: jax.Array) -> tuple[LSTMState, jax.Array]:
        c, h = carry
        w_x, w_h, b = self._weights(x.shape[-1])
        x, h_in, w_x, w_h, b = promote_dtype(x, h, w_x, w_h, b, dtype=self.dtype)
        c_new, h_new, _ = lstm_update(c, x, h_in, w_x, w_h, b)
        h_new = h_new.astype(h.dtype)
        return LSTMState(c_new, h_new), h_new.astype(self.dtype)


class LSTMSequence(LSTMCell):
    """`LSTMCell` run over a whole time-major sequence in one call (same parameters), with
    `nets.kernels.fused_lstm`'s backward pass: the weight gradients as single products over all
    steps instead of per-step sums inside the loop. `RNNLayer` runs every LSTM this way."""

    @nn.compact
    def __call__(
        self,
        carry: LSTMState,
        inputs: jax.Array,
        mask: jax.Array,
        *,
        reverse: bool = False,
        unroll: int = 1,
    ) -> tuple[LSTMState, jax.Array]:
        """inputs (time, batch, in), mask (time, batch) -> (final carry, outputs
        (time, batch, H))."""
        w_x, w_h, b = self._weights(inputs.shape[-1])
        carry, outputs = lstm_sequence(
            w_x, w_h, b, tuple(carry), inputs.astype(self.dtype), mask, reverse, unroll, self.dtype
        )
        return LSTMState(*carry), outputs


class GRUCell(_Cell):
    """Gated recurrent unit as Cho et al. 2014 wrote it. Gates in kernel order z, r, n:

        z = σ(W_z x + U_z h + b_z)              update gate
        r = σ(W_r x + U_r h + b_r)              reset gate
        n = tanh(W_n x + U_n (r ⊙ h) + b_n)     candidate
        h' = z ⊙ h + (1 − z) ⊙ n

    The reset gate multiplies h before U_n: the paper's form. `reset_after=True` gives
    PyTorch's and cuDNN's form (Keras' reset_after), which multiplies after U_n:

        n = tanh(W_n x + b_n + r ⊙ (U_n h + b_hn))

    with b_hn the parameter 'recurrent_bias' (H,), which the reset gate scales and so cannot
    merge into b_n (PyTorch's other two hidden biases do merge into b_z and b_r). It also lets
    the three recurrent products run as one. Carry and output: h (batch, H).
    """

    reset_after: bool = False

    num_gates = 3

    @nn.compact
    def __call__(self, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = carry
        w_x, w_h, b = self._weights(x.shape[-1])
        width = self.features
        x, h_in, w_x, w_h, b = promote_dtype(x, h, w_x, w_h, b, dtype=self.dtype)
        from_x = matmul(x, w_x) + b
        # Reset after U_n: the three recurrent products at once; before: U_n waits for r.
        from_h = matmul(h_in, w_h if self.reset_after else w_h[:, : 2 * width])
        z = nn.sigmoid((from_x[..., :width] + from_h[..., :width]).astype(h.dtype))
        r = nn.sigmoid(
            (from_x[..., width : 2 * width] + from_h[..., width : 2 * width]).astype(h.dtype)
        )
        if self.reset_after:
            b_hn = self.param('recurrent_bias', nn.initializers.zeros, (width,), self.param_dtype)
            hidden_n = (from_h[..., 2 * width :] + jnp.asarray(b_hn, self.dtype)).astype(h.dtype)
            n = jnp.tanh(from_x[..., 2 * width :].astype(h.dtype) + r * hidden_n)
        else:
            reset_h = (r * h).astype(w_h.dtype)
            n = jnp.tanh(
                (from_x[..., 2 * width :] + matmul(reset_h, w_h[:, 2 * width :])).astype(h.dtype)
            )
        h_new = z * h + (1.0 - z) * n
        return h_new, h_new.astype(self.dtype)


CELLS: dict[str, type[_Cell]] = {'rnn': SimpleRNNCell, 'lstm': LSTMCell, 'gru': GRUCell}


def make_cell(cell: str, features: int, **fields: Any) -> _Cell:
    """The cell called `cell` ('rnn', 'lstm', 'gru') with `features` hidden units."""
    blocks.check_choice('cell', cell, CELLS)
    return CELLS[cell](features=features, **fields)


def cell_type_fields(cell: str, forget_bias: float, reset_after: bool) -> dict[str, Any]:
    """Of the fields only one cell type has (LSTM: forget_bias, GRU: reset_after), those that
    `cell` takes, for the layers and models that carry both."""
    if cell == 'lstm':
        return {'forget_bias': forget_bias}
    if cell == 'gru':
        return {'reset_after': reset_after}
    return {}


def sequence_mask(
    batch: int, time: int, valid: jax.Array | None = None, lengths: jax.Array | None = None
) -> jax.Array:
    """(batch, time) booleans from a `valid` mask, or `lengths` (the first lengths[b] steps are
    valid), or all True when neither is given."""
    if valid is not None and lengths is not None:
        raise ValueError('give either valid or lengths, not both')
    if lengths is not None:
        return jnp.arange(time)[None, :] < jnp.asarray(lengths)[:, None]
    if valid is None:
        return jnp.ones((batch, time), bool)
    valid = jnp.asarray(valid)
    if valid.shape != (batch, time):
        raise ValueError(f'valid has shape {valid.shape}; expected (batch, time) = {(batch, time)}')
    return valid.astype(bool)


def _masked_step(
    cell: _Cell, carry: Carry, inputs: tuple[jax.Array, jax.Array]
) -> tuple[Carry, jax.Array]:
    """One scanned step: a padded step keeps the old carry and outputs zeros."""
    x_t, valid_t = inputs
    new_carry, y = cell(carry, x_t)
    keep = valid_t[:, None]
    carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, carry)
    return carry, jnp.where(keep, y, jnp.zeros_like(y))


class RNNLayer(nn.Module):
    """One recurrent layer: `cell` scanned over time, (batch, time, in) -> (batch, time, features).

    `reverse=True` reads the sequence from the end (outputs stay at their time positions).
    `valid` (batch, time) or `lengths` (batch,) mark padding; see the module docstring. With
    `return_carry=True` the call returns `(final_carry, outputs)`: the carry after the last
    valid step read (the first valid step for a reverse layer). `initial_carry` defaults to
    zeros. The cell's parameters live under 'cell' and are shared by all steps (`nn.scan` with
    the params broadcast; for 'lstm', `LSTMSequence`); `unroll` steps are unrolled per loop
    iteration (helps on GPU).
    """

    cell: str
    features: int
    reverse: bool = False
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    forget_bias: float = 1.0  # LSTM only
    reset_after: bool = False  # GRU only
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        if self.unroll < 1:
            raise ValueError(f'unroll must be >= 1, got {self.unroll}')
        super().__post_init__()

    def _build_cell(self, name: str | None = 'cell') -> _Cell:
        if self.cell == 'lstm':
            return LSTMSequence(
                self.features,
                kernel_init=self.kernel_init,
                recurrent_kernel_init=self.recurrent_kernel_init,
                forget_bias=self.forget_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )
        return make_cell(
            self.cell,
            self.features,
            kernel_init=self.kernel_init,
            recurrent_kernel_init=self.recurrent_kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **cell_type_fields(self.cell, self.forget_bias, self.reset_after),
        )

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        valid: jax.Array | None = None,
        lengths: jax.Array | None = None,
        initial_carry: Carry | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[Carry, jax.Array]:
        if inputs.ndim != 3:
            raise ValueError(
                f'RNNLayer expects (batch, time, features) inputs, got shape {inputs.shape}'
            )
        batch, time = inputs.shape[:2]
        mask = sequence_mask(batch, time, valid, lengths)
        cell = self._build_cell()
        carry = cell.initial_carry(batch) if initial_carry is None else initial_carry
        if isinstance(cell, LSTMSequence):
            carry, outputs = cell(
                carry, jnp.swapaxes(inputs, 0, 1), mask.T, reverse=self.reverse, unroll=self.unroll
            )
            outputs = jnp.swapaxes(outputs, 0, 1)
            return (carry, outputs) if return_carry else outputs
        scan = nn.scan(
            _masked_step,
            variable_broadcast='params',
            split_rngs={'params': False},
            in_axes=1,
            out_axes=1,
            reverse=self.reverse,
            unroll=self.unroll,
        )
        carry, outputs = scan(cell, carry, (inputs, mask))
        return (carry, outputs) if return_carry else outputs


class BidirectionalRNN(nn.Module):
    """A forward and a reverse `RNNLayer` over the same inputs, merged by `merge`: 'concat'
    gives (batch, time, 2·features), 'sum' (batch, time, features). The carry returned with
    `return_carry=True` is (forward carry, backward carry)."""

    cell: str
    features: int
    merge: str = 'concat'
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    forget_bias: float = 1.0
    reset_after: bool = False
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_choice('merge', self.merge, MERGES)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        valid: jax.Array | None = None,
        lengths: jax.Array | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[tuple[Carry, Carry], jax.Array]:
        mask = sequence_mask(inputs.shape[0], inputs.shape[1], valid, lengths)
        fields = dict(
            cell=self.cell,
            features=self.features,
            kernel_init=self.kernel_init,
            recurrent_kernel_init=self.recurrent_kernel_init,
            forget_bias=self.forget_bias,
            reset_after=self.reset_after,
            unroll=self.unroll,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        forward_carry, forward = RNNLayer(**fields, name='forward')(
            inputs, valid=mask, return_carry=True
        )
        backward_carry, backward = RNNLayer(**fields, reverse=True, name='backward')(
            inputs, valid=mask, return_carry=True
        )
        outputs = merge_directions(forward, backward, self.merge)
        return ((forward_carry, backward_carry), outputs) if return_carry else outputs


def merge_directions(forward: jax.Array, backward: jax.Array, merge: str) -> jax.Array:
    """Concatenate (on the feature axis) or sum the two directions' arrays."""
    blocks.check_choice('merge', merge, MERGES)
    return (
        jnp.concatenate([forward, backward], axis=-1) if merge == 'concat' else forward + backward
    )


class StackedRNN(nn.Module):
    """`num_layers` recurrent layers (bidirectional or not), each reading the previous one's
    outputs, with dropout between layers (not after the last, as PyTorch's `dropout`).
    `return_carry=True` returns (tuple of each layer's final carry, top outputs)."""

    cell: str
    features: int
    num_layers: int = 1
    bidirectional: bool = False
    merge: str = 'concat'
    dropout_rate: float = 0.0
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    forget_bias: float = 1.0
    reset_after: bool = False
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_choice('merge', self.merge, MERGES)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if self.num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {self.num_layers}')
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        valid: jax.Array | None = None,
        lengths: jax.Array | None = None,
        train: bool = False,
        return_carry: bool = False,
    ) -> jax.Array | tuple[tuple[Any, ...], jax.Array]:
        mask = sequence_mask(inputs.shape[0], inputs.shape[1], valid, lengths)
        fields = dict(
            cell=self.cell,
            features=self.features,
            kernel_init=self.kernel_init,
            recurrent_kernel_init=self.recurrent_kernel_init,
            forget_bias=self.forget_bias,
            reset_after=self.reset_after,
            unroll=self.unroll,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x, carries = inputs, []
        for i in range(self.num_layers):
            if i > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            if self.bidirectional:
                layer = BidirectionalRNN(**fields, merge=self.merge, name=f'layer{i}')
            else:
                layer = RNNLayer(**fields, name=f'layer{i}')
            carry, x = layer(x, valid=mask, return_carry=True)
            carries.append(carry)
        return (tuple(carries), x) if return_carry else x
