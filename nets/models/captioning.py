"""Show, attend and tell (Xu et al. 2015): an image captioner that looks at a different part of
the image for every word.

A small ConvNet (VGG-style stages of `ConvNormAct`, 2x2 max pooling after every stage but the
last, as the paper takes VGG's conv5 features before their last pooling) turns a
(batch, H, W, C) image into a feature grid (batch, h, w, D), read as L = h·w annotation
vectors a_i. On the course's 28 x 112 digit strips the default stages give a 7 x 28 grid,
L = 196 as in the paper. An LSTM decoder starts from the mean annotation,
h_0 = tanh(f_init,h(ā)) and c_0 = tanh(f_init,c(ā)), and at word t

    α_t = softmax_i(vᵀ tanh(W_s h_{t-1} + W_a a_i))      (`nets.layers.attention.AdditiveAttention`)
    ẑ_t = β_t Σ_i α_ti a_i,  β_t = σ(f_β(h_{t-1}))       (the gating scalar, `gate`)
    h_t, c_t = LSTM([E y_{t-1}; ẑ_t], (h_{t-1}, c_{t-1}))
    p(y_t) = softmax(L_o(E y_{t-1} + L_h h_t + L_z ẑ_t))  (the deep output, eq. 7)

The decoder is `nets.models.seq2seq.DecoderStep` (readout 'deep'), so teacher forcing, generation
(`generate`: greedy or beam search from `nets.layers.decoding`) and the attention weights work as in
the seq2seq models. Ids: pad 0, bos 1, eos 2; `captions` are the tokens to predict (eos, then
pad) and are shifted right behind bos inside. `attention_maps` gives α as (batch, T, h, w)
pictures; `doubly_stochastic_penalty` is the paper's regulariser Σ_i (1 − Σ_t α_ti)², which
the training task weights by λ and adds to the loss.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.layers.recurrent import LSTMState
from nets.models import seq2seq
from nets.models.seq2seq import Carry, DecoderStep, Encoded, Memory
from nets.models.transformer import shift_right
from nets.registry import register

Dtype = Any


class ShowAttendTell(nn.Module):
    """Attention captioner; see the module docstring.

    `__call__(images, captions, *, train)` -> (batch, T, vocab_size) float32 logits (teacher
    forcing). `encode(images)` -> `Encoded(memory, carry)`; `decode_step(memory, carry,
    tokens)` -> (logits, carry). `channels` are the encoder's stages (`convs_per_stage`
    3x3 convs each); the annotations are channels[-1] wide. The encoder's BatchNorm keeps
    its statistics in 'batch_stats'. Dropout (`dropout_rate`) on the word embeddings and
    before the output layer (the paper used dropout; Xu et al.'s code puts it there).
    """

    vocab_size: int = 14  # digit_captions: ten digit names after the four special ids
    channels: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    embed_dim: int = 64
    hidden_size: int = 128
    attention_dim: int = 64
    gate: bool = True
    dropout_rate: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unroll: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(
                f'channels must be a non-empty tuple of positive ints, got {self.channels!r}'
            )
        sizes = (
            'vocab_size',
            'convs_per_stage',
            'embed_dim',
            'hidden_size',
            'attention_dim',
            'unroll',
        )
        if min(getattr(self, size) for size in sizes) < 1:
            raise ValueError(
                f'{", ".join(sizes)} must be positive, got '
                f'{[getattr(self, size) for size in sizes]}'
            )
        seq2seq.check_token_ids(self, self.vocab_size)
        super().__post_init__()

    def setup(self) -> None:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.convs = [
            [blocks.ConvNormAct(features, 3, **dims) for _ in range(self.convs_per_stage)]
            for features in self.channels
        ]
        self.embedding = nn.Embed(self.vocab_size, self.embed_dim, **dims)
        self.init_h = Dense(self.hidden_size, **dims)
        self.init_c = Dense(self.hidden_size, **dims)
        self.decoder = DecoderStep(
            self.vocab_size,
            self.hidden_size,
            cell='lstm',
            num_layers=1,
            attention_features=self.attention_dim,
            gate=self.gate,
            readout='deep',
            readout_size=self.embed_dim,
            dropout_rate=self.dropout_rate,
            **dims,
        )
        self.dropout = nn.Dropout(self.dropout_rate)

    def grid_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(h, w) of the feature grid for (batch, H, W, C) images: halved (floor) per pooling."""
        h, w = image_shape[1:3]
        for _ in self.channels[:-1]:
            h, w = h // 2, w // 2
        return h, w

    def features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """(batch, H, W, C) images -> (batch, h, w, channels[-1]) feature grid."""
        if images.ndim != 4:
            raise ValueError(
                f'ShowAttendTell expects (batch, H, W, C) images, got shape {images.shape}'
            )
        minimum = 2 ** (len(self.channels) - 1)
        blocks.check_input_size(f'{len(self.channels)} stages', images.shape[1:3], minimum)
        x = images.astype(self.dtype)
        for i, stage in enumerate(self.convs):
            for conv in stage:
                x = conv(x, train=train)
            if i < len(self.convs) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        return x

    def encode(self, images: jax.Array, *, train: bool = False) -> Encoded:
        """Images -> `Encoded(memory, carry)`: the L = h·w annotations (and their attention key
        projection) and the LSTM's initial state from their mean."""
        grid = self.features(images, train=train)
        annotations = grid.reshape(grid.shape[0], -1, grid.shape[-1])
        mean = jnp.mean(annotations, axis=1)
        carry = LSTMState(
            c=jnp.tanh(self.init_c(mean)).astype(jnp.float32),
            h=jnp.tanh(self.init_h(mean)).astype(jnp.float32),
        )
        memory = Memory(annotations=annotations, keys=self.decoder.project_keys(annotations))
        return Encoded(memory, (carry,))

    def decode(self, encoded: Encoded, captions: jax.Array, *, train: bool = False) -> jax.Array:
        """Teacher forcing: (batch, T) captions (eos, then pad; no bos) -> (batch, T, vocab) logits.

        With `mutable=['intermediates']` the attention weights (batch, T, L) are sown.
        """
        if not jnp.issubdtype(captions.dtype, jnp.integer) or captions.ndim != 2:
            raise ValueError(
                f'ShowAttendTell expects (batch, T) int token ids as captions, got '
                f'{captions.dtype} of shape {captions.shape}'
            )
        embedded = self.dropout(
            self.embedding(shift_right(captions, self.bos_id)), deterministic=not train
        )
        logits, _ = seq2seq.teacher_forcing(
            self.decoder, encoded.carry, embedded, encoded.memory, train=train, unroll=self.unroll
        )
        return logits

    def decode_step(
        self, memory: Memory, carry: tuple[Carry, ...], tokens: jax.Array
    ) -> tuple[jax.Array, tuple[Carry, ...]]:
        """One generation step: previous tokens (batch,) -> (next-word logits (batch, vocab),
        carry)."""
        carry, (logits, _) = self.decoder(carry, self.embedding(tokens), memory, train=False)
        return logits, carry

    def __call__(self, images: jax.Array, captions: jax.Array, *, train: bool = False) -> jax.Array:
        """(batch, H, W, C) images and (batch, T) captions -> (batch, T, vocab_size) logits."""
        return self.decode(self.encode(images, train=train), captions, train=train)


def generate(
    model: ShowAttendTell,
    variables: dict[str, Any],
    images: jax.Array,
    *,
    max_length: int,
    beam_size: int = 1,
    **options: Any,
) -> tuple[jax.Array, jax.Array]:
    """Captions for (batch, H, W, C) images by greedy (beam_size=1) or beam search:
    (sequences (batch, max_length), scores (batch,)); see `nets.models.seq2seq.generate` for
    `options` (alpha, all_beams). `variables` include 'batch_stats'."""
    return seq2seq.generate(
        model, variables, images, max_length=max_length, beam_size=beam_size, **options
    )


def attention_maps(
    model: ShowAttendTell, variables: dict[str, Any], images: jax.Array, captions: jax.Array
) -> jax.Array:
    """α of a teacher-forced pass as pictures, (batch, T, h, w): map t is where the model looked
    while predicting captions[:, t]; each sums to 1. Upsample by the image/grid ratio to overlay."""
    _, state = model.apply(variables, images, captions, train=False, mutable=['intermediates'])
    weights = seq2seq.sown_attention(state['intermediates'])
    return weights.reshape(*weights.shape[:2], *model.grid_shape(images.shape))


def doubly_stochastic_penalty(
    weights: jax.Array, valid: jax.Array | None = None, target: float = 1.0
) -> jax.Array:
    """Xu et al.'s doubly stochastic attention regulariser per example, Σ_i (target − Σ_t α_ti)².

    `weights`: (batch, T, L) or (batch, T, h, w) attention (each step sums to 1 over the
    locations); `valid`: (batch, T) bool, the caption steps that count (not the padding after
    eos). The paper's target is 1 (every location attended to once over the caption); with
    fewer words than locations that cannot be met, and the term then spreads attention over
    the image. Returns (batch,); the loss adds λ · mean of it.
    """
    weights = weights.reshape(*weights.shape[:2], -1).astype(jnp.float32)
    if valid is not None:
        weights = weights * jnp.asarray(valid, weights.dtype)[:, :, None]
    return jnp.sum((target - jnp.sum(weights, axis=1)) ** 2, axis=-1)


# ----------------------------------------------------------------------------- variants

# For the course's digit strips (28 x 112 x 1, 14-word vocabulary): a 7 x 28 grid of 128-wide
# annotations (L = 196, as the paper's 14 x 14); a CPU trains it in minutes.
register(
    'show_attend_tell',
    ShowAttendTell,
    family='captioning',
    vocab_size=14,
    channels=(32, 64, 128),
    convs_per_stage=2,
    embed_dim=64,
    hidden_size=128,
    attention_dim=64,
    gate=True,
)
