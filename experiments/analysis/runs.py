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
from train.evaluate import load_trained


@dataclasses.dataclass
class TrainedRun:
    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    model: nn.Module
    task: Any
    variables: dict[str, Any]  # {'params': ..., **model_state}
    step: int


def load_run(workdir: str | Path, step: int | None = None) -> TrainedRun:
    """Reads `<workdir>/config.json` and the newest (or the given) checkpoint, rebuilt as
    `train.evaluate.load_trained` does (with the run's task options: a diffusion run's noise
    schedule, a GAN's loss, ...)."""
    run = load_trained(workdir, step=step)
    state = run.state
    variables = {'params': state['params'], **(state.get('model_state') or {})}
    return TrainedRun(run.config, run.info, run.task.model, run.task, variables, int(state['step']))
