"""Named model variants: register, look up, build and size them.

A variant is a Flax module class plus default field values (e.g. 'resnet50' is
`ResNet` with `stage_sizes=(3, 4, 6, 3), block='bottleneck'`). `create` builds
one with overrides and fails early with a ValueError that lists the valid
choices, so sweeps over names and fields are safe to write by hand.

Families load lazily: the first lookup imports every module of `nets/models/`, each of which
registers its variants at import. Importing a layer or a kernel therefore never imports the zoo,
and adding a family is adding one file to that folder.
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Dataclass fields every linen Module has that are not model configuration.
_NON_CONFIG_FIELDS = frozenset({'parent', 'name'})


class Required:
    """Marker shown by `model_fields` for a field that has no default."""

    def __repr__(self) -> str:
        return 'REQUIRED'


REQUIRED = Required()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    module_cls: type[nn.Module]
    family: str
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelSpec] = {}
_FAMILIES_PACKAGE = 'nets.models'
_families_loaded = False


def _load_families() -> None:
    """Imports every model-family module once (each registers its variants)."""
    global _families_loaded
    if _families_loaded:
        return
    _families_loaded = True
    package = importlib.import_module(_FAMILIES_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f'{_FAMILIES_PACKAGE}.{module.name}')


def _module_fields(module_cls: type[nn.Module]) -> dict[str, Any]:
    """Configurable fields of a module class with their class defaults."""
    fields = {}
    for field in dataclasses.fields(module_cls):
        if field.name in _NON_CONFIG_FIELDS:
            continue
        if field.default is not dataclasses.MISSING:
            fields[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            fields[field.name] = field.default_factory()
        else:
            fields[field.name] = REQUIRED
    return fields


def _check_field_names(keys: Sequence[str], name: str, module_cls: type[nn.Module]) -> None:
    valid = _module_fields(module_cls)
    unknown = [key for key in keys if key not in valid]
    if unknown:
        raise ValueError(
            f'Unknown field(s) {unknown} for model {name!r} ({module_cls.__name__}); '
            f'valid fields: {sorted(valid)}'
        )


def _normalise_value(key: str, value: Any) -> Any:
    # Configs from YAML/JSON carry lists and dtype names; modules want hashable
    # tuples and real dtypes.
    if isinstance(value, list):
        return tuple(_normalise_value(key, v) for v in value)
    if key in ('dtype', 'param_dtype') and isinstance(value, str):
        return jnp.dtype(value)
    return value


def register(name: str, module_cls: type[nn.Module], *, family: str, **defaults: Any) -> None:
    """Register variant `name` of `module_cls` in `family` with default field values."""
    if name in _REGISTRY:
        raise ValueError(
            f'Model {name!r} is already registered (as {_REGISTRY[name].module_cls.__name__})'
        )
    if not (isinstance(module_cls, type) and issubclass(module_cls, nn.Module)):
        raise TypeError(f'module_cls must be a flax.linen.Module subclass, got {module_cls!r}')
    _check_field_names(list(defaults), name, module_cls)
    defaults = {key: _normalise_value(key, value) for key, value in defaults.items()}
    _REGISTRY[name] = ModelSpec(name, module_cls, family, defaults)


def _spec(name: str) -> ModelSpec:
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f'Unknown model {name!r}; valid models: {sorted(_REGISTRY)}')
    return _REGISTRY[name]


def create(name: str, **overrides: Any) -> nn.Module:
    """Build model `name` from its registered defaults updated with `overrides`.

    Lists become tuples and dtype strings ('bfloat16') become dtypes. Unknown
    names, unknown fields and invalid field values raise ValueError.
    """
    spec = _spec(name)
    _check_field_names(list(overrides), name, spec.module_cls)
    config = dict(spec.defaults)
    config.update({key: _normalise_value(key, value) for key, value in overrides.items()})
    missing = [
        key
        for key, value in _module_fields(spec.module_cls).items()
        if value is REQUIRED and key not in config
    ]
    if missing:
        raise ValueError(f'Model {name!r} needs a value for field(s) {missing}')
    # Module classes validate their values in __post_init__.
    return spec.module_cls(**config)


def list_models(family: str | None = None) -> list[str]:
    """Sorted registered names, optionally only those of one family."""
    _load_families()
    return sorted(n for n, spec in _REGISTRY.items() if family is None or spec.family == family)


def list_families() -> list[str]:
    """Sorted family names that have at least one registered model."""
    _load_families()
    return sorted({spec.family for spec in _REGISTRY.values()})


def model_family(name: str) -> str:
    return _spec(name).family


def model_class(name: str) -> type[nn.Module]:
    """The module class of a registered variant."""
    return _spec(name).module_cls


def model_defaults(name: str) -> dict[str, Any]:
    """The field values the variant sets (not the class defaults it leaves alone)."""
    return dict(_spec(name).defaults)


def model_fields(name: str) -> dict[str, Any]:
    """Every configurable field of the variant with its effective default."""
    spec = _spec(name)
    fields = _module_fields(spec.module_cls)
    fields.update(spec.defaults)
    return fields


def _abstract_variables(
    model: nn.Module,
    input_shape: Sequence[int] | Sequence[Sequence[int]],
    input_dtype: Any = jnp.float32,
) -> dict[str, Any]:
    # One shape, or one per positional input (a Transformer takes inputs and targets).
    shapes = [input_shape] if isinstance(input_shape[0], int) else list(input_shape)
    inputs = [jax.ShapeDtypeStruct(tuple(shape), input_dtype) for shape in shapes]

    def init(*xs: jax.Array) -> Any:
        key = jax.random.key(0)
        return model.init({'params': key, 'dropout': key}, *xs)

    return jax.eval_shape(init, *inputs)


def count_params(
    model: nn.Module,
    input_shape: Sequence[int] | Sequence[Sequence[int]],
    *,
    batch_stats: bool = False,
    input_dtype: Any = jnp.float32,
) -> int:
    """Number of parameters of `model` for inputs of `input_shape` (batch dim included).

    `input_shape` is one shape, or a list of shapes for models with several
    inputs (token models take `input_dtype=jnp.int32`). Uses `jax.eval_shape`,
    so nothing is allocated; cheap even for ViT-H. With `batch_stats=True` the
    BatchNorm running statistics are added.
    """
    variables = _abstract_variables(model, input_shape, input_dtype)
    collections = ['params'] + (['batch_stats'] if batch_stats else [])
    return sum(
        int(np.prod(leaf.shape))
        for col in collections
        if col in variables
        for leaf in jax.tree_util.tree_leaves(variables[col])
    )
