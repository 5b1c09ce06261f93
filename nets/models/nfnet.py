"""Normaliser-free ResNets: NFNet-F0...F6 (Brock et al. 2021, "High-Performance
Large-Scale Image Recognition Without Normalization").

No batch norm anywhere. What keeps the signal well scaled instead:
- `blocks.ScaledWSConv`: every conv uses scaled weight standardisation (zero
  mean, 1/fan_in variance per output channel, learnable gain) and a bias.
- Scaled activations: each nonlinearity is multiplied by γ = 1/std(f(z)),
  z ~ N(0, 1), so a unit-variance input gives a unit-variance output
  (`ACTIVATION_GAMMAS`; relu γ = sqrt(2/(1-1/π)) ≈ 1.71286, exact-erf gelu
  ≈ 1.70093 — the reference code's 1.71396/1.70150 were estimated by sampling).
- Residual blocks `h + α·g·f(h/β)`: β_i is the expected std of the block input
  (tracked analytically: Var grows by α² per block and resets to 1 + α² after
  each stage's first block, whose shortcut is computed from the normalised
  input), α = 0.2, and g is a scalar skip gain initialised to 0 (SkipInit), so
  every block starts as the identity/shortcut.

Block (bottleneck ratio 0.5 of the output width, group width 128):
  out = γ·act(x)/β; shortcut = x, or (avg-pool 2x2 if strided) + 1x1 conv of out
  when the stride or width changes; 1x1 conv → 3x3 grouped conv (stride) →
  3x3 grouped conv → 1x1 conv, scaled activations in between; squeeze-excite
  (ratio 0.5, ReLU, gate multiplied by 2 so it starts near 1); stochastic depth
  (rate growing linearly with the block index to `drop_path_rate` = 0.1); times
  the skip gain and α; plus the shortcut.

Stem ('imagenet'): four 3x3 convs with 16, 32, 64, widths[0]/2 = 128 channels,
strides 2, 1, 1, 2. Stages of widths (256, 512, 1536, 1536) and depths
F0 (1, 2, 6, 3), F1 ×2, ..., F6 ×7, strides 1, 2, 2, 2; a final 1x1 conv to
2·1536 = 3072 channels and a scaled activation; global average pool; dropout
(F0 0.2, F1 0.3, F2/F3 0.4, F4-F6 0.5); linear head (init N(0, 0.01²)).
Convs use TensorFlow/Haiku 'SAME' padding like the reference. Parameter counts
at 224 px, 1000 classes are checked against the paper's table (71.5M for F0 ...
438.4M for F6). The paper trains F0 at 192 px and tests at 256 px.

stem='small' is one 3x3 stride-1 conv to widths[0]/2 channels for 28-32 px
images (28x28 runs at 28, 14, 7, 4 px with four stages). The smallest input is
the total stride: 32 px ('imagenet') or 8 px ('small') with four stages.

Training needs adaptive gradient clipping (AGC, §4 of the paper), which takes
the place of batch norm's implicit control of the update size: each unit's
(output channel's) gradient G is rescaled so that ||G|| / max(||W||, 1e-3) <= λ,
with λ = 0.01 at the paper's batch size 4096 (the paper finds that larger
batches need smaller λ). AGC must skip the final linear layer (`head`); 0-D and
1-D parameters (biases, gains, skip gains) are clipped with their whole-tensor
norm, as the reference's unit-wise norm does. AGC lives in the optax builder
(train/optim.py), not here.

Porting weights (`python -m nets.convert`, timm's NFNets): `activation_gamma`
replaces the exact γ by another value (timm and the DeepMind reference use the
sampled constants, gelu 1.7015043497085571); `ws_epsilon` and `ws_epsilon_mode`
are the weight standardisation's epsilon and its form (`blocks.ScaledWSConv`:
'max', the reference's max(fan_in·var, 1e-4), or 'add', timm's
fan_in·(var + 1e-5)); `conv_padding='symmetric'` pads k // 2 on each side as
PyTorch does (timm's nfnet_* and nfnet_l*; its dm_nfnet_* use 'same'); and
`stem_widths` sets the four stem convs' widths (default 16, 32, 64 and
widths[0] / 2; timm's are stem_chs / 8, / 4, / 2 and stem_chs).

Each block sows the variance of its residual branch (before the skip gain;
mean over channels of the per-channel variance) as
`intermediates/<block>/residual_variance` when 'intermediates' is mutable:
the signal-propagation check the paper plots.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets.kernels.mixed_precision import Dense
from nets.layers import blocks
from nets.registry import register

Dtype = Any

STEMS = ('imagenet', 'small')
CONV_PADDINGS = ('same', 'symmetric')

# γ = 1 / std(f(z)) for z ~ N(0, 1), by adaptive quadrature (scipy) of the exact
# functions in `blocks.ACTIVATIONS` (tests/test_nets_modern.py re-derives them).
ACTIVATION_GAMMAS: dict[str, float] = {
    'relu': math.sqrt(2.0 / (1.0 - 1.0 / math.pi)),  # 1.7128585504496627
    'gelu': 1.700926243363333,
    'silu': 1.7871872221004417,
    'swish': 1.7871872221004417,
    'tanh': 1.5925374197228312,
    'sigmoid': 4.801313372039966,
    'elu': 1.2708434178501962,
    'leaky_relu': 1.7048316271773365,
    'selu': 1.0,
    'softplus': 1.919125980107656,
    'identity': 1.0,
}


def conv_fields(module: nn.Module) -> dict[str, Any]:
    """The `blocks.ScaledWSConv` fields an NFNet module (NFNet or NFBlock) sets on every conv."""
    return dict(
        epsilon=module.ws_epsilon,
        epsilon_mode=module.ws_epsilon_mode,
        dtype=module.dtype,
        param_dtype=module.param_dtype,
    )


def padding_for(kind: str, kernel_size: int) -> str | list[tuple[int, int]]:
    """'SAME' (TensorFlow's, more padding after than before for strided convs) or PyTorch's
    k // 2 on each side."""
    if kind == 'same':
        return 'SAME'
    return [(kernel_size // 2, kernel_size // 2)] * 2


def scaled_activation(name: str, gamma: float | None = None) -> Callable[[jax.Array], jax.Array]:
    """The activation `name` times its γ (`gamma`, or by default the exact 1/std(f(z)) from
    `ACTIVATION_GAMMAS`), so N(0, 1) inputs give unit-variance outputs."""
    blocks.check_choice('activation', name, ACTIVATION_GAMMAS)
    fn = blocks.activation(name)
    gamma = ACTIVATION_GAMMAS[name] if gamma is None else gamma

    def scaled(x: jax.Array) -> jax.Array:
        return fn(x) * jnp.asarray(gamma, x.dtype)

    return scaled


class NFBlock(nn.Module):
    """NF bottleneck block; see the module docstring. Output width `features`.

    `beta` is the expected std of the input: the branch (and a projected
    shortcut) sees γ·act(x)/beta, as in the reference code (which scales after
    the activation). The branch is multiplied by `alpha` and the skip gain.
    """

    features: int
    strides: int = 1
    beta: float = 1.0
    alpha: float = 0.2
    bottleneck_ratio: float = 0.5
    group_width: int = 128
    se_ratio: float = 0.5
    drop_path_rate: float = 0.0
    activation: str = 'gelu'
    activation_gamma: float | None = None
    ws_epsilon: float = 1e-4
    ws_epsilon_mode: str = 'max'
    conv_padding: str = 'same'
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = scaled_activation(self.activation, self.activation_gamma)
        dims = conv_fields(self)
        padded = dict(padding=padding_for(self.conv_padding, 3), **dims)
        # Bottleneck width rounded down to whole groups (all F-variant widths are multiples of 128).
        groups = int(self.features * self.bottleneck_ratio) // self.group_width
        width = groups * self.group_width

        out = act(x) * jnp.asarray(1.0 / self.beta, self.dtype)
        shortcut = x
        if self.strides > 1:
            # Average-pool then 1x1 conv: the shortcut sees every input pixel (a strided 1x1 would
            # skip 3/4).
            window = (self.strides,) * (x.ndim - 2)
            shortcut = nn.avg_pool(
                out, window, strides=window, padding='SAME', count_include_pad=False
            )
        elif x.shape[-1] != self.features:
            shortcut = out
        if self.strides > 1 or x.shape[-1] != self.features:
            shortcut = blocks.ScaledWSConv(self.features, 1, name='conv_shortcut', **dims)(shortcut)

        y = blocks.ScaledWSConv(width, 1, name='conv0', **dims)(out)
        y = blocks.ScaledWSConv(
            width, 3, strides=self.strides, feature_group_count=groups, name='conv1', **padded
        )(act(y))
        y = blocks.ScaledWSConv(width, 3, feature_group_count=groups, name='conv1b', **padded)(
            act(y)
        )
        y = blocks.ScaledWSConv(self.features, 1, name='conv2', **dims)(act(y))
        # The sigmoid gate averages ~0.5 at init; x2 keeps the branch at unit scale.
        y = 2.0 * blocks.SqueezeExcite(
            max(1, int(self.features * self.se_ratio)),
            activation='relu',
            name='se',
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(y)
        if self.is_mutable_collection('intermediates'):
            variance = jnp.mean(jnp.var(y.astype(jnp.float32), axis=tuple(range(y.ndim - 1))))
            self.sow('intermediates', 'residual_variance', variance)
        y = blocks.DropPath(self.drop_path_rate)(y, train=train)
        skip_gain = self.param('skip_gain', nn.initializers.zeros, (), self.param_dtype)
        return shortcut + y * (skip_gain * self.alpha).astype(self.dtype)


class NFNet(nn.Module):
    """Normaliser-free ResNet classifier on (N, H, W, C) images; see the module docstring.

    Stage i has `depths[i]` NF blocks of width `widths[i]` (stride 2 from the
    second stage on). `final_conv_mult` sizes the last 1x1 conv
    (int(final_conv_mult · widths[-1]); timm's nfnet_l* use 1.5). `drop_path_rate` is the
    stochastic-depth rate at the end of the network; `dropout_rate` applies before the head.
    `bottleneck_ratio · widths[i]` must hold at least one group of `group_width`.
    """

    num_classes: int = 1000
    depths: tuple[int, ...] = (1, 2, 6, 3)
    widths: tuple[int, ...] = (256, 512, 1536, 1536)
    stem: str = 'imagenet'
    bottleneck_ratio: float = 0.5
    group_width: int = 128
    se_ratio: float = 0.5
    alpha: float = 0.2
    final_conv_mult: float = 2.0
    activation: str = 'gelu'
    activation_gamma: float | None = None
    stem_widths: tuple[int, ...] | None = None
    ws_epsilon: float = 1e-4
    ws_epsilon_mode: str = 'max'
    conv_padding: str = 'same'
    drop_path_rate: float = 0.1
    dropout_rate: float = 0.2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        blocks.check_choice('stem', self.stem, STEMS)
        blocks.check_choice('activation', self.activation, ACTIVATION_GAMMAS)
        blocks.check_choice('ws_epsilon_mode', self.ws_epsilon_mode, blocks.WS_EPSILON_MODES)
        blocks.check_choice('conv_padding', self.conv_padding, CONV_PADDINGS)
        blocks.check_rate('drop_path_rate', self.drop_path_rate)
        if self.stem_widths is not None and (
            len(self.stem_widths) != 4 or min(self.stem_widths) < 1
        ):
            raise ValueError(
                f'stem_widths must be four positive widths (the imagenet stem convs), got '
                f'{self.stem_widths!r}'
            )
        if not self.ws_epsilon > 0:
            raise ValueError(f'ws_epsilon must be positive, got {self.ws_epsilon!r}')
        blocks.check_rate('dropout_rate', self.dropout_rate)
        if (
            not self.depths
            or len(self.depths) != len(self.widths)
            or min(self.depths) < 1
            or min(self.widths) < 2
        ):
            raise ValueError(
                f'depths and widths must be non-empty tuples of equal length (depths >= 1, '
                f'widths >= 2), got depths={self.depths!r}, widths={self.widths!r}'
            )
        if (
            self.group_width < 1
            or int(self.final_conv_mult * self.widths[-1]) < 1
            or not self.alpha > 0
        ):
            raise ValueError(
                f'group_width and final_conv_mult must be positive and alpha > 0, got '
                f'group_width={self.group_width}, final_conv_mult={self.final_conv_mult}, '
                f'alpha={self.alpha!r}'
            )
        if not 0 < self.bottleneck_ratio or not 0 < self.se_ratio:
            raise ValueError(
                f'bottleneck_ratio and se_ratio must be positive, got '
                f'{self.bottleneck_ratio!r}, {self.se_ratio!r}'
            )
        too_narrow = [w for w in self.widths if int(w * self.bottleneck_ratio) < self.group_width]
        if too_narrow:
            raise ValueError(
                f'widths {too_narrow} x bottleneck_ratio {self.bottleneck_ratio} hold no group of '
                f'group_width {self.group_width}; need width >= '
                f'{math.ceil(self.group_width / self.bottleneck_ratio)}'
            )
        super().__post_init__()

    def min_input_size(self) -> int:
        """Smallest H and W: the total stride (stem 4 or 1, then /2 per stage after the first)."""
        return (4 if self.stem == 'imagenet' else 1) * 2 ** (len(self.depths) - 1)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f'NFNet expects (N, H, W, C) images, got shape {x.shape}')
        minimum = self.min_input_size()
        if min(x.shape[1:3]) < minimum:
            raise ValueError(
                f'Input size {x.shape[1]}x{x.shape[2]} is too small for stem {self.stem!r} and '
                f'{len(self.depths)} stages: minimum {minimum}x{minimum}'
            )
        act = scaled_activation(self.activation, self.activation_gamma)
        dims = conv_fields(self)
        padded = dict(padding=padding_for(self.conv_padding, 3), **dims)
        x = x.astype(self.dtype)
        stem_widths = self.stem_widths or (16, 32, 64, self.widths[0] // 2)
        if self.stem == 'imagenet':
            for i, (features, strides) in enumerate(zip(stem_widths, (2, 1, 1, 2))):
                if i > 0:
                    x = act(x)
                x = blocks.ScaledWSConv(
                    features, 3, strides=strides, name=f'stem_conv{i}', **padded
                )(x)
        else:
            x = blocks.ScaledWSConv(stem_widths[-1], 3, name='stem_conv', **padded)(x)

        num_blocks = sum(self.depths)
        expected_std = 1.0
        index = 0
        for stage, (depth, features) in enumerate(zip(self.depths, self.widths)):
            for i in range(depth):
                x = NFBlock(
                    features,
                    strides=2 if stage > 0 and i == 0 else 1,
                    beta=expected_std,
                    alpha=self.alpha,
                    bottleneck_ratio=self.bottleneck_ratio,
                    group_width=self.group_width,
                    se_ratio=self.se_ratio,
                    drop_path_rate=self.drop_path_rate * index / num_blocks,
                    activation=self.activation,
                    activation_gamma=self.activation_gamma,
                    ws_epsilon=self.ws_epsilon,
                    ws_epsilon_mode=self.ws_epsilon_mode,
                    conv_padding=self.conv_padding,
                    name=f'stage{stage}_block{i}',
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(x, train=train)
                index += 1
                # A stage's first block has a normalised (projected) shortcut: variance
                # restarts at 1.
                if i == 0:
                    expected_std = 1.0
                expected_std = math.sqrt(expected_std**2 + self.alpha**2)

        x = blocks.ScaledWSConv(
            int(self.final_conv_mult * self.widths[-1]), 1, name='final_conv', **dims
        )(x)
        x = act(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = Dense(
            self.num_classes,
            kernel_init=blocks.initializer('normal'),
            name='head',
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
        return x.astype(jnp.float32)


# Paper Table 1: depth multiplier n gives depths (n, 2n, 6n, 3n); dropout before the head.
_DROPOUT = {0: 0.2, 1: 0.3, 2: 0.4, 3: 0.4, 4: 0.5, 5: 0.5, 6: 0.5}
for _f, _dropout in _DROPOUT.items():
    _n = _f + 1
    register(
        f'nfnet_f{_f}',
        NFNet,
        family='nfnet',
        depths=(_n, 2 * _n, 6 * _n, 3 * _n),
        dropout_rate=_dropout,
    )
