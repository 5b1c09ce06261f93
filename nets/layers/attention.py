"""Scaled dot-product attention, masks and multi-head attention.

One attention library for the Transformer, ViT, Swin, seq2seq and captioning
models. Written out explicitly, softmax(Q Kᵀ / √d + bias) V, so the code reads
like the equations. Arrays are laid out `(batch, length, heads, head_dim)`;
attention weights are `(batch, heads, q_len, k_len)`. Masks are boolean and
broadcast to the weights' shape, True meaning "may attend".

Scoring (`MultiHeadAttention.scoring`): 'dot' is the scaled dot product above;
'cosine' is Swin v2's scaled cosine attention, s_h · cos(q, k) + bias with a
learned per-head logit scale s_h = exp(min(θ_h, ln 100)), θ_h starting at ln 10:
the logits are bounded by s_h whatever the size of q and k, which keeps large
models' attention from collapsing onto a few keys. `cosine_queries_keys` turns
q and k into unit vectors (q scaled by s_h), so every implementation below
computes it as a dot product with scale 1. `AdditiveAttention` (Bahdanau's
vᵀ tanh(W q + U k)) is the recurrent models' module.

Two implementations compute the same thing (tested equal):
- 'plain': the einsum-softmax-einsum above; the only one that can apply dropout
  to the weights or hand the weights back;
- 'xla' / 'cudnn': `jax.nn.dot_product_attention` (cuDNN's fused flash
  attention on NVIDIA GPUs in half precision).
'auto' picks cuDNN where it is eligible and 'plain' elsewhere.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense, DenseGeneral
from nets.layers import blocks

Dtype = Any

IMPLEMENTATIONS = ('auto', 'plain', 'xla', 'cudnn')
SCORINGS = ('dot', 'cosine')
# Swin v2 (Liu et al. 2022): the logit scale starts at 10 and is clamped at 100 (τ >= 0.01).
COSINE_INITIAL_SCALE = 10.0
COSINE_MAX_SCALE = 100.0
# F.normalize's epsilon in Swin v2's code: a zero vector stays zero instead of becoming NaN.
_NORM_EPSILON = 1e-12


# ----------------------------------------------------------------------------- masks


def causal_mask(q_len: int, k_len: int | None = None) -> jax.Array:
    """(1, 1, q_len, k_len) mask letting query i see keys 0..i (+ k_len - q_len).

    With k_len > q_len the queries are the last q_len positions of the sequence
    (as when decoding continues a cached prefix).
    """
    k_len = q_len if k_len is None else k_len
    offset = k_len - q_len
    return (jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + offset)[None, None]


def padding_mask(q_valid: jax.Array, k_valid: jax.Array | None = None) -> jax.Array:
    """(batch, 1, q_len, k_len) mask from per-token validity (batch, len) booleans.

    A pair may attend only when both the query and the key are real tokens.
    Padded queries then have no keys; their rows come out uniform, not NaN.
    """
    k_valid = q_valid if k_valid is None else k_valid
    return (q_valid[:, None, :, None] & k_valid[:, None, None, :]).astype(bool)


def key_padding_mask(k_valid: jax.Array) -> jax.Array:
    """(batch, 1, 1, k_len) mask hiding padded keys from every query."""
    return k_valid[:, None, None, :].astype(bool)


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the masks that are not None (None if all are)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0]
    for m in present[1:]:
        combined = jnp.logical_and(combined, m)
    return combined


# ----------------------------------------------------------------------------- functions


def cosine_logit_scale(logit_scale: jax.Array, max_scale: float = COSINE_MAX_SCALE) -> jax.Array:
    """s = exp(min(θ, ln max_scale)): the per-head scale of cosine attention from its learned
    logarithm θ, clamped as in Swin v2."""
    return jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), math.log(max_scale)))


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    squared = jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _NORM_EPSILON**2)
    return x * jax.lax.rsqrt(squared)


def cosine_queries_keys(
    q: jax.Array, k: jax.Array, logit_scale: jax.Array, max_scale: float = COSINE_MAX_SCALE
) -> tuple[jax.Array, jax.Array]:
    """(s_h · q / ‖q‖, k / ‖k‖) for (batch, length, heads, head_dim) q and k and per-head
    `logit_scale` θ (heads,): their dot products are the cosine-attention logits
    s_h · cos(q, k), |logit| <= s_h, so attend with scale 1. Normalised in float32, returned
    in q's and k's dtypes."""
    scale = cosine_logit_scale(logit_scale, max_scale)[:, None]  # (heads, 1) over head_dim
    return (_unit(q) * scale).astype(q.dtype), _unit(k).astype(k.dtype)


def attention_weights(
    q: jax.Array,
    k: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    dtype: Dtype | None = None,
    scale: float | None = None,
) -> jax.Array:
    """softmax(Q Kᵀ · scale + bias) over keys, masked positions excluded; `scale` defaults
    to 1/√d.

    Returns `(batch, heads, q_len, k_len)`. The softmax runs in float32 (for
    bfloat16 stability) and the result is cast to `dtype`. A query whose keys
    are all masked gets uniform weights rather than NaNs.
    """
    dtype = jnp.result_type(q, k) if dtype is None else dtype
    q, k = q.astype(dtype), k.astype(dtype)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k)
    if scale is None:
        logits = logits / jnp.asarray(math.sqrt(q.shape[-1]), dtype)
    else:
        logits = logits * jnp.asarray(scale, dtype)
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def cudnn_eligible(q: jax.Array, k: jax.Array, bias: jax.Array | None) -> bool:
    """Whether cuDNN's fused attention can run this call, forward and backward (NVIDIA GPU,
    half precision, head dim a multiple of 8 up to 128, even sequence lengths: JAX's
    training check rejects odd ones, ViTs' 197 or 65 tokens with the class token among them:
    'Unsupported sequence length Q 197, KV 197', seen with jax 0.11.2 on an H100)."""
    return (
        jax.default_backend() == 'gpu'
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and k.dtype == q.dtype
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 128
        and q.shape[1] % 2 == 0
        and k.shape[1] % 2 == 0
        and bias is None
    )


def resolve_implementation(
    implementation: str, q: jax.Array, k: jax.Array, bias: jax.Array | None = None
) -> str:
    """Maps 'auto' to the implementation used for these arrays on this backend."""
    blocks.check_choice('attention implementation', implementation, IMPLEMENTATIONS)
    if implementation == 'auto':
        return 'cudnn' if cudnn_eligible(q, k, bias) else 'plain'
    return implementation


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    dtype: Dtype | None = None,
    implementation: str = 'plain',
    return_weights: bool = False,
    scale: float | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention, softmax(Q Kᵀ · scale + bias) V (scale 1/√d by default).

    q: (batch, q_len, heads, head_dim); k, v: (batch, k_len, heads, head_dim).
    Returns the output (batch, q_len, heads, head_dim), and also the
    (pre-dropout) weights (batch, heads, q_len, k_len) if `return_weights`.
    Dropout on the weights needs `dropout_rng` and `deterministic=False`; it and
    `return_weights` always use the plain implementation.
    """
    dropout_active = not deterministic and dropout_rate > 0.0
    implementation = resolve_implementation(implementation, q, k, bias)
    if implementation != 'plain' and not (dropout_active or return_weights):
        dtype = jnp.result_type(q, k) if dtype is None else dtype
        if mask is not None:
            mask = jnp.broadcast_to(mask, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
        return jax.nn.dot_product_attention(
            q.astype(dtype),
            k.astype(dtype),
            v.astype(dtype),
            bias=bias,
            mask=mask,
            scale=scale,
            implementation=implementation,
        )
    weights = attention_weights(q, k, mask=mask, bias=bias, dtype=dtype, scale=scale)
    attended = weights
    if dropout_active:
        if dropout_rng is None:
            raise ValueError(
                'dropout_rng is required when deterministic=False and dropout_rate > 0'
            )
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        attended = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(weights.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', attended, v.astype(weights.dtype))
    return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------- module


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q, K, V projections and an output projection.

    Parameters: 4·D² + 4·D for model width D (same as PyTorch's
    nn.MultiheadAttention). Self-attention when `inputs_kv` is None,
    cross-attention otherwise. `mask` (True = may attend) and an additive
    `bias` (e.g. Swin's relative position bias) broadcast to
    (batch, heads, q_len, k_len).

    `scoring`: 'dot' (scaled dot product) or 'cosine' (Swin v2's scaled cosine
    attention, see the module docstring), whose learned per-head log-scale is the
    parameter 'logit_scale' (heads,).

    Attention weights: when applied with `mutable=['intermediates']` the
    weights (batch, heads, q_len, k_len) are sown into
    'intermediates'/'attention_weights'. They are computed only then, so the
    default call keeps its outputs and its speed; nothing is sown at `init`.

    Decoding (`decode=True`, self-attention only): keys and values of earlier
    steps are kept in the 'cache' collection. Initialise the cache by calling
    `init` with decode=True on a (batch, max_length, D) input; then each apply
    with `mutable=['cache']` takes the next token(s) (batch, n, D), appends
    their keys/values, and attends causally over everything cached so far.
    """

    num_heads: int
    qkv_features: int | None = None  # default: input width
    out_features: int | None = None  # default: input width
    dropout_rate: float = 0.0
    use_bias: bool = True
    qkv_bias: bool | None = None  # default: use_bias
    kernel_init: str = 'glorot_uniform'
    implementation: str = 'auto'
    scoring: str = 'dot'
    decode: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('implementation', self.implementation, IMPLEMENTATIONS)
        blocks.check_choice('scoring', self.scoring, SCORINGS)
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if self.num_heads < 1:
            raise ValueError(f'num_heads must be positive, got {self.num_heads}')
        super().__post_init__()

    def _cached_keys_values(
        self, k: jax.Array, v: jax.Array, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Appends this step's keys/values to the cache; returns all of them and the causal mask."""
        initialised = self.has_variable('cache', 'cached_key')
        cached_key = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
        cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
        if not initialised:  # `init` sizes the cache from a max-length input
            return k, v, mask
        max_length = cached_key.value.shape[1]
        steps = k.shape[1]
        index = cache_index.value
        k = jax.lax.dynamic_update_slice(cached_key.value, k, (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cached_value.value, v, (0, index, 0, 0))
        cached_key.value, cached_value.value = k, v
        cache_index.value = index + steps
        # Query j of this call sits at position index + j and sees keys up to there.
        positions = index + jnp.arange(steps)
        visible = (jnp.arange(max_length)[None, :] <= positions[:, None])[None, None]
        return k, v, combine_masks(visible, mask)

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        bias: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        if self.decode and inputs_kv is not None:
            raise ValueError(
                'decode=True caches self-attention only; call cross-attention with decode=False'
            )
        if inputs_kv is None:
            inputs_kv = inputs_q
        features = inputs_q.shape[-1] if self.qkv_features is None else self.qkv_features
        out_features = inputs_q.shape[-1] if self.out_features is None else self.out_features
        if features % self.num_heads != 0:
            raise ValueError(
                f'qkv_features {features} is not divisible by num_heads {self.num_heads}'
            )
        head_dim = features // self.num_heads
        qkv_bias = self.use_bias if self.qkv_bias is None else self.qkv_bias

        def projection(name: str) -> DenseGeneral:
            return DenseGeneral(
                (self.num_heads, head_dim),
                use_bias=qkv_bias,
                kernel_init=blocks.initializer(self.kernel_init),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        q = projection('query')(inputs_q)
        k = projection('key')(inputs_kv)
        v = projection('value')(inputs_kv)
        if self.decode:
            k, v, mask = self._cached_keys_values(k, v, mask)
        scale = None  # 1/√d
        if self.scoring == 'cosine':
            logit_scale = self.param(
                'logit_scale',
                nn.initializers.constant(math.log(COSINE_INITIAL_SCALE)),
                (self.num_heads,),
                self.param_dtype,
            )
            q, k = cosine_queries_keys(q, k, logit_scale)
            scale = 1.0

        dropout_active = train and self.dropout_rate > 0.0
        implementation = resolve_implementation(self.implementation, q, k, bias)
        want_weights = self.is_mutable_collection('intermediates') and not self.is_initializing()
        weigh = dict(mask=mask, bias=bias, dtype=self.dtype, scale=scale)
        if implementation == 'plain' or dropout_active:
            weights = attention_weights(q, k, **weigh)
            attended = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
            out = jnp.einsum('bhqk,bkhd->bqhd', attended, v)
        else:
            out = dot_product_attention(q, k, v, implementation=implementation, **weigh)
            # Weights only on request, so the default call stays on the fused path.
            weights = attention_weights(q, k, **weigh) if want_weights else None
        if want_weights:
            self.sow('intermediates', 'attention_weights', weights)
        return DenseGeneral(
            out_features,
            axis=(-2, -1),
            use_bias=self.use_bias,
            kernel_init=blocks.initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='out',
        )(out)


# ----------------------------------------------------------------------------- reading the weights


def attention_rollout(
    layer_weights: list[jax.Array] | tuple[jax.Array, ...], *, residual: bool = True
) -> jax.Array:
    """Attention rollout (Abnar & Zuidema 2020): how much each output token draws on each input
    token.

    `layer_weights`: per layer, (batch, heads, tokens, tokens), first layer first.
    Heads are averaged; with `residual` the identity is mixed in (0.5·A + 0.5·I) for
    the skip connection, rows renormalised, and the layers multiplied in order.
    Returns (batch, tokens, tokens) whose rows sum to 1.
    """
    if not layer_weights:
        raise ValueError('attention_rollout needs the weights of at least one layer')
    rollout = None
    for weights in layer_weights:
        mixed = jnp.mean(jnp.asarray(weights, jnp.float32), axis=1)
        if residual:
            mixed = 0.5 * mixed + 0.5 * jnp.eye(mixed.shape[-1], dtype=mixed.dtype)
        mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)
        rollout = mixed if rollout is None else jnp.einsum('bij,bjk->bik', mixed, rollout)
    return rollout


# ----------------------------------------------------------------------------- additive attention


class AdditiveAttention(nn.Module):
    """Additive attention (Bahdanau et al. 2015), the recurrent models' attention.

    For a query s (a decoder state) and keys h_j (the annotations, also the values):

        e_j = vᵀ tanh(W_s s + W_h h_j + b)      α = softmax_j(e)      context = Σ_j α_j h_j

    `features` is the width of the tanh layer (the paper's n'). The paper has no bias; one
    bias `b` (on W_h, `use_bias`) is what Xu et al.'s code adds, and a second one on W_s
    would be redundant. Weights are computed in float32.

    query: (batch, query_features) or (batch, q_len, query_features); keys: (batch, k_len,
    key_features). Returns `(context, weights)`: (batch, [q_len,] key_features) and
    (batch, [q_len,] k_len). `mask` (True = may attend) is (batch, k_len), or anything that
    broadcasts to the weights; masked keys get weight 0, and a query with no key at all
    gets uniform weights rather than NaNs (as `attention_weights`).

    W_h h_j does not depend on the query, so a recurrent decoder computes it once per
    sequence with `project_keys` and passes it to every step as `projected_keys`.
    Applied with `mutable=['intermediates']` (and not at init) the weights are sown into
    'intermediates'/'attention_weights'.
    """

    features: int
    use_bias: bool = True
    kernel_init: str = 'glorot_uniform'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f'features must be positive, got {self.features}')
        blocks.check_choice('kernel_init', self.kernel_init, blocks.INITIALIZERS)
        super().__post_init__()

    def setup(self) -> None:
        dense = dict(
            kernel_init=blocks.initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.query_projection = Dense(self.features, use_bias=False, **dense)  # W_s
        self.key_projection = Dense(self.features, use_bias=self.use_bias, **dense)  # W_h, b
        self.score = Dense(1, use_bias=False, **dense)  # v

    def project_keys(self, keys: jax.Array) -> jax.Array:
        """W_h h_j + b: (batch, k_len, key_features) -> (batch, k_len, features)."""
        return self.key_projection(keys)

    def __call__(
        self,
        query: jax.Array,
        keys: jax.Array,
        *,
        mask: jax.Array | None = None,
        projected_keys: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        if query.ndim not in (2, 3) or keys.ndim != 3:
            raise ValueError(
                f'AdditiveAttention expects a (batch, [q_len,] features) query and '
                f'(batch, k_len, features) keys, got {query.shape} and {keys.shape}'
            )
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        projected_query = self.query_projection(query)
        if query.ndim == 3:  # every query against every key: (batch, q_len, k_len, features)
            projected_query, projected_keys = projected_query[:, :, None], projected_keys[:, None]
        else:
            projected_query = projected_query[:, None]
        logits = self.score(jnp.tanh(projected_query + projected_keys))[..., 0].astype(jnp.float32)
        if mask is not None:
            mask = jnp.asarray(mask, bool)
            if query.ndim == 3 and mask.ndim == 2:
                mask = mask[:, None, :]
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        if self.is_mutable_collection('intermediates') and not self.is_initializing():
            self.sow('intermediates', 'attention_weights', weights)
        spec = 'bqk,bkd->bqd' if query.ndim == 3 else 'bk,bkd->bd'
        context = jnp.einsum(spec, weights.astype(self.dtype), keys.astype(self.dtype))
        return context, weights
