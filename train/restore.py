"""A finished (or interrupted) run loaded back for analysis: its config, data set, model,
task and trained variables. Used by the scripts that look inside trained models (attention
pictures, feature extractors), so each of them reads a workdir the same way."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

import data
from train.checkpointing import load_checkpoint
from train.loop import _task_options, create_model
from train.tasks import create_task


@dataclasses.dataclass
class TrainedRun:
    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    model: nn.Module
    task: Any
    variables: dict[str, Any]  # {'params': ..., **model_state}
    step: int


def load_run(workdir: str | Path, step: int | None = None) -> TrainedRun:
    """Reads `<workdir>/config.json` and the newest (or the given) checkpoint."""
    workdir = Path(workdir)
    config_file = workdir / 'config.json'
    if not config_file.exists():
        raise FileNotFoundError(f'{config_file} not found: {str(workdir)!r} is not a training '
                                'workdir (train one with `python -m train.main --config=... '
                                '--workdir=...`)')
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    info = data.dataset_info(config.dataset.name, config.dataset.data_dir or None)
    model = create_model(config, info)
    # With the run's task options: a diffusion run's noise schedule, a GAN's loss, ...
    task = create_task(config.task, model=model, info=info, **_task_options(config))
    state = load_checkpoint(workdir / 'checkpoints', step)
    variables = {'params': state['params'], **state.get('model_state', {})}
    return TrainedRun(config, info, model, task, variables, int(state['step']))
