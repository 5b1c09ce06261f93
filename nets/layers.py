"""Shared building blocks for every model family in `nets`.

Activations and initialisers are looked up by name so that models can expose
them as plain string fields (sweep configs stay serialisable). The modules here
(`ConvNormAct`, `MlpBlock`, `DropPath`) follow the conventions of the whole
package: channels-last inputs, `train` keyword toggling batch statistics and
dropout, `dtype` for computation and `param_dtype` for storage.
"""

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch defaults (momentum 0.1 there is a decay of 0.9 here), so that models
# ported from torchvision behave alike.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
# ViT / big_vision use a smaller epsilon than PyTorch's LayerNorm default.
LAYER_NORM_EPSILON = 1e-6


def check_choice(kind: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a ValueError naming `value` and the valid `choices` unless it is one."""
    choices = sorted(choices)
    if value not in choices:
        raise ValueError(f"Unknown {kind} {value!r}; valid choices: {choices}")


def to_tuple(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    """Broadcast an int to `rank` dims, or check a sequence has `rank` entries."""
    if isinstance(value, numbers.Integral):
        return (int(value),) * rank
    value = tuple(value)
    if len(value) != rank:
        raise ValueError(f"{what} {value} has {len(value)} entries but the input has {rank} spatial dims")
    return value


# --------------------------------------------------------------------------- activations

def _exact_gelu(x: jax.Array) -> jax.Array:
    # The erf form, as in the GELU paper and PyTorch's nn.GELU default.
    return nn.gelu(x, approximate=False)


def _identity(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'gelu': _exact_gelu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'elu': nn.elu,
    'leaky_relu': nn.leaky_relu,  # negative slope 0.01, as in PyTorch
    'silu': nn.silu,
    'swish': nn.silu,
    'selu': nn.selu,
    'softplus': nn.softplus,
    'identity': _identity,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the activation function called `name` (see `ACTIVATIONS`)."""
    check_choice('activation', name, ACTIVATIONS)
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- initialisers

INITIALIZERS: dict[str, Initializer] = {
    'he_normal': nn.initializers.he_normal(),
    'he_uniform': nn.initializers.he_uniform(),
    'glorot_normal': nn.initializers.glorot_normal(),
    'xavier_normal': nn.initializers.glorot_normal(),
    'glorot_uniform': nn.initializers.glorot_uniform(),
    'xavier_uniform': nn.initializers.glorot_uniform(),
    'lecun_normal': nn.initializers.lecun_normal(),
    'lecun_uniform': nn.initializers.lecun_uniform(),
    'normal': nn.initializers.normal(stddev=0.01),
    'truncated_normal': nn.initializers.truncated_normal(stddev=0.02),
    'zeros': nn.initializers.zeros,
    'orthogonal': nn.initializers.orthogonal(),
}

# Variance-preserving choice per activation: He for the ReLU family, LeCun for
# SELU (needed for self-normalisation), Glorot for the saturating/linear ones.
_DEFAULT_INIT_FOR_ACTIVATION = {
    'relu': 'he_normal', 'leaky_relu': 'he_normal', 'elu': 'he_normal',
    'gelu': 'he_normal', 'silu': 'he_normal', 'swish': 'he_normal',
    'selu': 'lecun_normal',
    'tanh': 'glorot_normal', 'sigmoid': 'glorot_normal',
    'softplus': 'glorot_normal', 'identity': 'glorot_normal',
}


def initializer(name: str) -> Initializer:
    """Return the kernel initialiser called `name` (see `INITIALIZERS`)."""
    check_choice('initializer', name, INITIALIZERS)
    return INITIALIZERS[name]


def default_initializer_name(activation_name: str) -> str:
    """The initialiser name matched to an activation (used when a model's kernel_init is None)."""
    check_choice('activation', activation_name, ACTIVATIONS)
    return _DEFAULT_INIT_FOR_ACTIVATION[activation_name]


# --------------------------------------------------------------------------- norms

def batch_norm(*, train: bool, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               zero_scale: bool = False, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's momentum/epsilon; running stats in `batch_stats`.

    Call inside a compact method. `zero_scale` starts the scale at 0 (used to make
    residual blocks begin as identities).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(*, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the last axis with the ViT epsilon (1e-6). Call inside a compact method."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=param_dtype, name=name)


# --------------------------------------------------------------------------- blocks

def symmetric_padding(kernel_size: Sequence[int]) -> str | list[tuple[int, int]]:
    """PyTorch-style `k // 2` padding on both sides for odd kernels, else 'SAME'.

    Matters for strided convs: Flax's 'SAME' pads more on the right, which
    shifts the sampling grid relative to torchvision models.
    """
    if all(k % 2 == 1 for k in kernel_size):
        return [(k // 2, k // 2) for k in kernel_size]
    return 'SAME'


class ConvNormAct(nn.Module):
    """Convolution, optional BatchNorm, activation.

    The spatial rank (1-D signals, 2-D images, ...) is taken from the input,
    which is channels-last `(N, *spatial, C)`; an int `kernel_size`/`strides`
    means the same value on every spatial dim. The conv has a bias only when
    there is no norm (unless `use_bias` says otherwise).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] | None = None  # None: `symmetric_padding`
    use_norm: bool = True
    activation: str = 'relu'
    use_bias: bool | None = None
    kernel_init: str = 'he_normal'
    zero_init_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        rank = x.ndim - 2
        kernel = to_tuple(self.kernel_size, rank, 'kernel_size')
        strides = to_tuple(self.strides, rank, 'strides')
        padding = symmetric_padding(kernel) if self.padding is None else self.padding
        use_bias = (not self.use_norm) if self.use_bias is None else self.use_bias
        x = nn.Conv(self.features, kernel, strides=strides, padding=padding, use_bias=use_bias,
                    kernel_init=initializer(self.kernel_init), dtype=self.dtype,
                    param_dtype=self.param_dtype, name='conv')(x)
        if self.use_norm:
            x = batch_norm(train=train, dtype=self.dtype, param_dtype=self.param_dtype,
                           zero_scale=self.zero_init_norm, name='norm')(x)
        return activation(self.activation)(x)


class MlpBlock(nn.Module):
    """Dense - activation - dropout - Dense - dropout (the Transformer MLP).

    Output width defaults to the input width. Initialisation follows ViT:
    Xavier-uniform kernels, biases ~ N(0, 1e-6).
    """

    hidden_features: int
    out_features: int | None = None
    activation: str = 'gelu'
    dropout_rate: float = 0.0
    kernel_init: str = 'glorot_uniform'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        out_features = x.shape[-1] if self.out_features is None else self.out_features
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, kernel_init=initializer(self.kernel_init), bias_init=nn.initializers.normal(1e-6),
            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        x = dense(self.hidden_features, 'fc1')(x)
        x = activation(self.activation)(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = dense(out_features, 'fc2')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per example.

    Surviving examples are scaled by 1/(1-rate) so the expectation is
    unchanged. Uses the 'dropout' rng; a no-op unless `train=True`.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = jax.random.bernoulli(self.make_rng('dropout'), keep_prob, mask_shape)
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


def check_rate(name: str, value: float) -> None:
    """Raise ValueError unless 0 <= value < 1 (dropout-like probabilities)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
