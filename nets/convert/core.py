"""What every conversion shares: the result, its check against the model, and its folder.

A family mapping reads a checkpoint's `Tensors` and returns a `Converted`: the registered model
name, the field values the tensors fix (widths, depths, class count) or the source implies
(normalisation epsilons, activation forms), and the Flax `params` and `model_state`. `check_fits`
builds the model with those fields and compares every parameter path and shape with what the
model initialises (`jax.eval_shape`, nothing allocated), so a converted folder always loads.

A converted folder is what `train.init_from` and `train.evaluate --init_from` read:

    DIR/converted.json              model name, fields, input shape and dtype, notes, source
                                    and file
    DIR/checkpoints/0/state/        orbax: {'step': 0, 'params': ..., 'model_state': ...}

the layout of a training run's checkpoints, so one loader serves runs and conversions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import nets

METADATA_FILE = 'converted.json'
CHECKPOINTS = 'checkpoints'


@dataclasses.dataclass
class Converted:
    """A converted model: `nets.create(model, **fields)` applied to `params` (+ `model_state`)."""

    model: str
    fields: dict[str, Any]
    params: dict[str, Any]
    model_state: dict[str, Any]
    input_shape: tuple[int, ...]  # one example, batch dimension excluded
    notes: list[str] = dataclasses.field(default_factory=list)
    input_dtype: str = 'float32'  # 'int32' for token ids

    def create(self) -> Any:
        return nets.create(self.model, **self.fields)

    @property
    def variables(self) -> dict[str, Any]:
        return {'params': self.params, **self.model_state}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        '/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(leaf))
        for path, leaf in flat
    }


def check_fits(converted: Converted) -> None:
    """Raise a ValueError naming every path whose presence or shape differs from the model's."""
    model = converted.create()
    abstract = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, *converted.input_shape), jnp.dtype(converted.input_dtype)),
    )
    expected = _shapes({k: v for k, v in abstract.items() if k != 'intermediates'})
    found = _shapes(converted.variables)
    problems = [f'{p}: missing' for p in sorted(set(expected) - set(found))]
    problems += [f'{p}: not in the model' for p in sorted(set(found) - set(expected))]
    problems += [
        f'{p}: {found[p]} != {expected[p]}'
        for p in sorted(set(found) & set(expected))
        if found[p] != expected[p]
    ]
    if problems:
        raise ValueError(
            f'the converted weights do not fit {converted.model} with fields '
            f'{converted.fields}: {problems[:6]}'
        )


def json_value(value: Any) -> Any:
    """Tuples as lists: field values as config files write them."""
    if isinstance(value, tuple):
        return [json_value(v) for v in value]
    return value


def save(converted: Converted, out: str | Path, description: dict[str, Any]) -> Path:
    """Writes the converted folder `out` (see the module docstring); refuses a non-empty one."""
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'output folder {str(out)!r} is not empty; give a new folder')
    out.mkdir(parents=True, exist_ok=True)
    state = {
        'step': np.zeros((), np.int32),
        'params': converted.params,
        'model_state': converted.model_state,
    }
    with ocp.CheckpointManager(
        out / CHECKPOINTS, item_handlers={'state': ocp.StandardCheckpointHandler()}
    ) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    metadata = {
        'model': converted.model,
        'fields': {k: json_value(v) for k, v in converted.fields.items()},
        'input_shape': list(converted.input_shape),
        'input_dtype': converted.input_dtype,
        'notes': converted.notes,
        **description,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + '\n')
    return out


def read_metadata(folder: str | Path) -> dict[str, Any] | None:
    """converted.json of a converted folder; None for any other folder."""
    path = Path(folder) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else None
