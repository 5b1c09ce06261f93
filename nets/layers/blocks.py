"""Shared building blocks for every model family in `nets`.

Activations and initialisers are looked up by name so that models can expose
them as plain string fields (sweep configs stay serialisable). The modules here
(`ConvNormAct`, `MlpBlock`, `DropPath`) follow the conventions of the whole
package: channels-last inputs, `train` keyword toggling batch statistics and
dropout, `dtype` for computation and `param_dtype` for storage.
"""

import functools
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nets.kernels.batch_norm import BatchNorm
from nets.kernels.conv import Conv, channels_last_dimension_numbers, conv_general_dilated
from nets.kernels.mixed_precision import Dense

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
        raise ValueError(f'Unknown {kind} {value!r}; valid choices: {choices}')


def to_tuple(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    """Broadcast an int to `rank` dims, or check a sequence has `rank` entries."""
    if isinstance(value, numbers.Integral):
        return (int(value),) * rank
    value = tuple(value)
    if len(value) != rank:
        raise ValueError(
            f'{what} {value} has {len(value)} entries but the input has {rank} spatial dims'
        )
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
    'gelu_tanh': functools.partial(nn.gelu, approximate=True),  # big_vision's, BERT's GELU
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
    'relu': 'he_normal',
    'leaky_relu': 'he_normal',
    'elu': 'he_normal',
    'gelu': 'he_normal',
    'gelu_tanh': 'he_normal',
    'silu': 'he_normal',
    'swish': 'he_normal',
    'selu': 'lecun_normal',
    'tanh': 'glorot_normal',
    'sigmoid': 'glorot_normal',
    'softplus': 'glorot_normal',
    'identity': 'glorot_normal',
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


def batch_norm(
    *,
    train: bool,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    zero_scale: bool = False,
    epsilon: float = BATCH_NORM_EPSILON,
    name: str | None = None,
) -> BatchNorm:
    """BatchNorm with PyTorch's momentum and (by default) epsilon; running stats in
    `batch_stats` (nets.kernels.batch_norm's: flax's module with a hand-written backward pass).

    Call inside a compact method. `zero_scale` starts the scale at 0 (used to make
    residual blocks begin as identities).
    """
    return BatchNorm(
        use_running_average=not train,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=epsilon,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(
    *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: str | None = None
) -> nn.LayerNorm:
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
    there is no norm (unless `use_bias` says otherwise). `norm_epsilon` is the BatchNorm's
    (torchvision's Inception convs use 1e-3).
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
    norm_epsilon: float = BATCH_NORM_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        rank = x.ndim - 2
        kernel = to_tuple(self.kernel_size, rank, 'kernel_size')
        strides = to_tuple(self.strides, rank, 'strides')
        padding = symmetric_padding(kernel) if self.padding is None else self.padding
        use_bias = (not self.use_norm) if self.use_bias is None else self.use_bias
        x = Conv(
            self.features,
            kernel,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_init=initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='conv',
        )(x)
        if self.use_norm:
            x = batch_norm(
                train=train,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                zero_scale=self.zero_init_norm,
                epsilon=self.norm_epsilon,
                name='norm',
            )(x)
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
        dense = lambda n, name: Dense(  # noqa: E731
            n,
            kernel_init=initializer(self.kernel_init),
            bias_init=nn.initializers.normal(1e-6),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
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
        raise ValueError(f'{name} must be in [0, 1), got {value!r}')


# -------------------------------------------------------------------- shared by the modern ConvNets


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): `x * sigmoid(fc2(act(fc1(mean(x)))))`.

    The gate is one value per example and channel, from the spatial mean. Dense
    layers have biases and LeCun-normal kernels (Haiku's Linear default, which the
    NFNet reference uses).
    """

    hidden_features: int
    activation: str = 'relu'
    kernel_init: str = 'lecun_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(
            kernel_init=initializer(self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        h = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        h = Dense(self.hidden_features, name='fc1', **dense)(h)
        h = activation(self.activation)(h)
        h = Dense(x.shape[-1], name='fc2', **dense)(h)
        return x * nn.sigmoid(h)


WS_EPSILON_MODES = ('max', 'add')


class ScaledWSConv(nn.Module):
    """Convolution with scaled weight standardisation (Brock et al. 2021, NF-ResNets/NFNets).

    The weights used are `gain * (W - mean(W)) / sqrt(fan_in * var(W))`, the mean
    and variance taken per output channel over its fan-in, with a learnable
    per-channel `gain` (init 1). A zero-mean, 1/fan_in-variance filter keeps a
    unit-variance input at unit variance without a normaliser, and removing the
    mean cancels the mean shift that ReLU/GELU outputs carry. `epsilon` keeps a
    collapsed filter from blowing up: `epsilon_mode='max'` bounds fan_in·var from below,
    max(fan_in·var, epsilon) (the DeepMind reference), 'add' uses fan_in·(var + epsilon)
    (timm's ScaledStdConv2d, a batch norm over the weights). The standardisation runs in
    `param_dtype`; the conv runs in `dtype`. Padding defaults to 'SAME' (TensorFlow/Haiku
    placement, as the NFNet reference). `feature_group_count` gives grouped convs (fan-in per
    group).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = 'SAME'
    feature_group_count: int = 1
    use_bias: bool = True
    epsilon: float = 1e-4
    epsilon_mode: str = 'max'
    kernel_init: str = 'lecun_normal'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        check_choice('epsilon_mode', self.epsilon_mode, WS_EPSILON_MODES)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rank = x.ndim - 2
        kernel_size = to_tuple(self.kernel_size, rank, 'kernel_size')
        strides = to_tuple(self.strides, rank, 'strides')
        in_features = x.shape[-1]
        if in_features % self.feature_group_count or self.features % self.feature_group_count:
            raise ValueError(
                f'feature_group_count {self.feature_group_count} must divide the input '
                f'({in_features}) and output ({self.features}) channels'
            )
        shape = kernel_size + (in_features // self.feature_group_count, self.features)
        kernel = self.param('kernel', initializer(self.kernel_init), shape, self.param_dtype)
        gain = self.param('gain', nn.initializers.ones, (self.features,), self.param_dtype)
        fan_in = 1
        for size in shape[:-1]:
            fan_in *= size
        fan_in_axes = tuple(range(rank + 1))
        mean = jnp.mean(kernel, axis=fan_in_axes, keepdims=True)
        var = jnp.var(kernel, axis=fan_in_axes, keepdims=True)
        if self.epsilon_mode == 'max':
            scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, self.epsilon)) * gain
        else:
            scale = jax.lax.rsqrt((var + self.epsilon) * fan_in) * gain
        weight = (kernel - mean) * scale
        padding = (
            self.padding if isinstance(self.padding, str) else [tuple(p) for p in self.padding]
        )
        # The kernel switch's convolution: oneDNN's (grouped ones too) on the CPU where it builds.
        y = conv_general_dilated(
            x.astype(self.dtype),
            weight.astype(self.dtype),
            strides,
            padding,
            dimension_numbers=channels_last_dimension_numbers(x.ndim),
            feature_group_count=self.feature_group_count,
        )
        if self.use_bias:
            bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


# -------------------------------------------------------------------------- pooling and input sizes
# Used by the classic ConvNets (alexnet.py, vgg.py, inception.py, inception_resnet.py), which
# pool to a fixed grid before their classifiers and must reject inputs their windows cannot fit.


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """Average-pool channels-last `x` to `output_size` per spatial dim, as PyTorch's
    AdaptiveAvgPool.

    Output cell i along a dim of length n averages inputs [floor(i·n/m), ceil((i+1)·n/m)),
    so inputs smaller than the output are repeated (a 1x1 map becomes a constant 6x6 one) and
    torchvision classifiers keep their input width at any image size. The rectangle average is
    separable, so each dim is one small matrix product (differentiable, any rank).
    """
    spatial = x.shape[1:-1]
    output = to_tuple(output_size, len(spatial), 'output_size')
    for axis, (n, m) in enumerate(zip(spatial, output), start=1):
        if m < 1:
            raise ValueError(f'adaptive_avg_pool output size must be positive, got {output}')
        if n == m:
            continue
        if m == 1:
            x = jnp.mean(x, axis=axis, keepdims=True)
            continue
        weights = np.zeros((m, n), np.float32)
        for i in range(m):
            start, end = (i * n) // m, -(-(i + 1) * n // m)
            weights[i, start:end] = 1.0 / (end - start)
        x = jnp.moveaxis(
            jnp.tensordot(x, jnp.asarray(weights, x.dtype), axes=([axis], [1])), -1, axis
        )
    return x


def window_output_size(
    size: int, window: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False
) -> int:
    """Length along one dim after a conv or pooling window, by PyTorch's rule; 0 if it does not fit.

    `padding` is added on both sides. With `ceil_mode` a last, partial window counts as long as
    it starts inside the input (PyTorch's ceil_mode=True pooling).
    """
    span = size + 2 * padding - window
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def smallest_input_size(output_size: Callable[[int], int], limit: int = 4096) -> int:
    """Smallest input length n for which the (monotone) `output_size(n)` is at least 1."""
    for n in range(1, limit + 1):
        if output_size(n) >= 1:
            return n
    raise ValueError(f'No input length up to {limit} gives a non-empty output')


def check_input_size(what: str, spatial: Sequence[int], minimum: int, hint: str = '') -> None:
    """Raise a ValueError naming the input size and `minimum` if a spatial dim is below it."""
    if any(s < minimum for s in spatial):
        size = 'x'.join(str(s) for s in spatial)
        raise ValueError(
            f'Input size {size} is too small for {what}: the minimum is '
            f'{"x".join([str(minimum)] * len(spatial))}{hint}'
        )


def scale_width(features: int, multiplier: float) -> int:
    """`features` times a width multiplier, rounded half up, at least 1."""
    return max(1, int(features * multiplier + 0.5))


def check_images(model: nn.Module, x: jax.Array, hint: str = '') -> None:
    """Reject non-image inputs and images below `model.min_input_size()` (naming both sizes);
    models with an ImageNet stem point at their small-input stem."""
    name = type(model).__name__
    if x.ndim != 4:
        raise ValueError(f'{name} expects (N, H, W, C) images, got shape {x.shape}')
    if not hint and model.stem == 'imagenet':
        hint = " (stem='small' accepts smaller images)"
    check_input_size(f'{name}(stem={model.stem!r})', x.shape[1:3], model.min_input_size(), hint)
