"""Evaluates a trained run's checkpoint on a split, as the training loop evaluates it.

    python -m train.evaluate --workdir=RUN [--split=test] [--init_from=DIR] [--step=N]

The run's config (RUN/config.json), data set, model and task are rebuilt exactly as the loop
builds them; the newest checkpoint (or `--step`) of RUN, or of `--init_from` (another run's
workdir or its checkpoints folder: weights evaluated under RUN's config), is evaluated with the
task's eval step on a mesh over every device, the parameters' moving average beside the raw
ones when the run keeps one (metrics prefixed 'ema_'), then the task's final metrics (BLEU for
the sequence tasks). Writes RUN/eval_<split>.json and prints its metrics as one JSON line.
Bad input (no such run, split or checkpoint) prints one line `error: ...` and exits 64.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

import data
from data import jpeg
from nets.kernels import switch
from train import cli, host_cpu
from train import runtime as runtime_lib
from train.checkpointing import CheckpointMismatch, find_checkpoints, load_checkpoint
from train.config import ConfigError
from train.loop import create_model, evaluate_state
from train.metrics_writer import quiet_library_logs
from train.sharding import check_batch_divides, make_mesh, replicated
from train.state import TrainState
from train.steps import make_eval_step
from train.tasks import Task, task_from_config
from train.workdir import read_run_config


@dataclasses.dataclass
class LoadedRun:
    """A run's config, data set facts and task (with its model), and one saved train state."""

    config: ml_collections.ConfigDict
    info: data.DatasetInfo
    task: Task
    state: dict[str, Any]  # load_checkpoint's nested dicts: step, params, model_state, ...
    checkpoint_dir: Path

    @property
    def step(self) -> int:
        return int(self.state['step'])

    @property
    def variables(self) -> dict[str, Any]:
        """{'params': ..., **model_state}: what `task.model.apply` takes."""
        return {'params': self.state['params'], **(self.state.get('model_state') or {})}


def _check_fits(task: Task, state: dict[str, Any], checkpoint_dir: Path) -> None:
    """The saved parameters have the tree and shapes the run's model initialises."""
    expected = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))['params']
    shapes = jax.tree.map(lambda x: tuple(x.shape), expected)
    found = jax.tree.map(lambda x: tuple(x.shape), state['params'])
    if shapes != found:
        raise CheckpointMismatch(
            f"the parameters in {checkpoint_dir} do not fit the run's model "
            f'{task.model.__class__.__name__}: shapes {found} != {shapes}'
        )


def load_trained(
    workdir: str | Path, init_from: str | Path | None = None, step: int | None = None
) -> LoadedRun:
    """Rebuilds the run in `workdir` and loads the newest (or `step`'s) checkpoint of
    `init_from` (default: the run itself)."""
    config = read_run_config(workdir)
    info = data.dataset_info(
        config.dataset.name, config.dataset.data_dir or None, image_size=config.dataset.image_size
    )
    model = create_model(config, info)
    task = task_from_config(config, model=model, info=info)
    directory = find_checkpoints(init_from or workdir)
    if step is not None and not (directory / str(step)).is_dir():
        saved = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        raise FileNotFoundError(f'no checkpoint of step {step} in {directory}; saved: {saved}')
    state = load_checkpoint(directory, step)
    _check_fits(task, state, directory)
    return LoadedRun(config, info, task, state, directory)


def evaluate_split(run: LoadedRun, split: str, batch_size: int = 0) -> dict[str, Any]:
    """The task's metrics of the run's state on `split`, evaluated in batches of `batch_size`
    (0: the run's eval_batch_size) with the loop's eval step and helper."""
    config = run.config
    data_dir = config.dataset.data_dir or None
    batch_size = batch_size or config.eval_batch_size
    mesh = make_mesh()
    try:
        check_batch_divides(batch_size, mesh, 'eval batch size (--batch_size)')
        raw_source = data.load_source(
            config.dataset.name,
            split,
            data_dir,
            image_options=jpeg.options_from_config(config.dataset),
        )
    except ValueError as error:  # a batch the devices do not divide, or an unknown split
        raise ConfigError(str(error)) from error
    saved = run.state
    state = jax.device_put(
        TrainState(
            step=jnp.asarray(saved['step']),
            params=saved['params'],
            model_state=saved.get('model_state') or {},
            opt_state=None,  # evaluation reads parameters and model state only
            rng=jnp.asarray(saved['rng']),
        ),
        replicated(mesh),
    )
    eval_step = make_eval_step(run.task, mesh)
    source = data.maybe_in_memory(raw_source)
    ema_params = saved.get('ema_params')
    if ema_params is not None:  # as the loop does: the average beside the raw weights
        ema_params = jax.device_put(ema_params, replicated(mesh))
    metrics, _ = evaluate_state(
        eval_step, state, run.task, source, batch_size, mesh, ema_params=ema_params
    )
    final = run.task.final_eval(saved['params'], saved.get('model_state') or {}, raw_source)
    return {**metrics, **final}


def result_path(workdir: str | Path, split: str) -> Path:
    """RUN/eval_<split>.json, the split's slicing characters ('test[:50%]') made file-safe."""
    return Path(workdir) / f'eval_{re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")}.json'


def evaluate_run(
    workdir: str | Path,
    split: str | None = None,
    *,
    init_from: str | Path | None = None,
    step: int | None = None,
    batch_size: int = 0,
    runtime: runtime_lib.Runtime | None = None,
) -> dict[str, Any]:
    """Evaluates the run in `workdir` (see the module docstring) on `split` (default: the run's
    eval split), writes RUN/eval_<split>.json and returns what it holds.

    `runtime`: the hardware choices the caller applied before JAX started (the command line);
    when None they are resolved here, and the kernels set for this evaluation, as
    `train.loop.train_and_evaluate` does."""
    run = load_trained(workdir, init_from, step)
    split = split or run.config.dataset.eval_split
    if runtime is None:
        host = dataclasses.replace(
            host_cpu.host_facts(platform=jax.default_backend()), processes=jax.process_count()
        )
        runtime = runtime_lib.apply(runtime_lib.resolve(run.config, host), starting_process=False)
    with switch.use(**runtime_lib.kernels(runtime)):
        metrics = evaluate_split(run, split, batch_size)
    record = {
        'split': split,
        'step': run.step,
        'checkpoints': str(run.checkpoint_dir),
        'model': run.config.model.name,
        'dataset': run.config.dataset.name,
        'eval': metrics,
    }
    if jax.process_index() == 0:
        result_path(workdir, split).write_text(json.dumps(record, indent=2))
    return record


# Every program's user errors, plus weights that do not fit the run's model.
USER_ERRORS = (*cli.USER_ERRORS, CheckpointMismatch)


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program: other
    programs (train.main, train.export) import it and define --workdir themselves."""
    flags.DEFINE_string('workdir', None, 'A training workdir (with config.json).')
    flags.DEFINE_string('split', None, "Split to evaluate (default: the run's eval split).")
    flags.DEFINE_string(
        'init_from', None, "Evaluate this workdir's (or checkpoints folder's) weights instead."
    )
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
    flags.DEFINE_integer(
        'batch_size', 0, "Eval batch size (0: the run's eval_batch_size).", lower_bound=0
    )
    flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    options = flags.FLAGS
    config = read_run_config(options.workdir)
    # The run's hardware choices (CPU device split, kernels), applied before JAX starts.
    runtime = runtime_lib.apply(
        runtime_lib.resolve(config, host_cpu.host_facts()), starting_process=True
    )
    quiet_library_logs()
    record = evaluate_run(
        options.workdir,
        options.split,
        init_from=options.init_from,
        step=options.step,
        batch_size=options.batch_size,
        runtime=runtime,
    )
    if jax.process_index() == 0:
        print(json.dumps({key: record[key] for key in ('split', 'step', 'eval')}))
        print(f'written: {result_path(options.workdir, record["split"])}')
    return cli.EXIT_OK


if __name__ == '__main__':
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
