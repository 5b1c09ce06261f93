"""The task protocol: what a task computes from a batch (loss, metrics, pictures), typed once.

The loop is generic: it calls these methods on every task, never asks a task's name and never
probes for a method. A task subclasses `Task`, overrides what it needs (the hooks default to
doing nothing), and owns its config block: `options_block` names it, `default_options()` gives
its keys and defaults (they appear in `train.config.default_config()`), `check_options()`
validates them, and `options()` turns them into the task's constructor arguments. Registering
the class in `train/tasks/__init__.py` makes it a valid `config.task`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from data import DatasetInfo
from train.optim import Schedule, build_optimizer
from train.state import TrainState
from train.steps import gradient_update

Metrics = dict[str, jax.Array]


class Task:
    """Base class of every task; see the module docstring."""

    # The config block the task owns (config.<options_block>), or None.
    options_block: ClassVar[str | None] = None
    # The train metrics the log averages.
    logged_train_metrics: ClassVar[tuple[str, ...]] = ('loss', 'accuracy', 'grad_norm')
    # Whether the task can read config.dataset.order='streams' (a state carried between steps).
    carries_streams: ClassVar[bool] = False

    def __init__(self, model: nn.Module, info: DatasetInfo, augmenter: Any = None):
        self.model = model
        self.info = info
        self.augmenter = augmenter

    # ------------------------------------------------------------------ config

    @classmethod
    def default_options(cls) -> ml_collections.ConfigDict | None:
        """The task's config block with its defaults (None: the task has none)."""
        return None

    @classmethod
    def check_options(cls, config: ml_collections.ConfigDict) -> None:
        """Raises ValueError naming a bad value of the task's block, or a config the task cannot
        run (before anything is loaded or compiled)."""

    @classmethod
    def options(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The constructor's keyword arguments from the config (default: the task's block)."""
        return config[cls.options_block].to_dict() if cls.options_block else {}

    @classmethod
    def accumulates_gradients(cls, config: ml_collections.ConfigDict) -> bool:
        """Whether the loss averages over independent examples, so a batch may run as
        micro-batches (config.grad_accum_steps)."""
        return True

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        *,
        model: nn.Module,
        info: DatasetInfo,
        augmenter: Any = None,
    ) -> Task:
        return cls(model, info, augmenter, **cls.options(config))

    # ------------------------------------------------------------------ the step

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """The model's variables, initialised (in training mode)."""
        raise NotImplementedError

    def train_loss(
        self, params: Any, model_state: Any, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Metrics]]:
        """-> (loss, (new model state, metrics)); differentiated by the generic update."""
        raise NotImplementedError

    def make_optimizer(
        self,
        config: ml_collections.ConfigDict,
        *,
        steps_per_epoch: int,
        total_steps: int,
        accumulate_steps: int = 1,
    ) -> tuple[Any, Schedule]:
        """-> (optimiser, learning-rate schedule) from config.optimizer and config.schedule."""
        return build_optimizer(
            config.optimizer,
            config.schedule,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            accumulate_steps=accumulate_steps,
        )

    def update(
        self,
        state: TrainState,
        batch: dict[str, jax.Array],
        *,
        tx: Any,
        mesh: Any,
        grad_accum_steps: int,
    ) -> tuple[TrainState, Metrics]:
        """One optimiser update -> (state, metrics with loss, grad_norm, loss_finite and
        grads_finite). Default: forward and backward of `train_loss`, accumulated over
        micro-batches, then `tx`. A task with several networks overrides it (gan)."""
        return gradient_update(self, tx, mesh, grad_accum_steps, state, batch)

    # ------------------------------------------------------------------ evaluation

    def eval_sums(self, params: Any, model_state: Any, batch: dict[str, jax.Array]) -> Metrics:
        """Per-batch sums of the eval quantities (masked examples excluded)."""
        raise NotImplementedError

    def summarize(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """Eval metrics from the sums over the whole split."""
        raise NotImplementedError

    def final_eval(self, params: Any, model_state: Any, raw_eval_source: Any) -> dict[str, Any]:
        """Metrics computed once at the end of a run, on the host (seq2seq: BLEU); merged into
        summary.json's eval. Default: none."""
        return {}

    # ------------------------------------------------------------------ pictures and samples

    def write_pictures(self, picture_dir: Path, sums: dict[str, np.ndarray]) -> list[Path]:
        """PNGs drawn from the final evaluation's sums, next to the run's metrics."""
        return []

    def write_eval_pictures(
        self, picture_dir: Path, step: int, variables: dict[str, Any]
    ) -> list[Path]:
        """Pictures drawn at every evaluation from the weights that sample (the EMA when the
        run keeps one): the generative tasks' fixed-noise grids."""
        return []

    def write_samples(self, out_dir: Path, variables: dict[str, Any]) -> list[Path]:
        """What a generative model writes at the end of a run (language_model: samples.txt)."""
        return []
