"""A finished (or interrupted) run loaded back for analysis: its config, data set, model,
task and trained variables. Used by the scripts that look inside trained models (attention
pictures, feature extractors), so each of them reads a workdir the same way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

import data
from train.checkpointing import load_checkpoint
from train.loop import create_model, read_run_config
from train.tasks import task_from_config


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
    config = read_run_config(workdir)
    info = data.dataset_info(config.dataset.name, config.dataset.data_dir or None)
    model = create_model(config, info)
    # With the run's task options: a diffusion run's noise schedule, a GAN's loss, ...
    task = task_from_config(config, model=model, info=info)
    state = load_checkpoint(workdir / 'checkpoints', step)
    variables = {'params': state['params'], **state.get('model_state', {})}
    return TrainedRun(config, info, model, task, variables, int(state['step']))
