"""Vision Transformer (Dosovitskiy et al. 2020) and its ResNet-stem hybrid.

Patch embedding (a conv with stride = patch size), optional class token,
position embeddings, pre-LN encoder blocks (nets.layers.encoder_block), a final
LayerNorm and a linear head. With pool='token' and learned position
embeddings the registered variants match the reference parameter counts
exactly (e.g. ViT-B/16: 86,567,656 at 224 px, 1000 classes).

Pooling: 'token' (class token), 'gap' (mean of the patch tokens) or 'map'
(multi-head attention pooling with a learned probe, big_vision's MAP head).
Position embeddings: 'learned', fixed 'sincos2d', or 'none' (the encoder is then
order-blind: permuting the patch tokens permutes their outputs the same way, and
the pooled output, whichever the pool, does not change at all). A learned table made at
one image size is bilinearly interpolated when the model is applied to
another size (and `nets.layers.position.resize_grid_embedding` does the same to a
checkpoint). stem='resnet' puts the patch embedding on a ResNet's feature map
(the paper's hybrid: ViT-B on ResNet-50 stages, 1x1 patches).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets.kernels.conv import Conv
from nets.kernels.mixed_precision import Dense
from nets.layers import blocks, position
from nets.layers.attention import IMPLEMENTATIONS, MultiHeadAttention
from nets.layers.encoder_block import EncoderBlock
from nets.models.resnet import BottleneckBlock
from nets.registry import register

Dtype = Any

POOLS = ('token', 'gap', 'map')
POSEMBS = ('learned', 'sincos2d', 'none')
STEMS = ('patch', 'resnet')
RESNET_STEMS = ('imagenet', 'cifar')


class MAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe token attends over all tokens.

    probe -> cross-attention over the tokens -> + MLP(LN(.)) -> (batch, width).
    """

    num_heads: int
    mlp_dim: int
    attention_implementation: str = 'auto'
    mlp_activation: str = 'gelu'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, _, width = x.shape
        probe = self.param(
            'probe', nn.initializers.xavier_uniform(), (1, 1, width), self.param_dtype
        )
        probe = jnp.broadcast_to(probe.astype(self.dtype), (batch, 1, width))
        x = MultiHeadAttention(
            self.num_heads,
            kernel_init='glorot_uniform',
            implementation=self.attention_implementation,
            name='attention',
            **dims,
        )(probe, x)
        y = blocks.layer_norm(name='norm', **dims)(x)
        x = x + blocks.MlpBlock(self.mlp_dim, activation=self.mlp_activation, name='mlp', **dims)(y)
        return x[:, 0]


class ResNetStem(nn.Module):
    """ResNet root and bottleneck stages, the feature extractor of the hybrid ViT.

    'imagenet' root: 7x7/2 conv + 3x3/2 max pool; 'cifar': 3x3/1 conv. Stage i
    has `stage_sizes[i]` bottleneck blocks of width `width * 2**i`; every stage
    after the first halves the resolution (ResNet-50's first three stages:
    stride 16 at 224 px).
    """

    stage_sizes: tuple[int, ...] = (3, 4, 9)
    width: int = 64
    root: str = 'imagenet'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.root == 'imagenet':
            x = blocks.ConvNormAct(self.width, 7, strides=2, name='root', **conv)(x, train=train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
        else:
            x = blocks.ConvNormAct(self.width, 3, name='root', **conv)(x, train=train)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = BottleneckBlock(
                    self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    name=f'stage{stage}_block{i}',
                    **conv,
                )(x, train=train)
        return x


class VisionTransformer(nn.Module):
    """ViT classifier on (N, H, W, C) images.

    The patch grid is (H / patch_size, W / patch_size) of the image, or of the
    ResNet feature map with stem='resnet'. Learned position embeddings cover
    the class token too (as in the original); with 'sincos2d' the class token
    gets no position embedding. Stochastic depth grows linearly from 0 in the
    first block to `drop_path_rate` in the last. `representation_size` adds a
    Dense+tanh pre-logits layer. The head kernel starts from `head_init` (ViT
    fine-tuning recipes use 'zeros'). `mlp_activation` is the MLPs' activation: 'gelu' (the
    exact form, as torchvision and timm) or 'gelu_tanh' (the tanh approximation that
    big_vision's Flax models use). Attention weights of every block are sown into
    'intermediates' when that collection is mutable.
    """

    num_classes: int = 1000
    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: str = 'token'
    posemb: str = 'learned'
    stem: str = 'patch'
    resnet_stage_sizes: tuple[int, ...] = (3, 4, 9)
    resnet_width: int = 64
    resnet_root: str = 'imagenet'
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    representation_size: int | None = None
    head_init: str = 'truncated_normal'
    attention_implementation: str = 'auto'
    mlp_activation: str = 'gelu'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('pool', self.pool, POOLS)
        blocks.check_choice('posemb', self.posemb, POSEMBS)
        blocks.check_choice('stem', self.stem, STEMS)
        blocks.check_choice('resnet_root', self.resnet_root, RESNET_STEMS)
        blocks.check_choice('head_init', self.head_init, blocks.INITIALIZERS)
        blocks.check_choice('mlp_activation', self.mlp_activation, blocks.ACTIVATIONS)
        blocks.check_choice(
            'attention_implementation', self.attention_implementation, IMPLEMENTATIONS
        )
        for rate in ('dropout_rate', 'attention_dropout_rate', 'drop_path_rate'):
            blocks.check_rate(rate, getattr(self, rate))
        if min(self.patch_size, self.hidden_size, self.depth, self.num_heads, self.mlp_dim) < 1:
            raise ValueError(
                'patch_size, hidden_size, depth, num_heads and mlp_dim must be positive'
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f'hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}'
            )
        if self.posemb == 'sincos2d' and self.hidden_size % 4 != 0:
            raise ValueError(
                f"posemb 'sincos2d' needs hidden_size divisible by 4, got {self.hidden_size}"
            )
        if self.stem == 'resnet' and (
            not self.resnet_stage_sizes or min(self.resnet_stage_sizes) < 1
        ):
            raise ValueError(
                'resnet_stage_sizes must be non-empty positive ints, '
                f'got {self.resnet_stage_sizes!r}'
            )
        super().__post_init__()

    def _position_embedding(self, grid_h: int, grid_w: int, num_tokens: int) -> jax.Array:
        """(1, num_tokens, hidden) table for this grid; learned tables are resized when needed."""
        prefix = int(self.pool == 'token')
        if self.posemb == 'sincos2d':
            table = position.sincos_2d(grid_h, grid_w, self.hidden_size)
            if prefix:
                table = np.concatenate([np.zeros((1, self.hidden_size), np.float32), table])
            return jnp.asarray(table)[None]
        if self.has_variable('params', 'pos_embedding'):
            table = self.get_variable('params', 'pos_embedding')
            if table.shape[1] != num_tokens:
                table = position.resize_grid_embedding(
                    table, (grid_h, grid_w), num_prefix_tokens=prefix
                )
            return table
        return self.param(
            'pos_embedding',
            nn.initializers.normal(stddev=0.02),
            (1, num_tokens, self.hidden_size),
            self.param_dtype,
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'VisionTransformer expects (N, H, W, C) images, got shape {x.shape}')
        dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        if self.stem == 'resnet':
            x = ResNetStem(
                self.resnet_stage_sizes, self.resnet_width, self.resnet_root, name='resnet', **dims
            )(x, train=train)
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            what = 'image' if self.stem == 'patch' else 'ResNet feature map'
            raise ValueError(
                f'patch_size {self.patch_size} does not divide the {what} size {height}x{width}'
            )
        p = self.patch_size
        x = Conv(
            self.hidden_size,
            (p, p),
            strides=(p, p),
            padding='VALID',
            kernel_init=blocks.initializer('lecun_normal'),
            name='embedding',
            **dims,
        )(x)
        batch, grid_h, grid_w, _ = x.shape
        x = x.reshape(batch, grid_h * grid_w, self.hidden_size)

        if self.pool == 'token':
            cls = self.param(
                'cls', nn.initializers.zeros, (1, 1, self.hidden_size), self.param_dtype
            )
            x = jnp.concatenate(
                [jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.hidden_size)), x], 1
            )
        if self.posemb != 'none':
            x = x + self._position_embedding(grid_h, grid_w, x.shape[1]).astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

        for i in range(self.depth):
            drop_path = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=drop_path,
                activation=self.mlp_activation,
                attention_implementation=self.attention_implementation,
                name=f'encoderblock_{i}',
                **dims,
            )(x, train=train)
        x = blocks.layer_norm(name='encoder_norm', **dims)(x)

        if self.pool == 'token':
            x = x[:, 0]
        elif self.pool == 'gap':
            x = jnp.mean(x, axis=1)
        else:
            x = MAPHead(
                self.num_heads,
                self.mlp_dim,
                self.attention_implementation,
                self.mlp_activation,
                name='map_head',
                **dims,
            )(x)
        if self.representation_size is not None:
            x = jnp.tanh(Dense(self.representation_size, name='pre_logits', **dims)(x))
        x = Dense(
            self.num_classes, kernel_init=blocks.initializer(self.head_init), name='head', **dims
        )(x)
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
    register(
        _name,
        VisionTransformer,
        family='vit',
        patch_size=_patch,
        hidden_size=_hidden,
        depth=_depth,
        num_heads=_heads,
        mlp_dim=_mlp,
    )

# The paper's hybrid: ViT-B on the first three stages of ResNet-50 (stride 16), 1x1 patches.
register(
    'vit_r50_b16',
    VisionTransformer,
    family='vit',
    stem='resnet',
    resnet_stage_sizes=(3, 4, 9),
    patch_size=1,
    hidden_size=768,
    depth=12,
    num_heads=12,
    mlp_dim=3072,
)
