"""The one training loop, readable top to bottom in phases:

1. check the config and the workdir (before anything is loaded or compiled);
2. data: the data set's facts, its train and eval sources, the train iterator;
3. model and task;
4. mesh, optimiser, initial state;
5. resume from the newest checkpoint (state + data iterator position);
6. compile the steps;
7. train: step, log, evaluate, checkpoint, stop early / on SIGTERM / on a non-finite loss;
8. finish: final evaluation and checkpoint, pictures, summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

import data
import nets
from data import augment, jpeg
from nets.kernels import switch
from train import config as config_lib
from train import host_cpu, pictures
from train import runtime as runtime_lib
from train.checkpointing import Checkpointer, CheckpointMismatch
from train.early_stopping import EarlyStopping
from train.init_from import initialise_from
from train.metrics_writer import MetricWriter
from train.optim import plateau_scale
from train.profiling import StepProfiler
from train.progress import NonFiniteError, NonFiniteWatch, Preemption, TrainWindow, finite_or_none
from train.sharding import check_batch_divides, fetch, host_to_global, make_mesh
from train.state import TrainState
from train.steps import init_train_state, make_eval_step, make_train_step
from train.storage import Path, as_path
from train.tasks import Task, task_from_config
from train.workdir import check_workdir, mismatch_message, write_run_config


def check_model_fits(
    config: ml_collections.ConfigDict, task: Any, example_shape: tuple[int, ...]
) -> None:
    """Traces the model's initialisation on the data's shapes (no compilation, no memory), so
    an impossible shape — an image a patch size does not divide, a stack of poolings that
    would shrink the feature map below 1x1 — fails with the model's name, the input shape and
    the reason before anything is compiled."""
    try:
        jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))
    except (ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise config_lib.ConfigError(
            f'{reason} (model {config.model.name!r} on examples of shape '
            f'{tuple(example_shape)} from data set {config.dataset.name!r})'
        ) from error


def create_model(config: ml_collections.ConfigDict, info: data.DatasetInfo):
    """The configured model, sized by the data set (number of classes, vocabularies) wherever
    the config leaves a size unset or at -1."""
    kwargs = config_lib.model_kwargs(config)
    fields = nets.model_fields(config.model.name)
    vocab = info.vocab_sizes
    from_data = {'num_classes': info.num_classes}
    if vocab:
        from_data.update(
            source_vocab_size=vocab.get('inputs', info.num_classes),
            target_vocab_size=vocab.get('targets', info.num_classes),
            # One table for both languages (a shared-vocabulary Transformer).
            vocab_size=max(vocab.values()),
        )
    for field, size in from_data.items():
        if field in fields and kwargs.get(field, -1) == -1:
            kwargs[field] = size
    return nets.create(config.model.name, **kwargs, dtype=jax.numpy.dtype(config.dtype))


def evaluate_state(
    eval_step, state: TrainState, task, eval_source, batch_size: int, mesh, ema_params: Any = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The task's metrics of `state` on `eval_source` (and the summed quantities they come
    from); with `ema_params` the moving average is evaluated beside the raw weights, its
    metrics prefixed 'ema_'. The loop and `train.evaluate` both evaluate through this."""

    def run(params_state: TrainState):
        totals = None
        for host_batch in data.eval_batches(eval_source, global_batch_size=batch_size):
            sums = eval_step(params_state, host_to_global(host_batch, mesh))
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
        totals = fetch(totals)
        return task.summarize(totals), totals

    metrics, sums = run(state)
    if ema_params is not None:
        ema_metrics, _ = run(state.replace(params=ema_params))
        metrics.update({f'ema_{key}': value for key, value in ema_metrics.items()})
    return metrics, sums


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    runtime: runtime_lib.Runtime | None = None,
) -> dict[str, Any]:
    """Trains and evaluates as `config` says, writing everything under `workdir`; resumes from
    the newest checkpoint there. Returns the run's summary (also written as summary.json).

    `runtime`: the hardware choices `train.main` resolved and applied before JAX started; when
    called from Python instead, they are resolved here and what can still be applied in this
    process is (kernels, micro-batches), the rest recorded as not applied."""
    config_lib.validate(config)
    if runtime is None:
        host = dataclasses.replace(
            host_cpu.host_facts(platform=jax.default_backend()), processes=jax.process_count()
        )
        runtime = runtime_lib.apply(runtime_lib.resolve(config, host), starting_process=False)
    with switch.use(**runtime_lib.kernels(runtime)):
        return _train_and_evaluate(config, as_path(workdir), runtime)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: Path, runtime: runtime_lib.Runtime
) -> dict[str, Any]:
    # 1. Check.
    check_workdir(workdir)
    is_primary = jax.process_index() == 0
    started = time.time()
    runtime_record = runtime_lib.record(runtime)
    accumulate = runtime.grad_accum_steps

    # 2. Data.
    data_dir = config.dataset.data_dir or None
    image_options = jpeg.options_from_config(config.dataset)  # encoded, variable-size images
    info = data.dataset_info(config.dataset.name, data_dir, image_size=config.dataset.image_size)
    train_source = data.load_source(
        config.dataset.name, config.dataset.train_split, data_dir, image_options=image_options
    )
    # Evaluated many times: decode it into memory once when it is small.
    eval_source = data.maybe_in_memory(
        data.load_source(
            config.dataset.name, config.dataset.eval_split, data_dir, image_options=image_options
        )
    )

    # 3. Model and task.
    model = create_model(config, info)
    augmenter = None
    if config.augment:
        augmenter = augment.make_augmenter(config.augment, num_classes=info.num_classes)
    task = task_from_config(config, model=model, info=info, augmenter=augmenter)

    # 4. Mesh, optimiser, initial state.
    mesh = make_mesh()
    check_batch_divides(config.batch_size, mesh)
    if accumulate > 1:
        check_batch_divides(
            config.batch_size // accumulate, mesh, f'micro-batch batch_size/{accumulate}'
        )
    check_batch_divides(config.eval_batch_size, mesh, 'eval_batch_size')
    steps_per_epoch = data.steps_per_epoch(len(train_source), config.batch_size)
    total_steps = (
        config.num_steps
        if config.num_steps > 0
        else max(1, math.ceil(config.num_epochs * steps_per_epoch))
    )
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    checkpoint_every = (
        config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else steps_per_epoch
    )
    tx, schedule = task.make_optimizer(
        config,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        accumulate_steps=accumulate,
    )
    check_model_fits(config, task, info.example_shape)
    state = init_train_state(
        task,
        tx,
        config.seed,
        mesh,
        ema=config.ema_decay > 0,
        param_sharding=config.param_sharding,
        fsdp_min_size=config.fsdp_min_size,
    )
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

    # 5. Resume.
    if config.dataset.order == 'streams':  # truncated BPTT: rows continue across steps
        loader = data.stream_loader(
            train_source, global_batch_size=config.batch_size, seed=config.seed
        )
    else:
        loader = data.train_loader(
            train_source,
            global_batch_size=config.batch_size,
            seed=config.seed,
            worker_count=config.dataset.worker_count,
        )
    data_iterator = iter(loader)
    checkpointer = Checkpointer(workdir / 'checkpoints', keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(state, data_iterator)
    except CheckpointMismatch as error:
        checkpointer.close()
        raise config_lib.ConfigError(mismatch_message(workdir, config, error)) from error
    window = TrainWindow()
    if restored is None and config.init_from:  # fine-tuning: a fresh run from given weights
        state, report = initialise_from(config.init_from, state)
        for line in report:
            logging.info('init_from: %s', line)
    if restored is not None:
        state, window = restored[0], TrainWindow.from_json(restored[1])
    start_step = int(fetch(state.step))
    writer = MetricWriter(workdir, enabled=is_primary)
    writer.truncate_after(start_step)
    if is_primary:
        write_run_config(workdir, config, runtime_record)
    stopper = None
    if config.early_stopping.metric:
        stopper = EarlyStopping(
            config.early_stopping.metric,
            config.early_stopping.mode,
            config.early_stopping.patience,
            config.early_stopping.min_delta,
        )
        if restored is not None and writer.metrics_file.exists():
            for record in pictures.read_metrics(writer.metrics_file).get('eval', []):
                stopper.update(record['step'], record)
    logging.info(
        '%s: %s (%s parameters) on %s, %d devices, %d process(es); steps %d..%d, %d per epoch',
        config.dataset.name,
        config.model.name,
        f'{num_params:,}',
        jax.devices()[0].platform,
        jax.device_count(),
        jax.process_count(),
        start_step,
        total_steps,
        steps_per_epoch,
    )

    # 6. Compile.
    skip_nonfinite = config.nonfinite == 'skip'
    train_step = make_train_step(
        task,
        tx,
        mesh,
        skip_nonfinite=skip_nonfinite,
        state_sharding=state_sharding,
        grad_accum_steps=accumulate,
        ema_decay=config.ema_decay,
    )
    eval_step = make_eval_step(task, mesh, state_sharding)

    last_eval_sums: dict[str, np.ndarray] = {}

    def evaluate(at_step: int, record: bool = True) -> dict[str, float]:
        metrics, sums = evaluate_state(
            eval_step,
            state,
            task,
            eval_source,
            config.eval_batch_size,
            mesh,
            ema_params=state.ema_params,
        )
        last_eval_sums.update(sums)
        if record:
            writer.write(at_step, 'eval', metrics)
        writer.console(at_step, total_steps, 'eval', metrics)
        if is_primary and config.pictures:
            # Generative tasks draw fixed-noise samples at every evaluation, to watch training.
            task.write_eval_pictures(workdir / 'pictures', at_step, sampling_variables(state))
        return metrics

    # 7. Train.
    step = start_step
    pending: list[dict[str, jax.Array]] = []  # metrics of steps run, not yet fetched
    stop_reason = 'finished' if step >= total_steps else ''
    last_eval: dict[str, float] | None = None
    last_eval_step = -1
    nonfinite = NonFiniteWatch(skip_nonfinite, config.nonfinite_max_skips)
    preemption = Preemption(jax.process_count())

    def check_pending() -> None:
        """Fetches the metrics of the steps run since the last check: stops on a NaN/Inf (so no
        evaluation or checkpoint ever sees a spoiled state), adds them to the open window and
        reads the processes' agreed preemption flag. Every process calls it at the same steps."""
        nonlocal pending
        if pending:
            fetched = fetch(pending)
            pending = []
            nonfinite.check(fetched, step - len(fetched) + 1)
            window.add(fetched, task.logged_train_metrics)
            preemption.agreed_in(fetched)

    def log_train_metrics() -> None:
        """Writes the open window's means as one train record and starts a new window."""
        check_pending()
        if not window.steps:
            return
        seconds = window.seconds()
        mean = window.means()
        mean['learning_rate'] = float(schedule(step - 1)) * plateau_scale(state.opt_state)
        mean['examples_per_second'] = window.steps * config.batch_size / max(seconds, 1e-9)
        mean['epoch'] = step / steps_per_epoch
        if window.skipped:
            mean['skipped_updates'] = window.skipped
        writer.write(step, 'train', mean)
        eta = (total_steps - step) * seconds / window.steps
        writer.console(step, total_steps, 'train', mean, eta_seconds=eta)
        window.reset()

    def save_checkpoint() -> None:
        check_pending()
        checkpointer.save(step, state, data_iterator, window=window.to_json())
        writer.flush()

    profiler = StepProfiler(workdir, *config.profile_steps)  # (-1, -1): off
    try:
        with preemption:
            while step < total_steps:
                profiler.before_step(step)
                host_batch = preemption.mark(next(data_iterator))
                state, metrics = train_step(state, host_to_global(host_batch, mesh))
                profiler.after_step(step, state)
                pending.append(metrics)
                step += 1
                at_end = step == total_steps
                if preemption.sync_due(step):
                    check_pending()
                if step % config.log_every_steps == 0 or at_end:
                    log_train_metrics()
                if step % eval_every == 0 or at_end:
                    check_pending()
                    last_eval, last_eval_step = evaluate(step), step
                    if stopper is not None and stopper.update(step, last_eval):
                        stop_reason = (
                            f'early stopping: eval {stopper.metric} has not improved for '
                            f'{stopper.patience} evaluations (best '
                            f'{stopper.best_value:.4g} at step {stopper.best_step})'
                        )
                if step % checkpoint_every == 0 or at_end or stop_reason or preemption.agreed:
                    save_checkpoint()
                if preemption.agreed:
                    stop_reason = PREEMPTED + ': checkpoint written, rerun the command to resume'
                if stop_reason:
                    break
            stop_reason = stop_reason or 'finished'
    except NonFiniteError as error:
        # The save in flight (of a step before the bad one) completes and is sealed first.
        checkpointer.close()
        writer.close()
        sealed = checkpointer.sealed_steps()
        where = (
            f'the newest checkpoint is step {sealed[-1]}; a rerun resumes from it'
            if sealed
            else 'no checkpoint was written; a rerun starts from step 0'
        )
        raise NonFiniteError(f'{error}. {where}') from None
    finally:
        profiler.close()  # a run that ended inside the profile window

    # 8. Finish.
    preempted = stop_reason.startswith(PREEMPTED)
    if not preempted:  # a preempted run keeps its open window in the checkpoint instead
        log_train_metrics()
        save_checkpoint()
    if last_eval_step != step and not preempted:
        # A rerun of a finished run evaluates again for its summary and pictures, but its
        # metrics file already holds that evaluation.
        last_eval, last_eval_step = evaluate(step, record=step != start_step), step
    final = {}
    if is_primary and not preempted:
        # Metrics too costly or not additive for every evaluation (generated text scored by
        # BLEU), once on the host, from the raw eval split with its strings.
        final = task.final_eval(
            fetch(state.params),
            fetch(state.model_state),
            data.load_source(config.dataset.name, config.dataset.eval_split, data_dir),
        )
    if final:
        if step != start_step:
            writer.write(step, 'final_eval', final)
        writer.console(step, total_steps, 'final_eval', final)
        last_eval = {**(last_eval or {}), **final}
    checkpointer.close()
    summary: dict[str, Any] = {
        'stop_reason': stop_reason,
        'step': step,
        'total_steps': total_steps,
        'epochs': step / steps_per_epoch,
        'num_params': num_params,
        'model': config.model.name,
        'dataset': config.dataset.name,
        'devices': jax.device_count(),
        'processes': jax.process_count(),
        'platform': jax.devices()[0].platform,
        'wall_seconds_this_session': time.time() - started,
        'eval': last_eval,
        'runtime': runtime_record,
    }
    if stopper is not None:
        summary['early_stopping'] = {
            'metric': stopper.metric,
            'best_value': stopper.best_value,
            'best_step': stopper.best_step,
        }
    if is_primary:
        summary['pictures'] = _write_pictures(config, workdir, writer, task, last_eval_sums)
        if config.pictures:  # what a generative model writes
            summary['samples'] = [
                str(p) for p in task.write_samples(workdir, sampling_variables(state))
            ]
        (workdir / 'summary.json').write_text(
            json.dumps(finite_or_none(summary), indent=2, allow_nan=False)
        )
    writer.close()
    logging.info('%s after %d steps; eval %s', stop_reason, step, last_eval)
    return summary


def sampling_variables(state: TrainState) -> dict[str, Any]:
    """The variables generative pictures and samples come from, on the host: the parameters'
    moving average when the run keeps one (as DDPM samples), else the parameters."""
    params = state.params if state.ema_params is None else state.ema_params
    return {'params': fetch(params), **fetch(state.model_state)}


# How summary['stop_reason'] of a run stopped by SIGTERM begins (train.main exits EXIT_PREEMPTED).
PREEMPTED = 'preempted (SIGTERM)'


def _write_pictures(
    config, workdir: Path, writer: MetricWriter, task: Task, eval_sums: dict[str, np.ndarray]
) -> list[str]:
    if not config.pictures or not writer.metrics_file.exists():
        return []
    picture_dir = workdir / 'pictures'
    written = [
        pictures.plot_training_curves(writer.metrics_file, picture_dir / 'training_curves.png')
    ]
    if eval_sums:
        written += task.write_pictures(picture_dir, eval_sums)
    return [str(p) for p in written]
