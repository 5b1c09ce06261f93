"""Per-parameter optimiser rules: learning-rate multipliers and exclusions, by regex on paths.

A parameter's path is the '/'-joined keys of the Flax parameter tree
('stage1_block0/conv2/conv/offset/kernel'); a rule's regex must match the whole path
(re.fullmatch), as in config.param_sharding. Three keys of config.optimizer hold rules:

    lr_multipliers        ((regex, factor), ...): a parameter's update is multiplied by the
                          factor (> 0) of the first rule whose regex matches its path; other
                          parameters keep the base learning rate. It scales the whole update,
                          decoupled weight decay included, like the lr of a PyTorch param group.
                          E.g. (('.*/offset/.*', 0.1),): deformable convs' offsets at 0.1x.
    weight_decay_exclude  (regex, ...): parameters that weight decay (coupled or decoupled) and
                          L1 skip, on top of the biases and norm scales (ndim <= 1) they always
                          skip, e.g. ('.*embedding',).
    agc_exclude           (regex, ...): parameters that adaptive gradient clipping skips;
                          default ('head/.*',), the final classifier, as in the NFNet paper.

Pairs rather than a {regex: factor} mapping because ConfigDict field names cannot hold dots.
`check_param_rules` checks the values without the parameters (types, regexes compile, factors
> 0, exclusions only where the regulariser is on); the masks and labels check them against the
parameters when the optimiser is initialised: a rule that decides no parameter is an error
naming the rule and the closest paths, so a misspelt rule never silently does nothing.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

LR_MULTIPLIERS = 'lr_multipliers'
WEIGHT_DECAY_EXCLUDE = 'weight_decay_exclude'
AGC_EXCLUDE = 'agc_exclude'
DEFAULT_AGC_EXCLUDE = ('head/.*',)
# Each rule key of config.optimizer -> its value when the key is absent or None.
RULE_DEFAULTS = {LR_MULTIPLIERS: (), WEIGHT_DECAY_EXCLUDE: (), AGC_EXCLUDE: DEFAULT_AGC_EXCLUDE}

Mask = Callable[[Any], Any]


def _where(key: str) -> str:
    return f'config.optimizer.{key}'


def _raw(opt: ml_collections.ConfigDict, key: str) -> Any:
    value = opt.get(key)
    return RULE_DEFAULTS[key] if value is None else value


def _compile(where: str, pattern: Any) -> re.Pattern:
    if not isinstance(pattern, str):
        raise ValueError(f'{where}: each regex must be a string, got {pattern!r}')
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f'{where}: {pattern!r} is not a regular expression ({error})') from None


def _sequence(where: str, value: Any, example: str) -> Sequence[Any]:
    # A bare string is a Sequence too: ('.*bias') without its comma is the usual slip.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f'{where} must be a tuple like {example}, got {value!r}')
    return value


def lr_multiplier_rules(opt: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
    """config.optimizer.lr_multipliers checked: (regex, factor) pairs, factors finite and > 0."""
    where = _where(LR_MULTIPLIERS)
    rules = []
    for rule in _sequence(where, _raw(opt, LR_MULTIPLIERS), "(('.*/offset/.*', 0.1),)"):
        if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2:
            raise ValueError(
                f"{where} must hold (regex, factor) pairs like ('.*/offset/.*', 0.1), got {rule!r}"
            )
        pattern, factor = rule
        _compile(where, pattern)
        if (
            not isinstance(factor, numbers.Real)
            or isinstance(factor, bool)
            or not math.isfinite(factor)
            or factor <= 0
        ):
            raise ValueError(
                f'{where}: the factor of {pattern!r} must be a finite number > 0, got {factor!r}'
            )
        rules.append((pattern, float(factor)))
    return tuple(rules)


def exclusion_rules(opt: ml_collections.ConfigDict, key: str) -> tuple[str, ...]:
    """config.optimizer.<key> (weight_decay_exclude or agc_exclude) checked: a tuple of regexes."""
    where = _where(key)
    patterns = tuple(_sequence(where, _raw(opt, key), "('.*bias', '.*scale')"))
    for pattern in patterns:
        _compile(where, pattern)
    return patterns


def check_param_rules(opt: ml_collections.ConfigDict) -> None:
    """Checks the rule keys of config.optimizer without the parameters; ValueError naming the
    bad value. Exclusions for a regulariser that is off would do nothing and are an error."""
    lr_multiplier_rules(opt)
    decay_exclude = exclusion_rules(opt, WEIGHT_DECAY_EXCLUDE)
    agc_exclude = exclusion_rules(opt, AGC_EXCLUDE)
    if decay_exclude and opt.weight_decay == 0 and opt.l1 == 0:
        raise ValueError(
            f'{_where(WEIGHT_DECAY_EXCLUDE)}={decay_exclude!r} applies to weight decay and L1, '
            'but config.optimizer.weight_decay and config.optimizer.l1 are both 0'
        )
    if agc_exclude != DEFAULT_AGC_EXCLUDE and opt.agc_clip == 0:
        raise ValueError(
            f'{_where(AGC_EXCLUDE)}={agc_exclude!r} applies to adaptive gradient clipping, '
            'but config.optimizer.agc_clip is 0 (off)'
        )


def param_path(key_path: Sequence[Any]) -> str:
    """'/'-joined keys of a tree path: 'Dense_0/kernel'."""
    parts = []
    for key in key_path:
        for attribute in ('key', 'name', 'idx'):  # DictKey, GetAttrKey, SequenceKey
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
    return '/'.join(parts)


def _paths(params: Any) -> tuple[list[str], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [param_path(key_path) for key_path, _ in flat], treedef


def _unmatched_error(where: str, pattern: str, paths: list[str], shadowed: bool) -> ValueError:
    closest = difflib.get_close_matches(pattern, paths, n=5, cutoff=0.0)
    what = (
        'decides no parameter: every parameter it matches is taken by an earlier rule'
        if shadowed
        else 'matches no parameter path'
    )
    return ValueError(
        f'{where} rule {pattern!r} {what}; closest of the {len(paths)} paths: {closest}'
    )


def first_match(params: Any, patterns: Sequence[str], where: str) -> Any:
    """A tree like `params` holding, per parameter, the index of the first pattern that matches
    its path in full (-1 for none). ValueError when a pattern decides no parameter."""
    paths, treedef = _paths(params)
    compiled = [_compile(where, pattern) for pattern in patterns]
    matches = [[bool(regex.fullmatch(path)) for regex in compiled] for path in paths]
    chosen = [row.index(True) if any(row) else -1 for row in matches]
    for i, pattern in enumerate(patterns):
        if i not in chosen:
            shadowed = any(row[i] for row in matches)
            raise _unmatched_error(where, pattern, paths, shadowed)
    return jax.tree_util.tree_unflatten(treedef, chosen)


def exclusion_mask(key: str, patterns: Sequence[str], base: Mask | None = None) -> Mask:
    """A mask function for optax.masked: True for parameters that `base` selects (all when
    None) and no pattern matches. Raises ValueError, when called, for a pattern that matches no
    parameter."""

    def mask(params: Any) -> Any:
        matched = first_match(params, patterns, _where(key))
        selected = jax.tree.map(lambda _: True, params) if base is None else base(params)
        return jax.tree.map(lambda keep, index: bool(keep) and index < 0, selected, matched)

    return mask


def multiplier_labels(rules: Sequence[tuple[str, float]]) -> tuple[dict[str, float], Mask]:
    """({label: factor}, labelling function) for optax.partition: the label of a parameter names
    the rule that decides it ('rule0', 'rule1', ...) or 'base' (factor 1)."""
    factors = {f'rule{i}': factor for i, (_, factor) in enumerate(rules)}
    factors['base'] = 1.0
    patterns = [pattern for pattern, _ in rules]

    def labels(params: Any) -> Any:
        matched = first_match(params, patterns, _where(LR_MULTIPLIERS))
        return jax.tree.map(lambda index: 'base' if index < 0 else f'rule{index}', matched)

    return factors, labels
