"""Vision Transformer (Dosovitskiy et al. 2020).

Patch embedding (a conv with stride = patch size), optional class token,
position embeddings, pre-LN encoder blocks (multi-head self-attention and a
GELU MLP, each with a residual and optional stochastic depth), a final
LayerNorm and a linear head. With pool='token' and learned position
embeddings the registered variants match the reference parameter counts
exactly (e.g. ViT-B/16: 86,567,656 at 224 px, 1000 classes).

Position embeddings are made for the grid of the input actually given, so any
image size divisible by the patch size works (learned ones are then sized for
that grid; loading weights trained at another size needs interpolation).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from nets import layers
from nets.attention import MultiHeadAttention
from nets.registry import register

Dtype = Any

POOLS = ('token', 'gap')
POSEMBS = ('learned', 'sincos2d')


def sincos2d_posemb(height: int, width: int, features: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine embedding, (height*width, features), row-major grid.

    A quarter of the channels each for sin/cos of the x and y coordinate.
    """
    if features % 4 != 0:
        raise ValueError(f"sincos2d position embedding needs hidden_size divisible by 4, got {features}")
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(features // 4) / (features // 4))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = layers.layer_norm(name='norm1', **norm)(x)
        y = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                               name='attention', **norm)(y, train=train)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        x = x + layers.DropPath(self.drop_path_rate)(y, train=train)
        y = layers.layer_norm(name='norm2', **norm)(x)
        y = layers.MlpBlock(self.mlp_dim, activation='gelu', dropout_rate=self.dropout_rate,
                            name='mlp', **norm)(y, train=train)
        return x + layers.DropPath(self.drop_path_rate)(y, train=train)


class VisionTransformer(nn.Module):
    """ViT classifier on (N, H, W, C) images; H and W must be multiples of `patch_size`.

    pool='token' classifies from a prepended class token, 'gap' from the mean
    of the patch tokens (no class token then). Learned position embeddings
    cover the class token too (as in the original); with 'sincos2d' the class
    token gets no position embedding. Stochastic depth grows linearly from 0
    in the first block to `drop_path_rate` in the last. `representation_size`
    adds a Dense+tanh pre-logits layer. The head kernel starts from
    `head_init` (ViT fine-tuning recipes use 'zeros').
    """

    num_classes: int = 1000
    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = 'token'
    posemb: str = 'learned'
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    representation_size: int | None = None
    head_init: str = 'truncated_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        layers.check_choice('pool', self.pool, POOLS)
        layers.check_choice('posemb', self.posemb, POSEMBS)
        layers.check_choice('head_init', self.head_init, layers.INITIALIZERS)
        for rate in ('dropout_rate', 'attention_dropout_rate', 'drop_path_rate'):
            layers.check_rate(rate, getattr(self, rate))
        if min(self.patch_size, self.hidden_size, self.depth, self.num_heads, self.mlp_dim) < 1:
            raise ValueError("patch_size, hidden_size, depth, num_heads and mlp_dim must be positive")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.posemb == 'sincos2d' and self.hidden_size % 4 != 0:
            raise ValueError(f"posemb 'sincos2d' needs hidden_size divisible by 4, got {self.hidden_size}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"VisionTransformer expects (N, H, W, C) images, got shape {x.shape}")
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} does not divide the image size "
                             f"{height}x{width}")
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        p = self.patch_size
        x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID',
                    kernel_init=layers.initializer('lecun_normal'), name='embedding', **dims)(x.astype(self.dtype))
        batch, grid_h, grid_w, _ = x.shape
        x = x.reshape(batch, grid_h * grid_w, self.hidden_size)

        if self.pool == 'token':
            cls = self.param('cls', nn.initializers.zeros, (1, 1, self.hidden_size), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.hidden_size)), x], 1)
        if self.posemb == 'learned':
            pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                             (1, x.shape[1], self.hidden_size), self.param_dtype)
        else:
            pos = sincos2d_posemb(grid_h, grid_w, self.hidden_size)
            if self.pool == 'token':
                pos = np.concatenate([np.zeros((1, self.hidden_size), np.float32), pos])
            pos = jnp.asarray(pos)[None]
        x = x + pos.astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        for i in range(self.depth):
            drop_path = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = EncoderBlock(self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                             attention_dropout_rate=self.attention_dropout_rate,
                             drop_path_rate=drop_path, name=f'encoderblock_{i}', **dims)(x, train=train)
        x = layers.layer_norm(name='encoder_norm', **dims)(x)

        x = x[:, 0] if self.pool == 'token' else jnp.mean(x, axis=1)
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, name='pre_logits', **dims)(x))
        x = nn.Dense(self.num_classes, kernel_init=layers.initializer(self.head_init), name='head', **dims)(x)
        return x.astype(jnp.float32)


_VARIANTS = {
    # name: (patch, hidden, depth, heads, mlp)
    'vit_ti16': (16, 192, 12, 3, 768),
    'vit_s16': (16, 384, 12, 6, 1536),
    'vit_b16': (16, 768, 12, 12, 3072),
    'vit_b32': (32, 768, 12, 12, 3072),
    'vit_l16': (16, 1024, 24, 16, 4096),
    'vit_l32': (32, 1024, 24, 16, 4096),
    'vit_h14': (14, 1280, 32, 16, 5120),
}
for _name, (_patch, _hidden, _depth, _heads, _mlp) in _VARIANTS.items():
    register(_name, VisionTransformer, family='vit', patch_size=_patch, hidden_size=_hidden,
             depth=_depth, num_heads=_heads, mlp_dim=_mlp)
