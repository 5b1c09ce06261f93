"""DCGAN (Radford, Metz & Chintala 2016): a transposed-convolution generator and a strided-
convolution discriminator, held together in one module so a run has one set of variables,
`{'params': {'generator': ..., 'discriminator': ...}, 'batch_stats': {same two}}`.

Layout, for an image of side S = base · 2^k (S halved while it is even and the half is >= 4,
or >= 2 for the first two halvings: 64 -> 4 with k = 4, the paper's; 32 -> 4; 28 -> 7 and
8 -> 2 with k = 2, so that even 8x8 images get a batch-normalised layer in each network):

  generator      z (N, latent) -> ConvTranspose base x base (VALID, from 1x1) to
                 base x base x width·2^(k-1) -> BN ReLU -> k x [ConvTranspose 4x4 stride 2,
                 halving the width, BN ReLU], the last one to `channels` with tanh (no BN)
  discriminator  x (N, S, S, channels) -> k x [Conv 4x4 stride 2 pad 1, doubling the width from
                 `width`, BN (not on the first) LeakyReLU(0.2)] -> Conv base x base VALID -> 1 logit

Weights start from N(0, 0.02) and batch-norm scales from N(1, 0.02), as in the paper.
`generate(z)` and `discriminate(x)` are the two networks (apply with `method=`); `__call__(z)`
is D(G(z)), which initialises both.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.batch_norm import BatchNorm
from nets.kernels.conv import Conv
from nets.layers import blocks
from nets.registry import register

Dtype = Any

# The paper's initialisation: "all weights ... from a zero-centered Normal distribution with
# standard deviation 0.02"; batch-norm scales around 1 with the same spread.
_WEIGHT_INIT = nn.initializers.normal(stddev=0.02)


def _scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def dcgan_layout(image_size: int) -> tuple[int, int]:
    """(base, k): the side of the first feature map and the number of stride-2 stages, with
    image_size = base · 2^k; see the module docstring."""
    if image_size < 4:
        raise ValueError(f'DCGAN needs images of at least 4x4, got image_size={image_size}')
    base, stages = image_size, 0
    while base % 2 == 0 and (base // 2 >= 4 or (stages < 2 and base // 2 >= 2)):
        base, stages = base // 2, stages + 1
    if stages == 0:
        raise ValueError(
            f'image_size={image_size} is odd: the networks halve it at least once; '
            'use a size such as 8, 28, 32 or 64'
        )
    return base, stages


def _batch_norm(train: bool, dtype: Dtype, param_dtype: Dtype, name: str) -> BatchNorm:
    return BatchNorm(
        use_running_average=not train,
        momentum=blocks.BATCH_NORM_MOMENTUM,
        epsilon=blocks.BATCH_NORM_EPSILON,
        scale_init=_scale_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class Generator(nn.Module):
    """z (N, latent) -> images (N, S, S, channels) in [-1, 1] (float32)."""

    image_size: int = 64
    channels: int = 3
    width: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        base, stages = dcgan_layout(self.image_size)
        features = self.width * 2 ** (stages - 1)
        x = z.astype(self.dtype).reshape(z.shape[0], 1, 1, z.shape[-1])
        # A base x base transposed convolution of a 1x1 map: the paper's "project and reshape".
        x = nn.ConvTranspose(
            features,
            (base, base),
            padding='VALID',
            use_bias=False,
            kernel_init=_WEIGHT_INIT,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='project',
        )(x)
        x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype, 'project_norm')(x))
        for stage in range(stages):
            last = stage == stages - 1
            features = self.channels if last else features // 2
            x = nn.ConvTranspose(
                features,
                (4, 4),
                strides=(2, 2),
                padding='SAME',
                use_bias=last,
                kernel_init=_WEIGHT_INIT,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f'up{stage}',
            )(x)
            if not last:
                x = nn.relu(_batch_norm(train, self.dtype, self.param_dtype, f'up{stage}_norm')(x))
        return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
    """images (N, S, S, channels) -> logits (N,) of "real" (float32)."""

    image_size: int = 64
    width: int = 64
    leaky_slope: float = 0.2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f'discriminator built for {self.image_size}x{self.image_size} '
                f'images got {x.shape[1:3]}'
            )
        base, stages = dcgan_layout(self.image_size)
        x = x.astype(self.dtype)
        for stage in range(stages):
            x = Conv(
                self.width * 2**stage,
                (4, 4),
                strides=(2, 2),
                padding=((1, 1), (1, 1)),
                use_bias=stage == 0,
                kernel_init=_WEIGHT_INIT,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f'down{stage}',
            )(x)
            if stage > 0:  # the paper leaves the discriminator's input layer unnormalised
                x = _batch_norm(train, self.dtype, self.param_dtype, f'down{stage}_norm')(x)
            x = nn.leaky_relu(x, self.leaky_slope)
        x = Conv(
            1,
            (base, base),
            padding='VALID',
            kernel_init=_WEIGHT_INIT,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='logit',
        )(x)
        return x.reshape(x.shape[0]).astype(jnp.float32)


class DCGAN(nn.Module):
    """Generator and discriminator of one GAN; see the module docstring for the layout."""

    image_size: int = 64
    channels: int = 3
    latent_dim: int = 100
    generator_width: int = 64
    discriminator_width: int = 64
    leaky_slope: float = 0.2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        dcgan_layout(self.image_size)  # raises on sizes the layout cannot build
        for name in ('channels', 'latent_dim', 'generator_width', 'discriminator_width'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not 0.0 <= self.leaky_slope < 1.0:
            raise ValueError(f'leaky_slope must be in [0, 1), got {self.leaky_slope}')
        super().__post_init__()

    def setup(self) -> None:
        self.generator = Generator(
            self.image_size,
            self.channels,
            self.generator_width,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.discriminator = Discriminator(
            self.image_size,
            self.discriminator_width,
            self.leaky_slope,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def generate(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        """Noise (N, latent_dim) -> images (N, S, S, channels) in [-1, 1]."""
        return self.generator(z, train=train)

    def discriminate(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Images in [-1, 1] -> logits (N,) that they are real."""
        return self.discriminator(images, train=train)

    def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        return self.discriminate(self.generate(z, train=train), train=train)


# The paper's 64x64 RGB model, and a 28x28 grey-scale one for (Fashion-)MNIST.
register('dcgan', DCGAN, family='gan')
register(
    'dcgan_28',
    DCGAN,
    family='gan',
    image_size=28,
    channels=1,
    latent_dim=64,
    generator_width=32,
    discriminator_width=32,
)
