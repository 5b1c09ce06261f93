"""Fine-tuning: a new run's parameters taken from another run or a converted model.

`config.init_from` names a training workdir, its checkpoints folder, or a folder written by
`python -m nets.convert`. After the loop has initialised the new state, and only when it has
no checkpoint of its own to resume (resuming always wins, so a restarted fine-tuning run
continues from its own steps), `initialise_from` copies in every parameter and batch
statistic whose path and shape the new model shares. What does not fit keeps its fresh
initialisation and is named in the report: a head for another class count, a layer the
checkpoint lacks. A learned ViT position table made for another image size is resampled
instead (bilinear on the patch grid, the class-token row kept). The step, the optimiser state
and the schedule stay those of the new run: fine-tuning starts a new schedule.

`converted_model_config(path)` gives the `config.model` block a converted folder was made
for, so a config can build the same model (`config.model = converted_model_config(DIR)`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from nets.convert.core import METADATA_FILE
from nets.layers.position import resize_grid_embedding
from train.checkpointing import find_checkpoints, load_checkpoint
from train.config import ConfigError, model_config
from train.state import TrainState

POSITION_TABLES = ('pos_embedding',)


def checkpoint_folder(path: str | Path) -> Path:
    """The folder of numbered checkpoint steps that `config.init_from` names."""
    try:
        return find_checkpoints(path)
    except FileNotFoundError as error:
        raise ConfigError(f'config.init_from: {error}') from None


def converted_model_config(path: str | Path) -> ml_collections.ConfigDict:
    """The `config.model` block of the model a converted folder holds."""
    metadata = Path(path) / METADATA_FILE
    if not metadata.is_file():
        raise ConfigError(f'{str(path)!r} is not a converted folder (no {METADATA_FILE})')
    described = json.loads(metadata.read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in described['fields'].items()}
    return model_config(described['model'], **fields)


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf for path, leaf in leaves}


def _resample_positions(
    saved: np.ndarray, shape: tuple[int, ...], prefix: int
) -> np.ndarray | None:
    """A (1, prefix + g*g, D) table resampled to `shape`'s grid; None when either is no grid."""
    if len(shape) != 3 or saved.ndim != 3 or saved.shape[2] != shape[2]:
        return None
    old, new = math.isqrt(saved.shape[1] - prefix), math.isqrt(shape[1] - prefix)
    if old * old != saved.shape[1] - prefix or new * new != shape[1] - prefix:
        return None
    return np.asarray(resize_grid_embedding(saved, (new, new), num_prefix_tokens=prefix))


def merge_tree(
    fresh: Any, saved: Any, what: str, prefix_tokens: int = 0
) -> tuple[Any, list[str], int]:
    """`fresh` with every leaf that `saved` has at the same path and shape replaced by the saved
    one (position tables resampled); the report lines and the number of leaves loaded."""
    saved_flat = {path: np.asarray(leaf) for path, leaf in _flat(saved or {}).items()}
    lines, loaded = [], 0

    def pick(path_keys, leaf):
        nonlocal loaded
        path = '/'.join(str(getattr(k, 'key', k)) for k in path_keys)
        shape = tuple(leaf.shape)
        if path not in saved_flat:
            lines.append(f'{what} {path} {shape}: not in the checkpoint, initialised afresh')
            return leaf
        value = saved_flat.pop(path)
        if value.shape != shape and path.split('/')[-1] in POSITION_TABLES:
            resized = _resample_positions(value, shape, prefix_tokens)
            if resized is not None:
                lines.append(f'{what} {path}: resampled (bilinear) from {value.shape} to {shape}')
                value = resized
        if value.shape != shape:
            lines.append(
                f'{what} {path}: {value.shape} in the checkpoint, {shape} in the model; '
                'initialised afresh'
            )
            return leaf
        loaded += 1
        return jax.device_put(value.astype(leaf.dtype), leaf.sharding)

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    lines += [f'{what} {path}: in the checkpoint only, unused' for path in sorted(saved_flat)]
    return merged, lines, loaded


def initialise_from(path: str | Path, state: TrainState) -> tuple[TrainState, list[str]]:
    """`state` with the parameters and model state (batch statistics) of `path` wherever they fit
    (see the module docstring); step, optimiser state and key stay `state`'s. Returns the new
    state and the report lines (one summary line, then every leaf not simply copied)."""
    folder = checkpoint_folder(path)
    saved = load_checkpoint(folder)
    prefix = int('cls' in (state.params or {}))
    params, param_lines, loaded = merge_tree(state.params, saved['params'], 'param', prefix)
    model_state, state_lines, loaded_state = merge_tree(
        state.model_state, saved.get('model_state') or {}, 'model state'
    )
    total = len(jax.tree.leaves(state.params))
    summary = (
        f'initialised from {folder} (step {int(saved["step"])}): {loaded} of {total} parameter '
        f'arrays and {loaded_state} model-state arrays loaded; optimiser and schedule fresh'
    )
    ema = params if state.ema_params is not None else None
    new_state = state.replace(params=params, model_state=model_state, ema_params=ema)
    return new_state, [summary, *param_lines, *state_lines]
