"""The Transformer encoder-decoder of Vaswani et al. 2017, "Attention Is All You Need".

Source tokens -> embedding · √d_model + position encoding -> N encoder blocks
(`nets.layers.encoder_block.EncoderBlock`, ReLU MLP); target tokens shifted right ->
embedding · √d_model + position encoding -> N decoder blocks (causal
self-attention, cross-attention over the encoder output, MLP) -> a linear map to
vocabulary logits. LayerNorm after each residual sum ('post', the paper) or
before each branch ('pre', with final LayerNorms on both stacks).

With `share_embeddings` (the paper, §3.4) one (vocab, d_model) matrix embeds the
source, embeds the target and, transposed, is the pre-softmax projection (no
bias); otherwise there are source and target embeddings and an untied output
Dense (no bias). Embeddings start at N(0, d_model^-1/2), so after the √d_model
scale the inputs have unit variance, as in tensor2tensor.

Parameters (d = d_model, f = d_ff, V = vocab), counted exactly by the tests:
encoder block 4d² + 2df + f + 9d, decoder block 8d² + 2df + f + 15d, embedding
V·d (3V·d untied), + 4d for pre-LN's final norms. At V = 37,000:
- transformer_big: 214,245,376, +0.6% from the paper's 213M;
- transformer_base: 63,082,496, -2.9% from the paper's 65M. The gap is the
  paper's, not the architecture's: its two totals imply different vocabularies
  (65M -> V ≈ 40,745; 213M -> V ≈ 35,784), so no one vocabulary gives both.

Dropout (`dropout_rate`) is applied to the embedding sums and to every
sub-layer's output before its residual sum, as in the paper; the shared
`MlpBlock` also drops its hidden ReLU activations (tensor2tensor's relu_dropout).
`attention_dropout_rate` drops attention weights (0 in the paper).

Decoding: `translate` runs `nets.layers.decoding.beam_search` over `decode_step`, which
feeds one token per call to a copy of the model with `decoding=True`; each
decoder self-attention keeps its keys/values in the 'cache' collection and the
model keeps the position of the next token there ('decode_position').
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks, decoding, position
from nets.layers.attention import IMPLEMENTATIONS, MultiHeadAttention, causal_mask, key_padding_mask
from nets.layers.encoder_block import NORM_POSITIONS, EncoderBlock, residual_sublayer
from nets.registry import register

Dtype = Any

# 'none': no position information at all; self-attention is then order-blind (permuting the
# source tokens permutes the encoder's outputs the same way).
POSEMBS = ('sinusoidal', 'learned', 'none')


def shift_right(targets: jax.Array, bos_id: int) -> jax.Array:
    """Decoder inputs for teacher forcing: (batch, length) targets with bos in front, last token
    dropped."""
    bos = jnp.full((targets.shape[0], 1), bos_id, targets.dtype)
    return jnp.concatenate([bos, targets[:, :-1]], axis=1)


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, and an MLP.

    Each sub-layer has a residual connection and dropout; LayerNorm before the
    branch ('pre') or after the residual sum ('post'), as in `EncoderBlock`.
    Names: 'norm1'/'attention' (self), 'norm2'/'cross_attention', 'norm3'/'mlp'.
    With `decode=True` the self-attention keeps a KV cache (see
    `MultiHeadAttention`); cross-attention recomputes the encoder keys each call.
    """

    num_heads: int
    mlp_dim: int
    norm_position: str = 'post'
    activation: str = 'relu'
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    attention_implementation: str = 'auto'
    decode: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('norm_position', self.norm_position, NORM_POSITIONS)
        blocks.check_choice(
            'attention_implementation', self.attention_implementation, IMPLEMENTATIONS
        )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array,
        *,
        self_mask: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pre = self.norm_position == 'pre'

        def residual(x: jax.Array, branch, norm_name: str, dropout: bool) -> jax.Array:
            return residual_sublayer(
                x,
                branch,
                blocks.layer_norm(name=norm_name, **dims),
                pre=pre,
                train=train,
                dropout_rate=self.dropout_rate if dropout else 0.0,
            )

        def attention(name: str, decode: bool) -> MultiHeadAttention:
            return MultiHeadAttention(
                self.num_heads,
                dropout_rate=self.attention_dropout_rate,
                implementation=self.attention_implementation,
                decode=decode,
                name=name,
                **dims,
            )

        self_attention = attention('attention', self.decode)
        x = residual(
            x, lambda y: self_attention(y, mask=self_mask, train=train), 'norm1', dropout=True
        )
        cross_attention = attention('cross_attention', False)
        x = residual(
            x,
            lambda y: cross_attention(y, encoded, mask=cross_mask, train=train),
            'norm2',
            dropout=True,
        )
        mlp = blocks.MlpBlock(
            self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            name='mlp',
            **dims,
        )
        # MlpBlock ends in its own dropout, which serves as this sub-layer's.
        return residual(x, lambda y: mlp(y, train=train), 'norm3', dropout=False)


class Transformer(nn.Module):
    """Encoder-decoder Transformer over int token ids padded with `pad_id`.

    `__call__(inputs, targets)` -> (batch, target_len, vocab) float32 logits;
    logits[:, t] predicts targets[:, t] from targets[:, :t] (the decoder reads the
    targets shifted right behind `bos_id`, done inside `decode`). The source
    padding mask is `inputs != pad_id`. `posemb`: 'sinusoidal' (the paper),
    'learned' or 'none' (no position information: the encoder is then
    permutation-equivariant over the source tokens). `max_length` bounds learned
    position tables and sizes nothing else; the decoding cache is sized by
    `init_cache`.
    `decoding=True` turns on the decoder's KV cache (use `decode_step`).
    """

    vocab_size: int = 37_000
    hidden_size: int = 512
    num_heads: int = 8
    mlp_dim: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    norm_position: str = 'post'
    activation: str = 'relu'
    share_embeddings: bool = True
    max_length: int = 256
    posemb: str = 'sinusoidal'
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    attention_implementation: str = 'auto'
    decoding: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('norm_position', self.norm_position, NORM_POSITIONS)
        blocks.check_choice('posemb', self.posemb, POSEMBS)
        blocks.check_choice('activation', self.activation, blocks.ACTIVATIONS)
        blocks.check_choice(
            'attention_implementation', self.attention_implementation, IMPLEMENTATIONS
        )
        for rate in ('dropout_rate', 'attention_dropout_rate'):
            blocks.check_rate(rate, getattr(self, rate))
        sizes = ('vocab_size', 'hidden_size', 'num_heads', 'mlp_dim', 'max_length')
        if min(getattr(self, size) for size in sizes) < 1:
            raise ValueError(
                f'{", ".join(sizes)} must be positive, got '
                f'{[getattr(self, size) for size in sizes]}'
            )
        if min(self.num_encoder_layers, self.num_decoder_layers) < 0:
            raise ValueError('num_encoder_layers and num_decoder_layers must be >= 0')
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}'
            )
        if self.posemb == 'sinusoidal' and self.hidden_size % 2:
            raise ValueError(
                f"posemb 'sinusoidal' needs an even hidden_size, got {self.hidden_size}"
            )
        for token in ('pad_id', 'bos_id', 'eos_id'):
            if not 0 <= getattr(self, token) < self.vocab_size:
                raise ValueError(
                    f'{token} {getattr(self, token)} is outside the vocabulary '
                    f'[0, {self.vocab_size})'
                )
        if self.eos_id == self.pad_id:
            # Padding is masked out of inputs and losses; eos must stay visible.
            raise ValueError(f'eos_id and pad_id must differ, both are {self.eos_id}')
        super().__post_init__()

    def setup(self) -> None:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = functools.partial(
            nn.Embed,
            self.vocab_size,
            self.hidden_size,
            embedding_init=nn.initializers.normal(self.hidden_size**-0.5),
            **dims,
        )
        if self.share_embeddings:
            self.embedding = embed()
        else:
            self.source_embedding = embed()
            self.target_embedding = embed()
            self.output_projection = Dense(
                self.vocab_size,
                use_bias=False,
                kernel_init=blocks.initializer('glorot_uniform'),
                **dims,
            )
        if self.posemb == 'learned':
            shape = (self.max_length, self.hidden_size)
            self.encoder_position_embedding = self.param(
                'encoder_position_embedding', nn.initializers.normal(0.02), shape, self.param_dtype
            )
            self.decoder_position_embedding = self.param(
                'decoder_position_embedding', nn.initializers.normal(0.02), shape, self.param_dtype
            )
        block = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            norm_position=self.norm_position,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            attention_implementation=self.attention_implementation,
            **dims,
        )
        self.encoder_blocks = [EncoderBlock(**block) for _ in range(self.num_encoder_layers)]
        self.decoder_blocks = [
            DecoderBlock(decode=self.decoding, **block) for _ in range(self.num_decoder_layers)
        ]
        if self.norm_position == 'pre':
            # Pre-LN leaves the residual stream unnormalised; post-LN's last block already ends
            # in a norm.
            self.encoder_norm = blocks.layer_norm(**dims)
            self.decoder_norm = blocks.layer_norm(**dims)
        self.dropout = nn.Dropout(self.dropout_rate)
        # Made at init and read from a cache later; a call without a cache fails in decode_step.
        if self.decoding and (
            self.is_initializing() or self.has_variable('cache', 'decode_position')
        ):
            self.decode_position = self.variable(
                'cache', 'decode_position', lambda: jnp.array(0, jnp.int32)
            )

    # ------------------------------------------------------------------ pieces

    def _embed(self, embedding: nn.Embed, tokens: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f'Transformer expects int token ids, got dtype {tokens.dtype}')
        return embedding(tokens) * jnp.asarray(math.sqrt(self.hidden_size), self.dtype)

    def _positions(self, length: int, which: str) -> jax.Array:
        """(length, hidden) encodings of positions 0..length-1 for the 'encoder' or 'decoder'
        (zeros for posemb='none')."""
        if self.posemb == 'none':
            return jnp.zeros((length, self.hidden_size), self.dtype)
        if self.posemb == 'sinusoidal':
            return jnp.asarray(position.sinusoidal_1d(length, self.hidden_size), self.dtype)
        if length > self.max_length:
            raise ValueError(
                f'{which} sequence length {length} exceeds max_length {self.max_length} '
                f'of the learned position table'
            )
        return getattr(self, f'{which}_position_embedding')[:length].astype(self.dtype)

    def _target_embedding(self) -> nn.Embed:
        return self.embedding if self.share_embeddings else self.target_embedding

    def _decoder_stack(
        self,
        x: jax.Array,
        encoded: jax.Array,
        inputs_valid: jax.Array,
        *,
        self_mask: jax.Array | None,
        train: bool,
    ) -> jax.Array:
        """Embedded decoder inputs (batch, length, hidden) -> (batch, length, vocab) float32
        logits."""
        x = self.dropout(x, deterministic=not train)
        cross_mask = key_padding_mask(inputs_valid)
        for block in self.decoder_blocks:
            x = block(
                x,
                encoded.astype(self.dtype),
                self_mask=self_mask,
                cross_mask=cross_mask,
                train=train,
            )
        if self.norm_position == 'pre':
            x = self.decoder_norm(x)
        logits = self.embedding.attend(x) if self.share_embeddings else self.output_projection(x)
        return logits.astype(jnp.float32)

    # ------------------------------------------------------------------ public methods

    def encode(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """(batch, source_len) token ids -> (batch, source_len, hidden) encoder output.

        Padded positions (`inputs == pad_id`) are hidden from every query; their own
        outputs are meaningless and the decoder never attends to them.
        """
        embedding = self.embedding if self.share_embeddings else self.source_embedding
        x = self._embed(embedding, inputs) + self._positions(inputs.shape[1], 'encoder')
        x = self.dropout(x, deterministic=not train)
        mask = key_padding_mask(inputs != self.pad_id)
        for block in self.encoder_blocks:
            x = block(x, mask=mask, train=train)
        if self.norm_position == 'pre':
            x = self.encoder_norm(x)
        return x

    def decode(
        self,
        encoded: jax.Array,
        inputs_valid: jax.Array,
        targets: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Teacher forcing: (batch, target_len) targets -> (batch, target_len, vocab) float32
        logits.

        `targets` are the tokens to predict (eos at the end, pad after; no bos):
        they are shifted right behind `bos_id` here, so logits[:, t] sees
        targets[:, :t] only. `inputs_valid` is the (batch, source_len) mask
        `inputs != pad_id`. With `decoding=True` this only sizes the cache at
        `init` (see `init_cache`); decode one token at a time with `decode_step`.
        """
        if self.decoding and not self.is_initializing():
            raise ValueError(
                'with decoding=True call decode_step one token at a time; decode() '
                'with decoding=True only sizes the cache at init'
            )
        length = targets.shape[1]
        x = self._embed(self._target_embedding(), shift_right(targets, self.bos_id))
        x = x + self._positions(length, 'decoder')
        return self._decoder_stack(
            x, encoded, inputs_valid, self_mask=causal_mask(length), train=train
        )

    def decode_step(
        self, encoded: jax.Array, inputs_valid: jax.Array, tokens: jax.Array
    ) -> jax.Array:
        """One decoding step: the previous tokens (batch,) -> next-token logits (batch, vocab)
        float32.

        Needs `decoding=True` and the 'cache' collection from `init_cache`, applied
        with mutable=['cache']: the decoder's keys/values and 'decode_position'
        advance by one. Feed `bos_id` first, then each chosen token.
        """
        if not self.decoding:
            raise ValueError(
                'decode_step needs a model with decoding=True (model.clone(decoding=True))'
            )
        if not self.has_variable('cache', 'decode_position'):
            raise ValueError(
                "decode_step needs the 'cache' collection from init_cache, "
                "applied with mutable=['cache']"
            )
        step = self.decode_position.value
        x = self._embed(self._target_embedding(), tokens[:, None])
        if self.posemb == 'sinusoidal':
            x = x + position.sinusoidal_at(step[None], self.hidden_size).astype(self.dtype)
        elif self.posemb == 'learned':
            table = self.decoder_position_embedding
            x = x + jax.lax.dynamic_slice_in_dim(table, step, 1).astype(self.dtype)
        logits = self._decoder_stack(x, encoded, inputs_valid, self_mask=None, train=False)
        self.decode_position.value = step + 1
        return logits[:, 0]

    def __call__(self, inputs: jax.Array, targets: jax.Array, *, train: bool = False) -> jax.Array:
        """(batch, source_len) and (batch, target_len) token ids -> (batch, target_len, vocab)
        logits."""
        encoded = self.encode(inputs, train=train)
        return self.decode(encoded, inputs != self.pad_id, targets, train=train)


# ----------------------------------------------------------------------------- decoding


def init_cache(model: Transformer, batch_size: int, max_length: int) -> dict[str, Any]:
    """Zero 'cache' collection for decoding up to `max_length` tokens per example.

    Shapes come from `jax.eval_shape` of `init` with decoding=True on a
    (batch, max_length) target, so nothing but the cache is allocated.
    """
    if model.posemb == 'learned' and max_length > model.max_length:
        raise ValueError(
            f"max_length {max_length} exceeds the model's learned position table "
            f'({model.max_length})'
        )
    decoder = model.clone(decoding=True)

    def init() -> Any:
        encoded = jnp.zeros((batch_size, 1, model.hidden_size), model.dtype)
        targets = jnp.zeros((batch_size, max_length), jnp.int32)
        return decoder.init(
            jax.random.key(0),
            encoded,
            jnp.ones((batch_size, 1), bool),
            targets,
            method=Transformer.decode,
        )

    shapes = jax.eval_shape(init)['cache']
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def make_step_fn(
    model: Transformer,
    variables: dict[str, Any],
    inputs: jax.Array,
    *,
    beam_size: int = 1,
    max_length: int | None = None,
) -> tuple[decoding.StepFn, dict[str, Any]]:
    """Encodes `inputs` once and returns (step_fn, initial cache) for `nets.layers.decoding`.

    The step function holds the encoder output repeated for `beam_size` beams per
    example (use beam_size=1 for greedy search); the cache is for the batch, as
    the searches expect. `max_length` (default `model.max_length`) sizes the cache.
    """
    max_length = model.max_length if max_length is None else max_length
    encoded = model.apply(variables, inputs, train=False, method=Transformer.encode)
    encoded = decoding.expand_to_beams(encoded, beam_size)
    inputs_valid = decoding.expand_to_beams(inputs != model.pad_id, beam_size)
    decoder = model.clone(decoding=True)
    params = {'params': variables['params']}

    def step_fn(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        logits, updates = decoder.apply(
            {**params, 'cache': cache},
            encoded,
            inputs_valid,
            tokens,
            method=Transformer.decode_step,
            mutable=['cache'],
        )
        return logits, updates['cache']

    return step_fn, init_cache(model, inputs.shape[0], max_length)


def translate(
    model: Transformer,
    variables: dict[str, Any],
    inputs: jax.Array,
    *,
    beam_size: int = 4,
    max_length: int | None = None,
    alpha: float = decoding.GNMT_ALPHA,
) -> tuple[jax.Array, jax.Array]:
    """Beam-search translation of (batch, source_len) token ids (the paper: beam 4, α = 0.6).

    Returns `nets.layers.decoding.beam_search`'s (sequences (batch, beam_size, max_length),
    length-normalised scores (batch, beam_size)), best first; sequences end with
    eos then pad. `max_length` defaults to `model.max_length` (the paper used
    source length + 50). Jit it with `model`, `beam_size`, `max_length` static.
    """
    max_length = model.max_length if max_length is None else max_length
    step_fn, cache = make_step_fn(
        model, variables, inputs, beam_size=beam_size, max_length=max_length
    )
    return decoding.beam_search(
        step_fn,
        cache,
        batch_size=inputs.shape[0],
        beam_size=beam_size,
        max_length=max_length,
        bos_id=model.bos_id,
        eos_id=model.eos_id,
        pad_id=model.pad_id,
        alpha=alpha,
    )


# ----------------------------------------------------------------------------- variants

# The paper's Table 3: base and big, 6 + 6 layers, one ~37k BPE vocabulary (EN-DE).
register(
    'transformer_base',
    Transformer,
    family='transformer',
    vocab_size=37_000,
    hidden_size=512,
    num_heads=8,
    mlp_dim=2048,
    num_encoder_layers=6,
    num_decoder_layers=6,
    dropout_rate=0.1,
    norm_position='post',
    share_embeddings=True,
)
register(
    'transformer_big',
    Transformer,
    family='transformer',
    vocab_size=37_000,
    hidden_size=1024,
    num_heads=16,
    mlp_dim=4096,
    num_encoder_layers=6,
    num_decoder_layers=6,
    dropout_rate=0.3,
    norm_position='post',
    share_embeddings=True,
)
# Word-level translation on a CPU: twice tiny's width, 3 + 3 layers, and LayerNorm before each
# sub-layer (pre-LN trains from a short warmup without stalling on the unigram plateau).
register(
    'transformer_small',
    Transformer,
    family='transformer',
    vocab_size=256,
    hidden_size=128,
    num_heads=4,
    mlp_dim=512,
    num_encoder_layers=3,
    num_decoder_layers=3,
    dropout_rate=0.1,
    max_length=128,
    norm_position='pre',
    share_embeddings=True,
)
# Small enough to train on a laptop CPU (toy copy/reverse tasks, byte-level vocabularies).
register(
    'transformer_tiny',
    Transformer,
    family='transformer',
    vocab_size=256,
    hidden_size=64,
    num_heads=4,
    mlp_dim=128,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.1,
    max_length=128,
    norm_position='post',
    share_embeddings=True,
)
