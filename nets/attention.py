"""Scaled dot-product attention and multi-head attention.

Written out explicitly, softmax(Q Kᵀ / √d) V, so the code reads like the
equations. Arrays are laid out `(batch, length, heads, head_dim)`; attention
weights are `(batch, heads, q_len, k_len)`. Masks are boolean and broadcast to
the weights' shape, True meaning "may attend".
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from nets import layers

Dtype = Any


def attention_weights(q: jax.Array, k: jax.Array, *, mask: jax.Array | None = None,
                      bias: jax.Array | None = None, dtype: Dtype | None = None) -> jax.Array:
    """softmax(Q Kᵀ / √d + bias) over keys, masked positions excluded.

    Returns `(batch, heads, q_len, k_len)`. The softmax runs in float32 (for
    bfloat16 stability) and the result is cast to `dtype`. A query whose keys
    are all masked gets uniform weights rather than NaNs.
    """
    dtype = jnp.result_type(q, k) if dtype is None else dtype
    q, k = q.astype(dtype), k.astype(dtype)
    head_dim = q.shape[-1]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.asarray(math.sqrt(head_dim), dtype)
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: jax.Array | None = None, bias: jax.Array | None = None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                          deterministic: bool = True, dtype: Dtype | None = None,
                          return_weights: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention, softmax(Q Kᵀ / √d) V.

    q: (batch, q_len, heads, head_dim); k, v: (batch, k_len, heads, head_dim).
    Returns the output (batch, q_len, heads, head_dim), and also the
    (pre-dropout) weights (batch, heads, q_len, k_len) if `return_weights`.
    Dropout on the weights needs `dropout_rng` and `deterministic=False`.
    """
    weights = attention_weights(q, k, mask=mask, bias=bias, dtype=dtype)
    attended = weights
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("dropout_rng is required when deterministic=False and dropout_rate > 0")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        attended = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(weights.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', attended, v.astype(weights.dtype))
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q, K, V projections and an output projection.

    Parameters: 4·D² + 4·D for model width D (same as PyTorch's
    nn.MultiheadAttention). Self-attention when `inputs_kv` is None. The
    attention weights (batch, heads, q_len, k_len) are sown into
    'intermediates'/'attention_weights' (apply with `mutable=['intermediates']`
    to read them); nothing is sown during `init`, so `init` returns only params.
    """

    num_heads: int
    qkv_features: int | None = None  # default: input width
    out_features: int | None = None  # default: input width
    dropout_rate: float = 0.0
    use_bias: bool = True
    kernel_init: str = 'glorot_uniform'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
                 mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        if inputs_kv is None:
            inputs_kv = inputs_q
        features = inputs_q.shape[-1] if self.qkv_features is None else self.qkv_features
        out_features = inputs_q.shape[-1] if self.out_features is None else self.out_features
        if features % self.num_heads != 0:
            raise ValueError(f"qkv_features {features} is not divisible by num_heads {self.num_heads}")
        head_dim = features // self.num_heads

        def projection(name: str) -> nn.DenseGeneral:
            return nn.DenseGeneral((self.num_heads, head_dim), use_bias=self.use_bias,
                                   kernel_init=layers.initializer(self.kernel_init),
                                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        q = projection('query')(inputs_q)
        k = projection('key')(inputs_kv)
        v = projection('value')(inputs_kv)
        weights = attention_weights(q, k, mask=mask, dtype=self.dtype)
        if not self.is_initializing():
            self.sow('intermediates', 'attention_weights', weights)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
        return nn.DenseGeneral(out_features, axis=(-2, -1), use_bias=self.use_bias,
                               kernel_init=layers.initializer(self.kernel_init),
                               dtype=self.dtype, param_dtype=self.param_dtype, name='out')(out)
