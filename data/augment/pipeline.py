"""Pipelines: a config's list of ops -> a checked plan -> a jit-able `Augmenter`.

A pipeline is a sequence of dicts, `[{'op': 'rotate', 'degrees': 30}, {'op': 'flip_lr'}, ...]`,
applied in order. `check_ops` validates it in plain Python (names, parameters, ranges, order);
`make_augmenter` turns it into an `Augmenter`, a pure function of (key, images, labels).

Plan. Per-example ops come first, mixing ops (mixup, cutmix) last: a mixing op placed before a
per-example op is an error rather than silently reordered. Each maximal run of consecutive
geometric ops becomes one warp: their matrices are multiplied (see geometry.py for the order
and coordinates) and the image is resampled once. A run shares one fill: set fill_mode /
fill_value on any op of the run (ops that leave them out follow it); two different explicit
settings in one run are an error.

Randomness. One `jax.random.split(key, 2B + 1)` gives every example a draw key and a noise
key, and the batch one key (mixing op number i draws from `fold_in(batch_key, i)`). Per
example, one PRNG call draws the uniforms of every op (each op reads its own slice; see spec.py
for why), and ops that need image-sized noise (gaussian_noise, random_erasing) draw it from
`fold_in(noise_key, i)`. Each PRNG call is a sizeable block of compiled code, so the pipeline
makes as few as it can: its compile time, not its run time, is what they cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from data.augment import affine
from data.augment.color import COLOR_OPS
from data.augment.geometry import GEOMETRIC_OPS
from data.augment.mixing import MIXING_OPS
from data.augment.occlusion import OCCLUSION_OPS
from data.augment.photometric import PHOTOMETRIC_OPS
from data.augment.randaugment import randaugment
from data.augment.spec import GEOMETRIC, MIXING, OpSpec, from_unit_float, to_unit_float, uniforms

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        *GEOMETRIC_OPS,
        *PHOTOMETRIC_OPS,
        *COLOR_OPS,
        *OCCLUSION_OPS,
        *MIXING_OPS,
        randaugment,
    )
}

_FILL_PARAMS = ('fill_mode', 'fill_value')


@dataclasses.dataclass(frozen=True)
class Step:
    """One op of a pipeline with all its parameters resolved; `index` is its list position."""

    index: int
    spec: OpSpec
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Plan:
    """per_example: stages applied to each image (a tuple of several geometric Steps is one
    warp); mixing: batch ops applied afterwards."""

    per_example: tuple[tuple[Step, ...], ...]
    mixing: tuple[Step, ...]


def plan(ops: Sequence[Mapping[str, Any]]) -> Plan:
    """Checks `ops` and groups them into stages; ValueError naming the bad op or value."""
    if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Sequence):
        raise ValueError(
            f"augmentation ops must be a list of dicts like {{'op': 'rotate'}}, got {ops!r}"
        )
    steps, explicit = [], []
    for index, raw in enumerate(ops):
        raw = _as_dict(raw, index)
        name = raw['op']
        if not isinstance(name, str) or name not in OPS:
            raise ValueError(
                f'ops[{index}]: unknown augmentation op {name!r}; valid ops: {sorted(OPS)}'
            )
        params = {k: v for k, v in raw.items() if k != 'op'}
        try:
            resolved = OPS[name].resolve(params)
        except ValueError as error:
            raise ValueError(f'ops[{index}]: {error}') from None
        steps.append(Step(index, OPS[name], resolved))
        explicit.append({k: resolved[k] for k in _FILL_PARAMS if k in params})

    mixing = [s for s in steps if s.spec.kind == MIXING]
    if mixing:
        later = [s for s in steps if s.index > mixing[0].index and s.spec.kind != MIXING]
        if later:
            raise ValueError(
                f'ops[{mixing[0].index}] {mixing[0].spec.name!r} mixes whole batches and must '
                f'come after every per-example op, but ops[{later[0].index}] '
                f'{later[0].spec.name!r} follows it; '
                'move mixup/cutmix to the end of the list'
            )

    stages: list[tuple[Step, ...]] = []
    run: list[Step] = []
    for step in steps:
        if step.spec.kind == GEOMETRIC:
            run.append(step)
            continue
        if run:
            stages.append(_share_fill(run, explicit))
            run = []
        if step.spec.kind != MIXING:
            stages.append((step,))
    if run:
        stages.append(_share_fill(run, explicit))
    return Plan(tuple(stages), tuple(mixing))


def _as_dict(raw: Any, index: int) -> dict[str, Any]:
    if hasattr(raw, 'to_dict'):  # ml_collections.ConfigDict
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"ops[{index}] must be a dict like {{'op': 'rotate', 'degrees': 30}}, got {raw!r}"
        )
    if 'op' not in raw:
        raise ValueError(
            f"ops[{index}] = {dict(raw)!r} has no 'op' key naming the op; valid ops: {sorted(OPS)}"
        )
    return dict(raw)


def _share_fill(run: list[Step], explicit: list[dict[str, Any]]) -> tuple[Step, ...]:
    """The run's one fill setting, copied into every op of the run."""
    shared = {}
    for key in _FILL_PARAMS:
        setters = [(s, explicit[s.index][key]) for s in run if key in explicit[s.index]]
        values = {value for _, value in setters}
        if len(values) > 1:
            (a, va), (b, vb) = next((x, y) for x in setters for y in setters if x[1] != y[1])
            raise ValueError(
                f'ops[{a.index}] {a.spec.name!r} and ops[{b.index}] {b.spec.name!r} are '
                'consecutive '
                f'geometric ops, resampled together in one warp, but set different {key} '
                f'({va!r} and {vb!r}); give them the same {key} (or set it on one of them)'
            )
        if setters:
            shared[key] = setters[0][1]
    return tuple(dataclasses.replace(s, params={**s.params, **shared}) for s in run)


def check_ops(ops: Sequence[Mapping[str, Any]]) -> None:
    """Validates a pipeline without compiling anything; ValueError naming the bad op/value.

    Errors name the position and op, and list the valid op names, the op's valid parameters,
    or the valid range of the value, as the case may be.
    """
    plan(ops)


class Augmenter:
    """A checked pipeline as a pure function:
    `images, label_probs = augmenter(key, images, labels)`.

    images: (B, H, W, C) float in [0, 1] (uint8 in [0, 255] also works and comes back uint8,
    rounded); labels: (B,) int in [0, num_classes). Returns images of the same shape and dtype,
    inside the same range, and label probabilities (B, num_classes) float32 whose rows sum to 1
    (one-hot unless a mixing op is in the pipeline). The same key gives the same output. Jit it,
    or call it inside a jitted step.
    """

    def __init__(self, ops: Sequence[Mapping[str, Any]], *, num_classes: int):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        self.num_classes = num_classes
        self.plan = plan(ops)
        self.mixes_labels: bool = bool(self.plan.mixing)
        # Resampling passes per image: one per run of consecutive geometric ops (randaugment adds
        # one more when its candidates include geometric ops).
        self.num_warps: int = sum(
            1 for stage in self.plan.per_example if stage[0].spec.kind == GEOMETRIC
        )
        # Each per-example op reads its own slice of one vector of uniforms per example.
        self._draw_offsets: dict[int, int] = {}
        self._total_draws = 0
        for stage in self.plan.per_example:
            for step in stage:
                self._draw_offsets[step.index] = self._total_draws
                self._total_draws += step.spec.num_draws(step.params)

    def __repr__(self) -> str:
        def show(step: Step) -> str:
            return f'{step.spec.name}({", ".join(f"{k}={v!r}" for k, v in step.params.items())})'

        stages = [' + '.join(show(s) for s in stage) for stage in self.plan.per_example]
        stages += [show(s) for s in self.plan.mixing]
        return f'Augmenter(num_classes={self.num_classes}, [{"; ".join(stages)}])'

    def __call__(
        self, key: jax.Array, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        if images.ndim != 4:
            raise ValueError(f'images must be (B, H, W, C), got shape {images.shape}')
        if labels.shape != images.shape[:1]:
            raise ValueError(f'labels must be (B,) = {images.shape[:1]}, got shape {labels.shape}')
        dtype = images.dtype
        batch = images.shape[0]
        x = to_unit_float(images)
        probs = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        # One PRNG call for all keys: per example a key for its draws and one for image-sized
        # noise, plus one for the batch (mixing ops).
        keys = jax.random.split(key, 2 * batch + 1)
        if self.plan.per_example:
            x = jax.vmap(self.augment_example)(keys[:batch], keys[batch : 2 * batch], x)
        for step in self.plan.mixing:
            draw = step.spec.sample(
                jax.random.fold_in(keys[-1], step.index), x.shape, **step.params
            )
            x, probs = step.spec.mix(x, probs, draw, **step.params)
        return from_unit_float(x, dtype), probs

    def augment_example(
        self, draw_key: jax.Array, noise_key: jax.Array, image: jax.Array
    ) -> jax.Array:
        """The per-example stages on one (H, W, C) float32 image with that example's keys."""
        u = uniforms(draw_key, self._total_draws)  # every op's uniforms in one PRNG call
        for stage in self.plan.per_example:
            if stage[0].spec.kind == GEOMETRIC:
                matrix = affine.identity_matrix()
                for step in stage:
                    draw = step.spec.sample(self._uniforms_of(step, u), image.shape, **step.params)
                    matrix = affine.compose(step.spec.matrix(draw, image.shape), matrix)
                params = stage[0].params
                image = affine.warp(image, matrix, params['fill_mode'], params['fill_value'])
            else:
                (step,) = stage
                draw = step.spec.sample(self._uniforms_of(step, u), image.shape, **step.params)
                # Ops that draw image-sized noise get their own key; unused ones compile away.
                image = step.spec.apply(
                    jax.random.fold_in(noise_key, step.index), image, draw, **step.params
                )
        return image

    def _uniforms_of(self, step: Step, u: jax.Array) -> jax.Array:
        start = self._draw_offsets[step.index]
        return u[start : start + step.spec.num_draws(step.params)]


def make_augmenter(ops: Sequence[Mapping[str, Any]], *, num_classes: int) -> Augmenter:
    """A checked `Augmenter` for `ops` (see Augmenter); ValueError on a bad pipeline."""
    return Augmenter(ops, num_classes=num_classes)


def describe_ops() -> str:
    """A plain-text table of every op: kind, parameters with defaults and valid values."""
    lines = []
    for spec in OPS.values():
        lines.append(f'{spec.name} ({spec.kind}): {spec.doc}')
        for name, param in spec.params.items():
            lines.append(f'    {name} = {param.default!r}: {param.doc}; {param.describe()}')
    return '\n'.join(lines)
