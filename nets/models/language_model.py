"""Character (or token) language models: a recurrent LM, a decoder-only Transformer LM, and
sampling from either.

Both map int token ids (batch, time) to next-token logits (batch, time, vocab) float32:
logits[:, t] is the model's distribution of tokens[:, t + 1] given tokens[:, :t + 1]. The
vocabulary size is the `num_classes` field, as for every model here, so the trainer fills it
from the data set (a language model's classes are its target tokens; inputs share the
vocabulary).

- `RecurrentLM`: embedding -> `num_layers` recurrent layers ('rnn' | 'lstm' | 'gru', from
  nets/layers/recurrent.py) -> Dense to the vocabulary, or the transposed embedding with
  `tie_embeddings` (Press & Wolf 2017; needs hidden_size == embed_dim). `initial_carry=` /
  `return_carry=True`
  carry the state across calls: truncated BPTT in training, one token at a time in sampling.
  The layers are `RNNLayer`s stacked here rather than a `StackedRNN`, because `StackedRNN`
  takes no initial carry; the parameter tree is the same ('layer0/cell', 'layer1/cell', ...).
- `TransformerLM`: token embedding · √d + sinusoidal or learned positions -> pre-LN causal
  `EncoderBlock`s (mask = `causal_mask(T)`) -> final LayerNorm -> logits.

`sample(model, variables, prompt, length=..., temperature=..., rng=...)` continues a prompt.
For a `RecurrentLM` it reads the prompt once and then feeds one token per step with the carry
(O(1) work per token). For a `TransformerLM` it recomputes the forward pass over the visible
context for every new token: `EncoderBlock` builds its `MultiHeadAttention` without
`decode=True`, so the KV cache cannot be reached through it. At character scale this is
affordable (seconds for a few samples from the 2-block, d = 128 model, though far slower than a
GRU carrying its state), and past `max_length` the window
simply slides, as in training, where every window starts at position 0. A `decode` field on
`EncoderBlock` passed to its attention would allow a cached sampler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks, position
from nets.layers.attention import IMPLEMENTATIONS, causal_mask
from nets.layers.encoder_block import EncoderBlock
from nets.layers.recurrent import CELLS, RNNLayer, make_cell
from nets.registry import register

Dtype = Any
Carry = Any  # tuple with one cell carry per layer

POSEMBS = ('sinusoidal', 'learned')


def _check_tokens(tokens: jax.Array, model: str) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f'{model} expects (batch, time) int token ids, got shape {tokens.shape} '
            f'and dtype {tokens.dtype}'
        )


class RecurrentLM(nn.Module):
    """embedding -> recurrent layers -> vocabulary logits; see the module docstring.

    Dropout (`dropout_rate`) is applied to the embeddings, between layers and before the
    output layer (Zaremba et al. 2014's placement: never on the recurrent connections).
    """

    num_classes: int = 128  # vocabulary size
    cell: str = 'lstm'
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout_rate: float = 0.0
    tie_embeddings: bool = False
    kernel_init: str = 'glorot_uniform'
    recurrent_kernel_init: str = 'orthogonal'
    forget_bias: float = 1.0  # LSTM only
    reset_after: bool = False  # GRU only: PyTorch's nn.GRU form (`GRUCell`)
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('cell', self.cell, CELLS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        sizes = ('num_classes', 'embed_dim', 'hidden_size', 'num_layers', 'unroll')
        if min(getattr(self, size) for size in sizes) < 1:
            raise ValueError(
                f'{", ".join(sizes)} must be positive, got '
                f'{[getattr(self, size) for size in sizes]}'
            )
        if self.tie_embeddings and self.hidden_size != self.embed_dim:
            raise ValueError(
                f'tie_embeddings needs hidden_size == embed_dim (the output layer is '
                f'the transposed embedding), got {self.hidden_size} and {self.embed_dim}'
            )
        super().__post_init__()

    def initial_carry(self, batch_size: int | Sequence[int]) -> Carry:
        """The zero state of every layer for `batch_size` sequences (callable unbound)."""
        # parent=None: a detached cell, only asked for its zero state (not a submodule).
        cell = make_cell(self.cell, self.hidden_size, parent=None)
        return tuple(cell.initial_carry(batch_size) for _ in range(self.num_layers))

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        train: bool = False,
        initial_carry: Carry | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[Carry, jax.Array]:
        _check_tokens(tokens, 'RecurrentLM')
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embedding = nn.Embed(self.num_classes, self.embed_dim, name='embedding', **dims)
        if initial_carry is None:
            initial_carry = self.initial_carry(tokens.shape[0])
        if len(initial_carry) != self.num_layers:
            raise ValueError(
                f'initial_carry has {len(initial_carry)} layer carries; the model has '
                f'{self.num_layers} layers'
            )
        x = nn.Dropout(self.dropout_rate)(embedding(tokens), deterministic=not train)
        carries = []
        for i in range(self.num_layers):
            if i > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
            layer = RNNLayer(
                self.cell,
                self.hidden_size,
                kernel_init=self.kernel_init,
                recurrent_kernel_init=self.recurrent_kernel_init,
                forget_bias=self.forget_bias,
                reset_after=self.reset_after,
                unroll=self.unroll,
                name=f'layer{i}',
                **dims,
            )
            carry, x = layer(x, initial_carry=initial_carry[i], return_carry=True)
            carries.append(carry)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        if self.tie_embeddings:
            logits = embedding.attend(x)
        else:
            logits = Dense(self.num_classes, name='head', **dims)(x)
        logits = logits.astype(jnp.float32)
        return (tuple(carries), logits) if return_carry else logits


class TransformerLM(nn.Module):
    """Decoder-only Transformer: causal pre-LN `EncoderBlock`s over token + position embeddings.

    Parameters (d = hidden_size, f = mlp_dim, V = num_classes, L = num_layers):
    L·(4d² + 2df + f + 9d) + V·d (embedding) + 2d (final norm) + d·V + V (untied head;
    none when tied) + max_length·d for learned positions.
    Embeddings start at N(0, d^-1/2) and are scaled by √d (as nets/models/transformer.py), so token
    and sinusoidal position vectors have comparable sizes.
    """

    num_classes: int = 128  # vocabulary size
    hidden_size: int = 128
    num_heads: int = 4
    mlp_dim: int = 512
    num_layers: int = 2
    max_length: int = 256  # the longest context: learned table size, and the sampler's window
    posemb: str = 'sinusoidal'
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    activation: str = 'gelu'
    tie_embeddings: bool = False
    attention_implementation: str = 'auto'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('posemb', self.posemb, POSEMBS)
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        blocks.check_choice(
            'attention_implementation', self.attention_implementation, IMPLEMENTATIONS
        )
        for rate in ('dropout_rate', 'attention_dropout_rate'):
            blocks.check_rate(rate, getattr(self, rate))
        sizes = ('num_classes', 'hidden_size', 'num_heads', 'mlp_dim', 'num_layers', 'max_length')
        if min(getattr(self, size) for size in sizes) < 1:
            raise ValueError(
                f'{", ".join(sizes)} must be positive, got '
                f'{[getattr(self, size) for size in sizes]}'
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}'
            )
        if self.posemb == 'sinusoidal' and self.hidden_size % 2:
            raise ValueError(
                f"posemb 'sinusoidal' needs an even hidden_size, got {self.hidden_size}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
        _check_tokens(tokens, 'TransformerLM')
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f'sequence length {length} exceeds max_length {self.max_length}')
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embedding = nn.Embed(
            self.num_classes,
            self.hidden_size,
            name='embedding',
            embedding_init=nn.initializers.normal(self.hidden_size**-0.5),
            **dims,
        )
        x = embedding(tokens) * jnp.asarray(math.sqrt(self.hidden_size), self.dtype)
        if self.posemb == 'sinusoidal':
            x = x + jnp.asarray(position.sinusoidal_1d(length, self.hidden_size), self.dtype)
        else:
            table = self.param(
                'position_embedding',
                nn.initializers.normal(0.02),
                (self.max_length, self.hidden_size),
                self.param_dtype,
            )
            x = x + table[:length].astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        mask = causal_mask(length)
        for i in range(self.num_layers):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                norm_position='pre',
                activation=self.activation,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                attention_implementation=self.attention_implementation,
                name=f'block{i}',
                **dims,
            )(x, mask=mask, train=train)
        # Pre-LN leaves the residual stream unnormalised: one LayerNorm before the logits.
        x = blocks.layer_norm(name='final_norm', **dims)(x)
        if self.tie_embeddings:
            logits = embedding.attend(x)
        else:
            logits = Dense(self.num_classes, name='head', **dims)(x)
        return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------- sampling


def _choose(logits: jax.Array, temperature: float, rng: jax.Array) -> jax.Array:
    """Next tokens (batch,) from logits (batch, vocab): argmax at temperature 0, else a draw
    from softmax(logits / temperature)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


def _sample_recurrent(
    model: RecurrentLM,
    variables: Any,
    prompt: jax.Array,
    length: int,
    temperature: float,
    rng: jax.Array,
) -> jax.Array:
    carry, logits = model.apply(variables, prompt, return_carry=True)

    def step(state, key):
        carry, last_logits = state
        token = _choose(last_logits, temperature, key)
        carry, logits = model.apply(
            variables, token[:, None], initial_carry=carry, return_carry=True
        )
        return (carry, logits[:, 0]), token

    _, tokens = jax.lax.scan(step, (carry, logits[:, -1]), jax.random.split(rng, length))
    return tokens.T


def _sample_transformer(
    model: TransformerLM,
    variables: Any,
    prompt: jax.Array,
    length: int,
    temperature: float,
    rng: jax.Array,
) -> jax.Array:
    batch, prompt_length = prompt.shape
    total = prompt_length + length
    window = min(model.max_length, total)
    buffer = jnp.concatenate(
        [prompt.astype(jnp.int32), jnp.zeros((batch, length), jnp.int32)], axis=1
    )

    def step(i, buffer):
        at = prompt_length + i  # the position being written
        # The newest `window` tokens (fewer at the start: the not-yet-written zeros after `at`
        # are invisible to the causal mask).
        start = jnp.clip(at - window, 0, total - window)
        context = jax.lax.dynamic_slice_in_dim(buffer, start, window, axis=1)
        logits = model.apply(variables, context)
        last = jax.lax.dynamic_index_in_dim(logits, at - 1 - start, axis=1, keepdims=False)
        token = _choose(last, temperature, jax.random.fold_in(rng, i))
        return jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], at, axis=1)

    return jax.lax.fori_loop(0, length, step, buffer)[:, prompt_length:]


def sample(
    model: RecurrentLM | TransformerLM,
    variables: Any,
    prompt: jax.Array,
    *,
    length: int,
    temperature: float = 1.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Continues each prompt row (batch, prompt_length) int ids by `length` tokens; returns
    them (batch, length) int32.

    temperature 0 is greedy (argmax); otherwise tokens are drawn from softmax(logits / T), with
    `rng` (required then). Works for both model kinds (see the module docstring). Compile it
    once with `jax.jit(functools.partial(sample, model, length=..., temperature=...))`.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(
            f'prompt must be (batch, prompt_length >= 1) token ids, got shape {prompt.shape}'
        )
    if length < 1:
        raise ValueError(f'length must be >= 1, got {length}')
    if temperature < 0:
        raise ValueError(f'temperature must be >= 0, got {temperature}')
    if temperature > 0 and rng is None:
        raise ValueError('sampling at temperature > 0 needs an rng key')
    rng = jax.random.key(0) if rng is None else rng
    variables = {'params': variables['params']}  # sampling needs no mutable state
    if isinstance(model, RecurrentLM):
        return _sample_recurrent(model, variables, prompt, length, temperature, rng)
    if isinstance(model, TransformerLM):
        if prompt.shape[1] > model.max_length:
            prompt = prompt[:, -model.max_length :]  # only the last window is ever visible
        return _sample_transformer(model, variables, prompt, length, temperature, rng)
    raise TypeError(f'sample() needs a RecurrentLM or TransformerLM, got {type(model).__name__}')


# ----------------------------------------------------------------------------- variants

# Character-level defaults; experiments/char_lm.py sizes them to similar parameter counts.
register('char_rnn', RecurrentLM, family='language_model', cell='rnn', hidden_size=448)
register('char_lstm', RecurrentLM, family='language_model', cell='lstm', hidden_size=224)
register('char_gru', RecurrentLM, family='language_model', cell='gru', hidden_size=256)
register(
    'char_transformer',
    TransformerLM,
    family='language_model',
    hidden_size=128,
    num_heads=4,
    mlp_dim=256,
    num_layers=2,
    max_length=256,
)
