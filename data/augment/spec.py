"""What an augmentation op is: its parameters (defaults and valid ranges) and its functions.

An `OpSpec` bundles an op's declared parameters with the pure functions that implement it:
`sample` turns uniform random numbers into the op's random values for one example (a key, for
the batch-level mixing ops), and then either `matrix` (geometric ops: a 3x3 affine matrix,
warped later together with its neighbours), `apply` (per-example image ops) or `mix` (batch
ops that also mix labels) uses them. Keeping the draws separate from their use is what lets
the tests check that every sampled value stays inside its declared range.

`Param.check` validates one value in plain Python: no JAX, nothing compiles, so a config can be
checked at start-up in microseconds.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special

from data.augment.affine import warp

# The kinds of op; the pipeline treats each differently (see data/augment/pipeline.py).
GEOMETRIC = 'geometric'
PHOTOMETRIC = 'photometric'
OCCLUSION = 'occlusion'
MIXING = 'mixing'
POLICY = 'policy'
KINDS = (GEOMETRIC, PHOTOMETRIC, OCCLUSION, MIXING, POLICY)

# How a single number given for a 'range' parameter is read.
SYMMETRIC = 'symmetric'  # x -> (-x, x), e.g. rotate degrees=30 means [-30, 30]
FIXED = 'fixed'  # x -> (x, x),  e.g. gaussian_blur sigma=1.0 means exactly 1.0


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of an op: its type, default and valid values.

    kind: 'float', 'int', 'choice' (one of `choices`), 'names' (a tuple of entries of
    `choices`) or 'range' (a pair (low, high) with low <= high; a single number is read as
    `scalar` says). Numeric bounds are inclusive unless `open_low` (then low itself is invalid).
    """

    kind: str
    default: Any
    doc: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    choices: tuple[Any, ...] = ()
    scalar: str = SYMMETRIC

    def describe(self) -> str:
        """The valid values in words, e.g. "a float in [0, 1]"."""
        if self.kind in ('choice', 'names'):
            what = 'one of' if self.kind == 'choice' else 'a list of names from'
            return f'{what} {list(self.choices)}'
        bounds = f'{"(" if self.open_low else "["}{_num(self.low)}, {_num(self.high)}]'
        if self.kind == 'range':
            single = '(-x, x)' if self.scalar == SYMMETRIC else '(x, x)'
            return (
                f'a pair (low, high) with low <= high inside {bounds}, '
                f'or one number x meaning {single}'
            )
        return f'{"an int" if self.kind == "int" else "a float"} in {bounds}'

    def check(self, op: str, name: str, value: Any) -> Any:
        """The value in canonical form (floats, tuples); ValueError naming it and the valid
        range."""
        given = value  # errors show the value as written, not as converted

        def bad(reason: str = '') -> ValueError:
            return ValueError(
                f'op {op!r}: {name}={given!r} is invalid{reason}; valid: {self.describe()}'
            )

        if self.kind == 'choice':
            if not isinstance(value, str) or value not in self.choices:
                raise bad()
            return value
        if self.kind == 'names':
            if isinstance(value, str):
                value = (value,)
            if (
                not isinstance(value, Sequence)
                or not value
                or any(v not in self.choices for v in value)
            ):
                raise bad()
            return tuple(value)
        if self.kind == 'range':
            if _is_number(value):
                pair = (
                    (-float(value), float(value))
                    if self.scalar == SYMMETRIC
                    else (float(value),) * 2
                )
            elif (
                isinstance(value, Sequence)
                and not isinstance(value, str)
                and len(value) == 2
                and all(_is_number(v) for v in value)
            ):
                pair = (float(value[0]), float(value[1]))
            else:
                raise bad()
            if pair[0] > pair[1]:
                raise bad(' (low > high)')
            if not all(self._inside(v) for v in pair):
                raise bad()
            return pair
        if not _is_number(value) or not math.isfinite(value):
            raise bad()
        if self.kind == 'int':
            if float(value) != int(value):
                raise bad(' (not an integer)')
            value = int(value)
        else:
            value = float(value)
        if not self._inside(value):
            raise bad()
        return value

    def _inside(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return math.isfinite(value) and above and value <= self.high


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True is never meant as a number here.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _num(x: float) -> str:
    if math.isinf(x):
        return 'inf' if x > 0 else '-inf'
    return f'{x:g}'


Draw = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """An op: declared parameters plus its pure functions (see the module docstring).

    Signatures (`params` are the op's full, checked parameters as keyword arguments):
      sample(u, shape, **params) -> Draw        per-example ops: u holds `draws` uniforms in
                                                [0, 1) (see `uniforms`); shape is (H, W, C)
      sample(key, shape, **params) -> Draw      mixing ops: a key; shape is (B, H, W, C)
      matrix(draw, shape) -> (3, 3) forward affine matrix, centred coordinates   [geometric]
      apply(key, image, draw, **params) -> image  image (H, W, C) float32 in [0, 1] [others];
                                                the key is for image-sized noise only
      mix(images, probs, draw, **params) -> (images, probs)                       [mixing]
      validate(params) -> None: checks across parameters (e.g. min <= max), ValueError
    Calling the spec runs the op once: `OPS['rotate'](key, image, degrees=30)` for one
    (H, W, C) image, `OPS['mixup'](key, images, probs, alpha=0.4)` for a batch.
    """

    name: str
    kind: str
    doc: str
    params: Mapping[str, Param]
    sample: Callable[..., Draw]
    draws: int | Callable[..., int] = 0  # how many uniforms `sample` reads (a function of params)
    matrix: Callable[[Draw, tuple[int, ...]], jax.Array] | None = None
    apply: Callable[..., jax.Array] | None = None
    mix: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    validate: Callable[[Mapping[str, Any]], None] | None = None

    def num_draws(self, params: Mapping[str, Any]) -> int:
        return self.draws(**params) if callable(self.draws) else self.draws

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """All parameters: `given` checked and canonicalised, the rest at their defaults."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ValueError(
                f'op {self.name!r} has no parameter {unknown[0]!r}; its parameters: '
                f'{sorted(self.params)}'
            )
        params = {
            name: param.check(self.name, name, given[name]) if name in given else param.default
            for name, param in self.params.items()
        }
        if self.validate is not None:
            self.validate(params)
        return params

    def __call__(self, key: jax.Array, images: jax.Array, *args: jax.Array, **given: Any) -> Any:
        params = self.resolve(given)
        dtype = images.dtype
        x = to_unit_float(images)
        if self.kind == MIXING:
            if len(args) != 1 or x.ndim != 4:
                raise ValueError(
                    f'op {self.name!r} mixes a batch: call it as '
                    f'{self.name}(key, images (B, H, W, C), label_probs (B, K))'
                )
            draw = self.sample(key, x.shape, **params)
            mixed, probs = self.mix(x, args[0], draw, **params)
            return from_unit_float(mixed, dtype), probs
        if x.ndim != 3:
            raise ValueError(
                f'op {self.name!r} takes one image (H, W, C), got shape {x.shape}; '
                'vmap it over a batch, or use make_augmenter'
            )
        draw_key, apply_key = jax.random.split(key)
        draw = self.sample(uniforms(draw_key, self.num_draws(params)), x.shape, **params)
        if self.kind == GEOMETRIC:
            out = warp(x, self.matrix(draw, x.shape), params['fill_mode'], params['fill_value'])
        else:
            out = self.apply(apply_key, x, draw, **params)
        return from_unit_float(out, dtype)


def to_unit_float(images: jax.Array) -> jax.Array:
    """float32 in [0, 1]: uint8 is divided by 255, float types are only cast."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f'images must be float in [0, 1] or uint8, got dtype {images.dtype}')
    return images.astype(jnp.float32)


def from_unit_float(images: jax.Array, dtype: Any) -> jax.Array:
    """Back to the caller's dtype (uint8 rounded, floats cast), clipped to the valid range."""
    images = jnp.clip(images, 0.0, 1.0)
    if dtype == jnp.uint8:
        return jnp.round(images * 255.0).astype(jnp.uint8)
    return images.astype(dtype)


# Parameters that many ops share.
def probability(default: float = 1.0) -> Param:
    return Param('float', default, 'probability of applying the op (drawn per example)', 0.0, 1.0)


# Sampling. A per-example op does not call the PRNG itself: it maps a vector of uniforms to the
# values it needs, and the pipeline draws the uniforms of all its ops in one call per example.
# Every threefry call adds a sizeable block to the compiled program; with a few calls per op a
# twenty-op pipeline took several seconds longer to compile on CPU.


def uniforms(key: jax.Array, count: int) -> jax.Array:
    """`count` independent uniforms in [0, 1) from one PRNG call."""
    return jax.random.uniform(key, (count,))


def below(u: jax.Array, p: float) -> jax.Array:
    """True with probability p for u uniform in [0, 1): always for p=1, never for p=0."""
    return u < p


def in_range(u: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    """Uniform in [low, high], clipped so float rounding never leaves the declared range."""
    low, high = bounds
    return jnp.clip(low + (high - low) * u, low, high)


def log_in_range(u: jax.Array, bounds: tuple[float, float]) -> jax.Array:
    """Log-uniform in [low, high] (both > 0): factors x and 1/x are equally likely."""
    low, high = bounds
    return jnp.clip(jnp.exp(math.log(low) + (math.log(high) - math.log(low)) * u), low, high)


# The uniforms' extremes 0 and 1 are kept 2^-24 away, which bounds a standard normal at 5.3.
_NORMAL_EDGE = 2.0**-24
MAX_STANDARD_NORMAL = 5.3


def standard_normal(u: jax.Array) -> jax.Array:
    """N(0, 1) by the inverse CDF of u uniform in [0, 1); |value| <= MAX_STANDARD_NORMAL."""
    return jax.scipy.special.ndtri(jnp.clip(u, _NORMAL_EDGE, 1.0 - _NORMAL_EDGE))


def integer_below(u: jax.Array, n: Any) -> jax.Array:
    """Uniform integer in [0, n) (n >= 1, may be traced)."""
    return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def check_order(op: str, low_name: str, low: float, high_name: str, high: float) -> None:
    if low > high:
        raise ValueError(f'op {op!r}: {low_name}={low!r} must be <= {high_name}={high!r}')
