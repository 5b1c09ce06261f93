"""A scaling study of ConvNets against ViTs: trains the grid of experiments/scaling.py and the
runs its results call for, then fits and tests scaling laws, compares the families and writes
plots and a report.

    python -m experiments.sweeps.scaling_study --preset=cpu_small \
        --workdir=workdirs/scaling_cpu_small
        [--families=nfnet,vit] [--epochs=0.25,0.5] [--emit_commands] [--analyze_only]
        [--estimate] [--smoke]

The base grid is families x sizes x epoch budgets x learning rates (a x2 grid); every budget is
its own full cosine schedule. After it, experiments/sweeps/scaling_plan.py plans more runs from
the results: a rate a factor 2 beyond the edge where a cell's best rate is at the edge, a
budget twice the longest while the compute-optimal budget is the longest, up to the preset's
caps; the sweep runs them and plans again until nothing is left. Locally the runs train one after
another in this process, each in `<workdir>/runs/<run id>` through the ordinary trainer, so the
sweep is resumable: a finished run (its summary.json says 'finished') or a diverged one
(diverged.json) is skipped, an interrupted one resumes from its newest checkpoint, and the plan
is made again from the run folders. With --emit_commands nothing trains: one command per run
the plan asks for now is printed and written to `<workdir>/commands.sh` (for the TPU presets,
`gcloud compute tpus tpu-vm ssh ... --worker=all`); run them, then emit again for the next
round; `--analyze_only` collects the run folders (copied or mounted under the same workdir).
`--estimate` prints the estimated wall time (scaling_estimate.py); `--smoke` runs the preset at
a drastically reduced size (scaling_plan.smoke_preset).

Writes into the workdir:
  results.jsonl    one line per finished or diverged run: config, held-out loss and accuracy,
                   FLOPs per step and in total, measured device-seconds, device and core-hours
  flops.json       each model's FLOP counts (XLA, loop-corrected) and the analytic checks
  results.json     runs + analysis (LR-tuned points, frontiers, fits with bootstrap intervals,
                   held-out predictions, compute-optimal size and epochs, optimal learning
                   rates), the families compared with their verdicts, and the plan
  report.md        the fitted numbers, tables, verdicts and the figures below
  loss_vs_compute.png  frontiers.png  frontier_difference.png  optimal_lr_vs_epochs.png
  compute_optimal.png
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import app, flags, logging

from experiments.analysis import compute
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps import scaling_plan
from experiments.sweeps.scaling_analysis import analyze, compare_families
from experiments.sweeps.scaling_estimate import estimate, model_flops
from experiments.sweeps.scaling_grid import DIVERGED, FINISHED, INTERRUPTED, PENDING
from experiments.sweeps.scaling_plots import write_plots
from experiments.sweeps.scaling_report import write_report
from train import cli

_PRESET = flags.DEFINE_string('preset', 'cpu_tiny', f'One of {sorted(scaling.PRESETS)}.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of the study: runs, results, report.')
_FAMILIES = flags.DEFINE_list('families', None, "Families to run (default: the preset's two).")
_EPOCHS = flags.DEFINE_list('epochs', None, "Epoch budgets (default: the preset's).")
_EMIT = flags.DEFINE_bool(
    'emit_commands', False, 'Print one command per unfinished run; train nothing.'
)
_ANALYZE_ONLY = flags.DEFINE_bool(
    'analyze_only', False, 'Collect finished runs and analyse them; train nothing.'
)
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', 1000, 'Bootstrap resamples per fitted law.')
_SMOKE = flags.DEFINE_bool(
    'smoke', False, 'The preset at a drastically reduced size (scaling_plan.smoke_preset).'
)
_ESTIMATE = flags.DEFINE_bool(
    'estimate', False, 'Print the estimated wall time (FLOP counts and a probe); train nothing.'
)
_CORES = flags.DEFINE_integer(
    'cores_per_device',
    0,
    'Cores behind one device for core-hours '
    "(0: the preset's, else from the platform; TPU v4 chips have 2).",
)


# --- Runs --------------------------------------------------------------------------------------


def run_dir(workdir: Path, spec: scaling.RunSpec) -> Path:
    return workdir / 'runs' / spec.run_id


def run_state(directory: Path) -> str:
    """finished (summary.json says so), diverged (diverged.json), interrupted (checkpoints but no
    finished summary: it resumes) or pending."""
    summary = directory / 'summary.json'
    if summary.exists():
        record = json.loads(summary.read_text())
        done = record.get('step') == record.get('total_steps')
        if record.get('stop_reason') == 'finished' and done:
            return FINISHED
    if (directory / 'diverged.json').exists():
        return DIVERGED
    checkpoints = directory / 'checkpoints'
    if checkpoints.exists() and any(checkpoints.iterdir()):
        return INTERRUPTED
    return PENDING


@contextlib.contextmanager
def decoded_sources_kept() -> Iterator[None]:
    """Within the block, `data.load_source` decodes each (data set, split) into memory once and
    hands every later run the same arrays. The trainer decodes its splits afresh on every call
    (seconds per run for Fashion-MNIST's PNGs, a fifth of a small run's time here); a sweep of
    many runs in one process need not. Splits too big for memory are left as they are."""
    import data

    original = data.load_source
    kept: dict[tuple[str, str, str], Any] = {}

    def load_source(name: str, split: str, data_dir: Any = None, **options: Any) -> Any:
        key = (name, split, str(data_dir), repr(sorted(options.items())))
        if key not in kept:
            kept[key] = data.maybe_in_memory(original(name, split, data_dir, **options))
        return kept[key]

    data.load_source = load_source
    try:
        yield
    finally:
        data.load_source = original


def _append_session(directory: Path, seconds: float, outcome: str) -> None:
    path = directory / 'sessions.json'
    sessions = json.loads(path.read_text()) if path.exists() else []
    sessions.append(
        {
            'wall_seconds': seconds,
            'outcome': outcome,
            'ended': time.time(),
            'device_kind': jax.devices()[0].device_kind,
        }
    )
    path.write_text(json.dumps(sessions, indent=2))


def run_grid(
    specs: Sequence[scaling.RunSpec],
    workdir: Path,
    *,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    preset: scaling.Preset | None = None,
    after_each: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Trains every unfinished run of `specs` one after another (resuming interrupted ones).
    Returns how many runs were skipped, trained, found diverged and preempted. A preempted run
    (SIGTERM) stops the sweep: rerun the command to go on."""
    from train.loop import NonFiniteError

    if train_fn is None:
        from train.loop import train_and_evaluate as train_fn
    counts = {'skipped': 0, 'trained': 0, 'diverged': 0, 'preempted': 0}
    with decoded_sources_kept():
        for index, spec in enumerate(specs):
            directory = run_dir(workdir, spec)
            state = run_state(directory)
            if state in (FINISHED, DIVERGED):
                counts['skipped'] += 1
                continue
            logging.info('run %d/%d %s (%s)', index + 1, len(specs), spec.run_id, state)
            config = scaling.run_config(
                preset or spec.preset, spec.family, spec.size, spec.epochs, spec.learning_rate
            )
            started = time.time()
            try:
                summary = train_fn(config, directory)
            except NonFiniteError as error:
                # A learning rate too high for the budget: a result of the grid, not a failure.
                directory.mkdir(parents=True, exist_ok=True)
                (directory / 'diverged.json').write_text(json.dumps({'error': str(error)}))
                _append_session(directory, time.time() - started, DIVERGED)
                counts['diverged'] += 1
                logging.warning('%s diverged: %s', spec.run_id, error)
            else:
                _append_session(directory, time.time() - started, summary['stop_reason'])
                if summary['stop_reason'].startswith('preempted'):
                    logging.warning('preempted during %s: rerun the command to resume', spec.run_id)
                    counts['preempted'] += 1
                    break
                counts['trained'] += 1
            if after_each is not None:
                after_each()
    return counts


def launch_command(spec: scaling.RunSpec, workdir: Path, preset: scaling.Preset) -> str:
    """The shell command that trains one run (on every worker of a TPU slice for TPU presets)."""
    train = (
        f'python -m train.main --config=experiments/scaling.py:{spec.config_arg} '
        f'--workdir={run_dir(workdir, spec)}'
    )
    if preset.launcher == 'tpu':
        return (
            'gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all '
            f'--command="cd $REPO && TFDS_DATA_DIR=$TFDS_DATA_DIR {train} --multihost"'
        )
    return train


def emit_commands(
    specs: Sequence[scaling.RunSpec], workdir: Path, preset: scaling.Preset
) -> list[str]:
    """One command per unfinished run; also written to `<workdir>/commands.sh`."""
    commands = [
        launch_command(s, workdir, preset)
        for s in specs
        if run_state(run_dir(workdir, s)) not in (FINISHED, DIVERGED)
    ]
    header = ['#!/bin/sh', f'# {preset.name}: {len(commands)} of {len(specs)} runs to go.']
    if preset.launcher == 'tpu':
        header += [
            '# Set TPU_NAME, ZONE, REPO (the checkout, same path on every worker) and',
            '# TFDS_DATA_DIR (the prepared data set, readable by every worker). The workdir',
            '# must be a file system every worker shares (all of them write checkpoints).',
            ': "${TPU_NAME:?}" "${ZONE:?}" "${REPO:?}" "${TFDS_DATA_DIR:?}"',
        ]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'commands.sh').write_text('\n'.join(header + commands) + '\n')
    return commands


# --- Results -----------------------------------------------------------------------------------


def _device_cores(summary: dict[str, Any], preset: scaling.Preset, override: int) -> int:
    """--cores_per_device, else the preset's, else what the run's platform implies (a run's
    summary names the platform but not the TPU generation)."""
    if override > 0:
        return override
    if preset.cores_per_device > 0:
        return preset.cores_per_device
    return compute.cores_per_device(
        summary.get('platform', 'cpu'), summary.get('device_kind', ''), summary.get('devices', 1)
    )


def run_record(
    spec: scaling.RunSpec, preset: scaling.Preset, workdir: Path, cores_override: int = 0
) -> dict[str, Any] | None:
    """The results line of one finished or diverged run (None for a run not done yet)."""
    directory = run_dir(workdir, spec)
    state = run_state(directory)
    if state not in (FINISHED, DIVERGED):
        return None
    family = preset.families[spec.family]
    flops = model_flops(preset, spec.family, spec.size, workdir)
    config = scaling.run_config(preset, spec.family, spec.size, spec.epochs, spec.learning_rate)
    record: dict[str, Any] = {
        'run_id': spec.run_id,
        'status': state,
        'family': spec.family,
        'kind': family.kind,
        'size': spec.size,
        'model': family.sizes[spec.size].model,
        'description': family.sizes[spec.size].description,
        'epochs': spec.epochs,
        'learning_rate': spec.learning_rate,
        'batch_size': preset.batch_size,
        'params': flops['params'],
        'train_step_flops': flops['train_step_flops'],
        'forward_flops_per_example': flops['forward_flops_per_example'],
        'config': json.loads(config.to_json_best_effort()),
    }
    sessions_path = directory / 'sessions.json'
    sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
    if state == DIVERGED:
        record.update(
            eval_loss=None,
            eval_accuracy=None,
            steps=None,
            train_flops=None,
            error=json.loads((directory / 'diverged.json').read_text())['error'],
        )
        return record
    summary = json.loads((directory / 'summary.json').read_text())
    devices = summary.get('devices', 1)
    loop_seconds = compute.train_loop_seconds(directory / 'metrics.jsonl', preset.batch_size)
    # Sessions the driver timed (every session of a local sweep); a run launched by a command
    # has only its last session's wall time, in its summary.
    wall = sum(s['wall_seconds'] for s in sessions) or summary.get('wall_seconds_this_session', 0.0)
    cores = _device_cores(summary, preset, cores_override)
    record.update(
        eval_loss=summary['eval']['loss'],
        eval_accuracy=summary['eval'].get('accuracy'),
        steps=summary['step'],
        train_flops=flops['train_step_flops'] * summary['step'],
        platform=summary.get('platform'),
        devices=devices,
        cores_per_device=cores,
        train_loop_seconds=loop_seconds,
        wall_seconds=wall,
        train_device_seconds=loop_seconds * devices,
        core_hours=compute.core_hours(loop_seconds * devices, cores),
        wall_core_hours=compute.core_hours(wall * devices, cores),
        device_kind=next((s['device_kind'] for s in sessions if s.get('device_kind')), ''),
    )
    return record


def collect(
    specs: Sequence[scaling.RunSpec], preset: scaling.Preset, workdir: Path, cores_override: int = 0
) -> list[dict[str, Any]]:
    """Every finished or diverged run's record, also written to `<workdir>/results.jsonl`."""
    records = [r for r in (run_record(s, preset, workdir, cores_override) for s in specs) if r]
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / 'results.jsonl', 'w') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')
    return records


def planned_specs(
    preset: scaling.Preset,
    base: Sequence[scaling.RunSpec],
    workdir: Path,
    cores_override: int = 0,
) -> tuple[list[scaling.RunSpec], list[dict[str, Any]], scaling_plan.Plan]:
    """The runs of a study so far (the base grid and every extension the runs in the workdir
    led to), their records, and the plan of what is still to run: planned again from the run
    folders until no planned run is found done."""
    specs = list(base)
    while True:
        records = collect(specs, preset, workdir, cores_override)
        plan = scaling_plan.plan(preset, base, records)
        new = [s for s in plan.runs if s not in specs]
        specs += new
        if not any(run_state(run_dir(workdir, s)) in (FINISHED, DIVERGED) for s in new):
            return specs, records, plan


def sweep(
    preset: scaling.Preset,
    base: Sequence[scaling.RunSpec],
    workdir: Path,
    *,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    cores_override: int = 0,
) -> dict[str, int]:
    """Trains the base grid, then what scaling_plan.plan asks for given the runs done, round
    after round until the plan is empty (or a run is preempted). Resumable: every round plans
    from the run folders. Returns the counts of run_grid summed over the rounds."""
    totals = {'skipped': 0, 'trained': 0, 'diverged': 0, 'preempted': 0, 'rounds': 0}
    attempted: set[scaling.RunSpec] = set()
    while True:
        specs, _, plan = planned_specs(preset, base, workdir, cores_override)
        fresh = [s for s in plan.runs if s not in attempted]
        if not fresh:
            # Nothing left, or planned runs that were trained and still did not finish.
            if plan.runs:
                logging.warning('runs that did not finish: %s', [s.run_id for s in plan.runs])
            return totals
        attempted.update(fresh)
        for reason in plan.reasons:
            logging.info('extending the grid: %s', reason)
        counts = run_grid(
            fresh,
            workdir,
            train_fn=train_fn,
            preset=preset,
            after_each=functools.partial(collect, specs, preset, workdir, cores_override),
        )
        totals['rounds'] += 1
        for key, value in counts.items():
            totals[key] += value
        if counts['preempted']:
            return totals


# --- Analysis ----------------------------------------------------------------------------------


def analyze_and_report(
    preset: scaling.Preset,
    specs: Sequence[scaling.RunSpec],
    workdir: Path,
    *,
    num_resamples: int = 1000,
    cores_override: int = 0,
    sweep_seconds: float = 0.0,
) -> dict[str, Any]:
    """Collects the runs (the base grid `specs` and the extensions planned from them), fits,
    compares the families, plots and writes results.json and report.md."""
    specs, records, plan = planned_specs(preset, specs, workdir, cores_override)
    analysis = analyze(records, num_resamples)
    comparisons = compare_families(analysis, num_resamples)
    flops_path = workdir / 'flops.json'
    flops = json.loads(flops_path.read_text()) if flops_path.exists() else {}
    log_path = workdir / 'sweep_log.jsonl'
    sweep_log = (
        [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if log_path.exists()
        else []
    )
    figures = write_plots(records, analysis, workdir, comparisons) if analysis else []
    report = write_report(
        preset,
        specs,
        records,
        analysis,
        flops,
        workdir,
        figures,
        sweep_seconds,
        sweep_log,
        comparisons=comparisons,
        plan=plan,
    )
    results = {
        'preset': preset.name,
        'runs': records,
        'analysis': analysis,
        'comparisons': comparisons,
        'plan': plan.as_dict(),
        'figures': [str(f) for f in figures],
        'report': str(report),
    }
    (workdir / 'results.json').write_text(json.dumps(results, indent=2, default=float))
    return results


def _log_sweep(workdir: Path, started: float, counts: dict[str, int]) -> None:
    with open(workdir / 'sweep_log.jsonl', 'a') as f:
        record = {
            'started': started,
            'train_seconds': time.time() - started,
            'counts': counts,
            'host_cores': compute.host_cores(),
        }
        f.write(json.dumps(record) + '\n')


def study(
    preset: scaling.Preset,
    base: Sequence[scaling.RunSpec],
    workdir: Path,
    *,
    train_fn: Callable[..., dict[str, Any]] | None = None,
    analyze_only: bool = False,
    num_resamples: int = 1000,
    cores_override: int = 0,
) -> dict[str, Any]:
    """A whole study: trains the base grid and its planned extensions (unless `analyze_only`),
    then analyses every run done and writes results.json, the plots and report.md."""
    started = time.time()
    if not analyze_only:
        # Runs of one size share their initialisation and evaluation programs (only the train
        # step holds the learning rate and schedule): compile those once for the whole sweep.
        jax.config.update('jax_compilation_cache_dir', str(workdir.absolute() / 'jax_cache'))
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
        counts = sweep(preset, base, workdir, train_fn=train_fn, cores_override=cores_override)
        logging.info('runs: %s', counts)
        if counts['trained'] or counts['diverged']:
            _log_sweep(workdir, started, counts)
    return analyze_and_report(
        preset,
        base,
        workdir,
        num_resamples=num_resamples,
        cores_override=cores_override,
        sweep_seconds=time.time() - started,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    preset = scaling.get_preset(_PRESET.value)
    if _SMOKE.value:
        preset = scaling_plan.smoke_preset(preset)
    epochs = [float(e) for e in _EPOCHS.value] if _EPOCHS.value else None
    try:
        specs = scaling.grid(preset, _FAMILIES.value, epochs)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    workdir = Path(_WORKDIR.value)
    if _ESTIMATE.value:
        print(json.dumps(estimate(preset, specs, workdir), indent=2))
        return
    if _EMIT.value:
        _, _, plan = planned_specs(preset, specs, workdir, _CORES.value)
        print('\n'.join(emit_commands(plan.runs, workdir, preset)))
        return
    results = study(
        preset,
        specs,
        workdir,
        analyze_only=_ANALYZE_ONLY.value,
        num_resamples=_BOOTSTRAP.value,
        cores_override=_CORES.value,
    )
    print(Path(results['report']).read_text())


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    cli.run(main)
