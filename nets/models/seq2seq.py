"""Recurrent encoder-decoders: the fixed-context model of Cho et al. 2014 / Sutskever et al.
2014, and the attention model of Bahdanau et al. 2015.

Both read source token ids (padded with `pad_id`) with a recurrent encoder and write the
target one token at a time with a recurrent decoder; they differ in what the decoder learns
about the source (`form`):

- 'context' (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder";
  Sutskever et al. 2014): a unidirectional encoder; its final state after the last real
  token is the one context vector c. The decoder starts from the encoder's final carries
  (every layer's, as Sutskever et al.) and reads [E y_{i-1}; c] at every step.
- 'attention' (Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to Align
  and Translate"): a bidirectional encoder gives annotations h_j = [→h_j; ←h_j]. The decoder
  starts from s_0 = tanh(W ←h_1) and at step i computes its own context c_i from the
  PREVIOUS state s_{i-1} by `AdditiveAttention` over the annotations (padding masked out),
  then its cell reads [E y_{i-1}; c_i].

Both predict y_i from the new state, the context and the previous word through the papers'
maxout deep output: t_i = max-of-pairs(W_o [s_i; c_i; E y_{i-1}]), logits = V_o t_i.

Conventions, as `nets.models.transformer`: ids pad 0, bos 1, eos 2 (`data.tokenizers`). `targets`
are the tokens to predict (eos at the end, pad after; no bos); teacher forcing shifts them
right behind bos internally, so logits[:, t] predicts targets[:, t] from targets[:, :t].
Source and target vocabularies are separate (the translation data has one per language).

The decoder is one module, `DecoderStep`, that takes one token: teacher forcing scans it
over time (`nn.scan`, one compiled step), and generation (`generate`, via
`nets.layers.decoding`'s greedy or beam search) calls it through `decode_step`. The captioning
model (`nets.models.captioning`) uses the same decoder step.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks, decoding
from nets.layers.attention import AdditiveAttention
from nets.layers.recurrent import CELLS, LSTMState, StackedRNN, hidden_state, make_cell
from nets.models.transformer import shift_right
from nets.registry import register

Dtype = Any
Carry = Any  # one cell's carry: jax.Array (rnn, gru) or LSTMState (lstm)

FORMS = ('context', 'attention')
READOUTS = ('maxout', 'deep')


class Memory(NamedTuple):
    """What the decoder reads at every step, computed once per source. Leaves have the batch
    (or batch · beams) as their leading axis; unused fields are None.

    annotations: (batch, source_len, D) vectors to attend over (attention decoders);
    valid: (batch, source_len) bool, True for real source positions (None: all real);
    keys: (batch, source_len, A) the attention's key projection of the annotations;
    context: (batch, D) the fixed context vector (decoders without attention).
    """

    annotations: jax.Array | None = None
    valid: jax.Array | None = None
    keys: jax.Array | None = None
    context: jax.Array | None = None


class Encoded(NamedTuple):
    """`encode`'s result: the decoder's `memory` and its initial `carry` (one per layer)."""

    memory: Memory
    carry: tuple[Carry, ...]


# ----------------------------------------------------------------------------- the decoder step


class DecoderStep(nn.Module):
    """One step of a recurrent decoder: (carries, embedded previous token, memory) ->
    (new carries, (logits, attention weights)).

    With `attention_features` > 0 the context is `AdditiveAttention` from the previous
    top-layer hidden state over `memory.annotations`, optionally scaled by the gate
    β = σ(w_β · h_{t-1} + b) (`gate`, Xu et al. 2015 §4.2.1); otherwise it is
    `memory.context` and the weights are None. Layer 0 reads [embedding; context], layer l
    the output of layer l-1 (dropout between layers). Readouts:
    - 'maxout' (Bahdanau et al. / Cho et al.): V_o maxout₂(W_o [h; context; embedding]) with
      `readout_size` maxout units;
    - 'deep' (Xu et al. 2015, eq. 7): L_o(embedding + L_h h + L_z context), where L_h and L_z
      map to the embedding width, which `readout_size` must equal.
    Dropout is applied to the readout's input.
    """

    vocab_size: int
    hidden_size: int
    cell: str = 'gru'
    num_layers: int = 1
    attention_features: int = 0  # 0: no attention (fixed context)
    gate: bool = False
    readout: str = 'maxout'
    readout_size: int = 64  # maxout units ('maxout'); the embedding width ('deep')
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_choice('readout', self.readout, READOUTS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        sizes = ('vocab_size', 'hidden_size', 'num_layers', 'readout_size')
        if min(getattr(self, size) for size in sizes) < 1 or self.attention_features < 0:
            raise ValueError(
                f'{", ".join(sizes)} must be positive and attention_features >= 0, got '
                f'{[getattr(self, size) for size in sizes]} and {self.attention_features}'
            )
        super().__post_init__()

    def setup(self) -> None:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.cells = [
            make_cell(self.cell, self.hidden_size, **dims) for _ in range(self.num_layers)
        ]
        if self.attention_features:
            self.attention = AdditiveAttention(self.attention_features, **dims)
            if self.gate:
                self.gate_projection = Dense(1, **dims)
        if self.readout == 'maxout':
            self.readout_projection = Dense(2 * self.readout_size, **dims)
        else:
            self.hidden_projection = Dense(self.readout_size, **dims)  # L_h
            self.context_projection = Dense(self.readout_size, **dims)  # L_z
        self.output_projection = Dense(self.vocab_size, **dims)
        self.dropout = nn.Dropout(self.dropout_rate)

    def project_keys(self, annotations: jax.Array) -> jax.Array:
        """The attention's key projection of (batch, source_len, D) annotations, for
        `Memory.keys`."""
        return self.attention.project_keys(annotations)

    def __call__(
        self, carry: tuple[Carry, ...], embedded: jax.Array, memory: Memory, *, train: bool = False
    ) -> tuple[tuple[Carry, ...], tuple[jax.Array, jax.Array | None]]:
        if len(carry) != self.num_layers:
            raise ValueError(
                f'the decoder has {self.num_layers} layer(s) but got {len(carry)} carries'
            )
        embedded = embedded.astype(self.dtype)
        weights = None
        if self.attention_features:
            previous = hidden_state(carry[-1]).astype(self.dtype)
            context, weights = self.attention(
                previous, memory.annotations, mask=memory.valid, projected_keys=memory.keys
            )
            if self.gate:
                context = context * nn.sigmoid(self.gate_projection(previous))
        elif memory.context is None:
            raise ValueError('a decoder without attention reads memory.context, which is None')
        else:
            context = memory.context
        context = context.astype(self.dtype)
        x = jnp.concatenate([embedded, context], axis=-1)
        new_carry = []
        for i, (cell, layer_carry) in enumerate(zip(self.cells, carry)):
            if i > 0:
                x = self.dropout(x, deterministic=not train)
            layer_carry, x = cell(layer_carry, x)
            new_carry.append(layer_carry)
        if self.readout == 'maxout':
            t = self.readout_projection(
                self.dropout(
                    jnp.concatenate([x, context, embedded], axis=-1), deterministic=not train
                )
            )
            t = jnp.max(t.reshape(*t.shape[:-1], self.readout_size, 2), axis=-1)
        else:
            if embedded.shape[-1] != self.readout_size:
                raise ValueError(
                    f"readout 'deep' adds the embedding to L_h h + L_z z: readout_size "
                    f'{self.readout_size} must equal the embedding width {embedded.shape[-1]}'
                )
            t = embedded + self.hidden_projection(x) + self.context_projection(context)
            t = self.dropout(t, deterministic=not train)
        logits = self.output_projection(t).astype(jnp.float32)
        return tuple(new_carry), (logits, weights)


def teacher_forcing(
    decoder: DecoderStep,
    carry: tuple[Carry, ...],
    embedded: jax.Array,
    memory: Memory,
    *,
    train: bool,
    unroll: int = 1,
) -> tuple[jax.Array, jax.Array | None]:
    """`decoder` scanned over (batch, time, E) embedded decoder inputs.

    Call from inside a parent module's method with the parent's `decoder` submodule. Returns
    (logits (batch, time, vocab), attention weights (batch, time, source_len) or None). The
    step's parameters are shared by all steps; dropout draws new masks at every step; sown
    attention weights are stacked on axis 1, so 'intermediates' holds (batch, time, source_len).
    """

    def step(
        decoder: DecoderStep, carry: tuple[Carry, ...], embedded_t: jax.Array, memory: Memory
    ) -> tuple[tuple[Carry, ...], tuple[jax.Array, jax.Array | None]]:
        return decoder(carry, embedded_t, memory, train=train)

    scan = nn.scan(
        step,
        variable_broadcast='params',
        variable_axes={'intermediates': 1},
        split_rngs={'params': False, 'dropout': True},
        in_axes=(1, nn.broadcast),
        out_axes=1,
        unroll=unroll,
    )
    _, (logits, weights) = scan(decoder, carry, embedded, memory)
    return logits, weights


# ----------------------------------------------------------------------------- the model


class Seq2Seq(nn.Module):
    """Recurrent encoder-decoder over int token ids; see the module docstring for `form`.

    `__call__(inputs, targets, *, train)` -> (batch, target_len, target_vocab_size) float32
    logits by teacher forcing (targets shifted right behind `bos_id` inside). `encode(inputs)`
    -> `Encoded(memory, carry)`; `decode_step(memory, carry, tokens)` -> (logits, carry) for one
    token per example. The source padding mask is `inputs != pad_id`.

    Sizes: embeddings `embed_dim`; encoder and decoder cells `hidden_size` (per direction for
    the bidirectional encoder, whose annotations are 2·hidden_size wide); attention tanh
    layer `attention_dim`; `readout_size` maxout units. `num_layers` stacks both the encoder
    and the decoder. Dropout (`dropout_rate`) on both embeddings, between stacked layers and
    before the output projection.
    """

    form: str = 'attention'
    source_vocab_size: int = 256
    target_vocab_size: int = 256
    embed_dim: int = 64
    hidden_size: int = 128
    attention_dim: int = 128
    readout_size: int = 64
    cell: str = 'gru'
    num_layers: int = 1
    dropout_rate: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('form', self.form, FORMS)
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        sizes = (
            'source_vocab_size',
            'target_vocab_size',
            'embed_dim',
            'hidden_size',
            'attention_dim',
            'readout_size',
            'num_layers',
            'unroll',
        )
        if min(getattr(self, size) for size in sizes) < 1:
            raise ValueError(
                f'{", ".join(sizes)} must be positive, got '
                f'{[getattr(self, size) for size in sizes]}'
            )
        check_token_ids(self, self.target_vocab_size)
        if not 0 <= self.pad_id < self.source_vocab_size:
            raise ValueError(
                f'pad_id {self.pad_id} is outside the source vocabulary '
                f'[0, {self.source_vocab_size})'
            )
        super().__post_init__()

    def setup(self) -> None:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.source_embedding = nn.Embed(self.source_vocab_size, self.embed_dim, **dims)
        self.target_embedding = nn.Embed(self.target_vocab_size, self.embed_dim, **dims)
        attention = self.form == 'attention'
        self.encoder = StackedRNN(
            self.cell,
            self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=attention,
            dropout_rate=self.dropout_rate,
            unroll=self.unroll,
            **dims,
        )
        if attention:
            # s_0 = tanh(W ←h_1) per decoder layer; an LSTM's cell state gets its own W.
            parts = 2 if self.cell == 'lstm' else 1
            self.bridges = [Dense(parts * self.hidden_size, **dims) for _ in range(self.num_layers)]
        self.decoder = DecoderStep(
            self.target_vocab_size,
            self.hidden_size,
            cell=self.cell,
            num_layers=self.num_layers,
            attention_features=self.attention_dim if attention else 0,
            readout='maxout',
            readout_size=self.readout_size,
            dropout_rate=self.dropout_rate,
            **dims,
        )
        self.dropout = nn.Dropout(self.dropout_rate)

    def _check_ids(self, tokens: jax.Array, what: str) -> None:
        if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim != 2:
            raise ValueError(
                f'Seq2Seq expects (batch, length) int token ids as {what}, got '
                f'{tokens.dtype} of shape {tokens.shape}'
            )

    def _bridge(self, backward_carry: Carry, bridge: Dense) -> Carry:
        """A decoder layer's initial carry from the backward encoder's state after the first
        token."""
        state = jnp.tanh(bridge(hidden_state(backward_carry).astype(self.dtype))).astype(
            jnp.float32
        )
        if self.cell == 'lstm':
            c, h = jnp.split(state, 2, axis=-1)
            return LSTMState(c=c, h=h)
        return state

    def encode(self, inputs: jax.Array, *, train: bool = False) -> Encoded:
        """(batch, source_len) token ids -> `Encoded(memory, carry)` for the decoder.

        Padded positions (`inputs == pad_id`) are skipped by the recurrences (`RNNLayer`'s
        `valid`): final states are those after each sequence's last real token (the first,
        for the backward direction), and attention never looks at padding.
        """
        self._check_ids(inputs, 'inputs')
        valid = inputs != self.pad_id
        x = self.dropout(self.source_embedding(inputs), deterministic=not train)
        carries, annotations = self.encoder(x, valid=valid, train=train, return_carry=True)
        if self.form == 'context':
            memory = Memory(context=hidden_state(carries[-1]).astype(self.dtype))
            return Encoded(memory, tuple(carries))
        carry = tuple(
            self._bridge(backward, bridge) for (_, backward), bridge in zip(carries, self.bridges)
        )
        memory = Memory(
            annotations=annotations, valid=valid, keys=self.decoder.project_keys(annotations)
        )
        return Encoded(memory, carry)

    def decode(self, encoded: Encoded, targets: jax.Array, *, train: bool = False) -> jax.Array:
        """Teacher forcing: (batch, target_len) targets -> (batch, target_len, vocab) float32
        logits.

        `targets` hold the tokens to predict (eos, then pad; no bos); they are shifted right
        behind `bos_id` here. With `mutable=['intermediates']` the attention weights
        (batch, target_len, source_len) are sown (see `alignments`).
        """
        self._check_ids(targets, 'targets')
        embedded = self.target_embedding(shift_right(targets, self.bos_id))
        embedded = self.dropout(embedded, deterministic=not train)
        logits, _ = teacher_forcing(
            self.decoder, encoded.carry, embedded, encoded.memory, train=train, unroll=self.unroll
        )
        return logits

    def decode_step(
        self, memory: Memory, carry: tuple[Carry, ...], tokens: jax.Array
    ) -> tuple[jax.Array, tuple[Carry, ...]]:
        """One generation step: previous tokens (batch,) -> (next-token logits (batch, vocab),
        carry).

        Feed `bos_id` first with `encode`'s carry, then each chosen token. No dropout.
        """
        embedded = self.target_embedding(tokens)
        carry, (logits, _) = self.decoder(carry, embedded, memory, train=False)
        return logits, carry

    def __call__(self, inputs: jax.Array, targets: jax.Array, *, train: bool = False) -> jax.Array:
        """(batch, source_len) and (batch, target_len) token ids -> (batch, target_len, vocab)
        logits."""
        return self.decode(self.encode(inputs, train=train), targets, train=train)


def check_token_ids(model: nn.Module, vocab_size: int) -> None:
    """pad, bos and eos ids inside the (target) vocabulary, eos different from pad."""
    for token in ('pad_id', 'bos_id', 'eos_id'):
        if not 0 <= getattr(model, token) < vocab_size:
            raise ValueError(
                f'{token} {getattr(model, token)} is outside the vocabulary [0, {vocab_size})'
            )
    if model.eos_id == model.pad_id:
        # Padding is masked out of the inputs and losses; eos must stay visible.
        raise ValueError(f'eos_id and pad_id must differ, both are {model.eos_id}')


# ------------------------------------------------------------------------ generation and alignments


def make_step_fn(
    model: nn.Module, variables: dict[str, Any], source: jax.Array, *, beam_size: int = 1
) -> tuple[decoding.StepFn, tuple[Carry, ...]]:
    """Encodes `source` once; returns (step_fn, initial carry) for `nets.layers.decoding`.

    Works for any model with `encode(source)` -> `Encoded` and `decode_step(memory, carry,
    tokens)` (`Seq2Seq`, `nets.models.captioning.ShowAttendTell`). The step function closes over the
    memory repeated for `beam_size` beams per example (`decoding.expand_to_beams`); the
    carry is the batch's, which the searches expand themselves.
    """
    encoded = model.apply(variables, source, train=False, method='encode')
    memory = decoding.expand_to_beams(encoded.memory, beam_size)

    def step_fn(tokens: jax.Array, carry: tuple[Carry, ...]) -> tuple[jax.Array, tuple[Carry, ...]]:
        return model.apply(variables, memory, carry, tokens, method='decode_step')

    return step_fn, encoded.carry


def generate(
    model: nn.Module,
    variables: dict[str, Any],
    source: jax.Array,
    *,
    max_length: int,
    beam_size: int = 1,
    alpha: float = decoding.GNMT_ALPHA,
    all_beams: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Greedy (beam_size=1) or beam search from (batch, ...) sources.

    Returns the best hypothesis per example: sequences (batch, max_length) int32 (no bos; eos,
    then pad) and scores (batch,): summed log-probabilities for greedy search, GNMT
    length-normalised (`alpha`) for beam search. `all_beams=True` (beam search only) returns
    every beam instead, (batch, beam_size, max_length) and (batch, beam_size), best first.
    Jit it with `model`, `max_length`, `beam_size` static.
    """
    step_fn, carry = make_step_fn(model, variables, source, beam_size=beam_size)
    search = dict(
        batch_size=source.shape[0],
        max_length=max_length,
        bos_id=model.bos_id,
        eos_id=model.eos_id,
        pad_id=model.pad_id,
    )
    if beam_size == 1 and not all_beams:
        return decoding.greedy_search(step_fn, carry, **search)
    sequences, scores = decoding.beam_search(
        step_fn, carry, beam_size=beam_size, alpha=alpha, **search
    )
    return (sequences, scores) if all_beams else (sequences[:, 0], scores[:, 0])


def sown_attention(intermediates: dict[str, Any]) -> jax.Array:
    """The decoder's attention weights (batch, target_len, source_len) from the 'intermediates'
    of a teacher-forced apply."""
    try:
        return intermediates['decoder']['attention']['attention_weights'][0]
    except KeyError:
        raise ValueError(
            "no attention weights were sown: the model has no attention ('context' "
            "form?) or was not applied with mutable=['intermediates']"
        ) from None


def alignments(
    model: Seq2Seq, variables: dict[str, Any], inputs: jax.Array, targets: jax.Array
) -> jax.Array:
    """Attention weights α_ij (batch, target_len, source_len) of a teacher-forced pass, for
    alignment heat maps: row i is what the decoder read when predicting targets[:, i]; each
    row sums to 1 over the real source positions (padding gets 0). 'attention' form only."""
    if model.form != 'attention':
        raise ValueError(f"alignments need form 'attention'; this model's form is {model.form!r}")
    _, state = model.apply(variables, inputs, targets, train=False, mutable=['intermediates'])
    return sown_attention(state['intermediates'])


# ----------------------------------------------------------------------------- variants

# Small enough for a CPU (embed 64, hidden 128). The vocabularies come from the data
# (`source_vocab_size` / `target_vocab_size`); 256 fits byte- and character-level toys.
register(
    'seq2seq_context',
    Seq2Seq,
    family='seq2seq',
    form='context',
    embed_dim=64,
    hidden_size=128,
    readout_size=64,
    cell='gru',
    num_layers=1,
)
register(
    'seq2seq_attention',
    Seq2Seq,
    family='seq2seq',
    form='attention',
    embed_dim=64,
    hidden_size=128,
    attention_dim=128,
    readout_size=64,
    cell='gru',
    num_layers=1,
)
