"""The Transformer encoder block shared by the Transformer encoder and ViT.

x + attention(x) then x + MLP(x), with LayerNorm either before each branch
('pre', ViT and most modern Transformers: trains without warm-up tricks) or
after each residual sum ('post', Vaswani et al. 2017).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.layers import blocks
from nets.layers.attention import IMPLEMENTATIONS, MultiHeadAttention

Dtype = Any

NORM_POSITIONS = ('pre', 'post')


def residual_sublayer(
    x: jax.Array,
    branch: Callable[[jax.Array], jax.Array],
    norm: nn.Module,
    *,
    pre: bool,
    train: bool,
    dropout_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> jax.Array:
    """x + branch(LN(x)) ('pre'), or LN(x + branch(x)) ('post'), with dropout and stochastic
    depth on the branch. Call inside a compact method; `norm` is the sub-layer's LayerNorm."""
    y = branch(norm(x) if pre else x)
    y = nn.Dropout(dropout_rate)(y, deterministic=not train)
    x = x + blocks.DropPath(drop_path_rate)(y, train=train)
    return x if pre else norm(x)


class EncoderBlock(nn.Module):
    """Self-attention and MLP sub-layers, each with a residual, dropout and stochastic depth.

    `mask` (True = may attend) is passed to the attention, e.g. to hide padding.
    Submodule names ('norm1', 'attention', 'norm2', 'mlp') are the same for both
    norm positions, so checkpoints differ only in meaning, not in layout.
    """

    num_heads: int
    mlp_dim: int
    norm_position: str = 'pre'
    activation: str = 'gelu'
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention_implementation: str = 'auto'
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
        self, x: jax.Array, *, mask: jax.Array | None = None, train: bool = False
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
                drop_path_rate=self.drop_path_rate,
            )

        attention = MultiHeadAttention(
            self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            implementation=self.attention_implementation,
            name='attention',
            **dims,
        )
        x = residual(x, lambda y: attention(y, mask=mask, train=train), 'norm1', dropout=True)
        mlp = blocks.MlpBlock(
            self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            name='mlp',
            **dims,
        )
        # MlpBlock ends in its own dropout, which serves as this sub-layer's.
        return residual(x, lambda y: mlp(y, train=train), 'norm2', dropout=False)
