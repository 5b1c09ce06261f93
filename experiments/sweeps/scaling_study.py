"""A scaling study of ConvNets against ViTs: trains the grid of experiments/scaling.py, then
fits scaling laws and writes plots and a report.

    python -m experiments.sweeps.scaling_study --preset=cpu_tiny --workdir=workdirs/scaling_cpu_tiny
        [--families=resnet,vit] [--epochs=0.25,0.5] [--emit_commands] [--analyze_only]

The grid is families x sizes x epoch budgets x learning rates (a x2 grid); every budget is its
own full cosine schedule. Locally the runs train one after another in this process, each in
`<workdir>/runs/<run id>` through the ordinary trainer, so the sweep is resumable: a finished
run (its summary.json says 'finished') or a diverged one (diverged.json) is skipped, an
interrupted one resumes from its newest checkpoint. With --emit_commands nothing trains: one
command per unfinished run is printed and written to `<workdir>/commands.sh` (for the TPU
presets, `gcloud compute tpus tpu-vm ssh ... --worker=all`); after the cluster has run them,
`--analyze_only` collects the run folders (copied or mounted under the same workdir).

Writes into the workdir:
  results.jsonl    one line per finished or diverged run: config, held-out loss and accuracy,
                   FLOPs per step and in total, measured device-seconds and core-hours
  flops.json       each model's FLOP counts (XLA, loop-corrected) and the analytic checks
  results.json     runs + analysis (LR-tuned points, frontiers, fits with bootstrap intervals,
                   compute-optimal size and epochs, optimal learning rates)
  report.md        the fitted numbers, tables and the figures below
  loss_vs_compute.png  frontiers.png  optimal_lr_vs_epochs.png  compute_optimal.png
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from experiments.analysis import compute
from experiments.analysis import scaling_laws as laws
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps.scaling_grid import DIVERGED, FINISHED, INTERRUPTED, PENDING, size_key
from experiments.sweeps.scaling_report import write_plots, write_report

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

    def load_source(name: str, split: str, data_dir: Any = None) -> Any:
        key = (name, split, str(data_dir))
        if key not in kept:
            kept[key] = data.maybe_in_memory(original(name, split, data_dir))
        return kept[key]

    data.load_source = load_source
    try:
        yield
    finally:
        data.load_source = original


def _append_session(directory: Path, seconds: float, outcome: str) -> None:
    path = directory / 'sessions.json'
    sessions = json.loads(path.read_text()) if path.exists() else []
    sessions.append({'wall_seconds': seconds, 'outcome': outcome, 'ended': time.time()})
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
    Returns how many runs were skipped, trained and found diverged. A preempted run (SIGTERM)
    stops the sweep: rerun the command to go on."""
    from train.loop import NonFiniteError

    if train_fn is None:
        from train.loop import train_and_evaluate as train_fn
    counts = {'skipped': 0, 'trained': 0, 'diverged': 0}
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


def model_flops(preset: scaling.Preset, family: str, size: str, workdir: Path) -> dict[str, float]:
    """flop_report of one size, kept in `<workdir>/flops.json` (compiling costs seconds)."""
    path = workdir / 'flops.json'
    table = json.loads(path.read_text()) if path.exists() else {}
    key = size_key(preset, family, size)
    if key not in table:
        rates = preset.families[family].learning_rates
        config = scaling.run_config(preset, family, size, preset.epochs[0], rates[0])
        table[key] = compute.flop_report(config, preset.image_shape, preset.num_classes)
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=2))
    return table[key]


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


# --- Analysis ----------------------------------------------------------------------------------


def _try_fit(
    fit: Callable[..., laws.Fit], x: Sequence[float], y: Sequence[float], num_resamples: int
) -> dict[str, Any]:
    try:
        return laws.summarize_fit(fit(x, y, num_resamples=num_resamples))
    except (ValueError, RuntimeError) as error:
        return {'error': str(error)}


def tuned_points(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best learning rate of each (family, size, epoch budget): Smith et al. tune the rate
    per budget. Diverged runs count as the worst rate."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r['family'], r['size'], r['epochs']), []).append(r)
    points = []
    for (family, size, epochs), runs in groups.items():
        finished = [r for r in runs if r['status'] == FINISHED]
        if not finished:
            continue
        best = min(finished, key=lambda r: r['eval_loss'])
        rate, at_edge = laws.best_learning_rate(
            [r['learning_rate'] for r in runs],
            [r['eval_loss'] if r['status'] == FINISHED else math.inf for r in runs],
        )
        points.append(
            {
                'family': family,
                'size': size,
                'epochs': epochs,
                'params': best['params'],
                'compute': best['train_flops'],
                'core_hours': best['core_hours'],
                'loss': best['eval_loss'],
                'accuracy': best['eval_accuracy'],
                'best_grid_lr': best['learning_rate'],
                'optimal_lr': rate,
                'lr_at_grid_edge': at_edge,
                'learning_rates_tried': sorted(r['learning_rate'] for r in runs),
            }
        )
    return sorted(points, key=lambda p: (p['family'], p['compute']))


def analyze_family(points: Sequence[dict[str, Any]], num_resamples: int) -> dict[str, Any]:
    """Frontier, both laws, compute-optimal size and epochs, and optimal LR of one family."""
    compute_values = [p['compute'] for p in points]
    losses = [p['loss'] for p in points]
    frontier = [points[i] for i in laws.pareto_frontier(compute_values, losses)]
    fx, fy = [p['compute'] for p in frontier], [p['loss'] for p in frontier]
    optimal = laws.compute_optimal(
        [p['size'] for p in points],
        [p['params'] for p in points],
        compute_values,
        losses,
        [p['epochs'] for p in points],
    )
    # Levels where only one size competed say nothing about which size is best; a cheaper run
    # chosen at several levels is one observation.
    contested = list({(o.spent, o.size): o for o in optimal if o.candidates >= 2}.values())
    learning_rates = [p for p in points if math.isfinite(p['optimal_lr'])]
    return {
        'points': list(points),
        'frontier': frontier,
        'power_law': _try_fit(laws.fit_power_law, fx, fy, num_resamples),
        'saturating': _try_fit(laws.fit_saturating, fx, fy, num_resamples),
        'compute_optimal': [vars(o) for o in optimal],
        'optimal_params_fit': _try_fit(
            laws.fit_log_linear,
            [o.spent for o in contested],
            [o.params for o in contested],
            num_resamples,
        ),
        'optimal_epochs_fit': _try_fit(
            laws.fit_log_linear,
            [o.spent for o in contested],
            [o.epochs for o in contested],
            num_resamples,
        ),
        'optimal_lr_fit': _try_fit(
            laws.fit_log_linear,
            [p['epochs'] for p in learning_rates],
            [p['optimal_lr'] for p in learning_rates],
            num_resamples,
        ),
        'lr_at_grid_edge': sum(p['lr_at_grid_edge'] for p in points),
    }


def analyze(records: Sequence[dict[str, Any]], num_resamples: int = 1000) -> dict[str, Any]:
    points = tuned_points(records)
    families = sorted({p['family'] for p in points})
    return {
        family: analyze_family([p for p in points if p['family'] == family], num_resamples)
        for family in families
    }


def analyze_and_report(
    preset: scaling.Preset,
    specs: Sequence[scaling.RunSpec],
    workdir: Path,
    *,
    num_resamples: int = 1000,
    cores_override: int = 0,
    sweep_seconds: float = 0.0,
) -> dict[str, Any]:
    """Collects the runs, fits, plots and writes results.json and report.md."""
    records = collect(specs, preset, workdir, cores_override)
    analysis = analyze(records, num_resamples)
    flops_path = workdir / 'flops.json'
    flops = json.loads(flops_path.read_text()) if flops_path.exists() else {}
    log_path = workdir / 'sweep_log.jsonl'
    sweep_log = (
        [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if log_path.exists()
        else []
    )
    figures = write_plots(records, analysis, workdir) if analysis else []
    report = write_report(
        preset, specs, records, analysis, flops, workdir, figures, sweep_seconds, sweep_log
    )
    results = {
        'preset': preset.name,
        'runs': records,
        'analysis': analysis,
        'figures': [str(f) for f in figures],
        'report': str(report),
    }
    (workdir / 'results.json').write_text(json.dumps(results, indent=2, default=float))
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    started = time.time()
    preset = scaling.get_preset(_PRESET.value)
    epochs = [float(e) for e in _EPOCHS.value] if _EPOCHS.value else None
    try:
        specs = scaling.grid(preset, _FAMILIES.value, epochs)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    workdir = Path(_WORKDIR.value)
    if _EMIT.value:
        print('\n'.join(emit_commands(specs, workdir, preset)))
        return
    if not _ANALYZE_ONLY.value:
        # Runs of one size share their initialisation and evaluation programs (only the train
        # step holds the learning rate and schedule): compile those once for the whole sweep.
        import jax

        jax.config.update('jax_compilation_cache_dir', str(workdir.absolute() / 'jax_cache'))
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
        counts = run_grid(
            specs,
            workdir,
            preset=preset,
            after_each=lambda: collect(specs, preset, workdir, _CORES.value),
        )
        logging.info('runs: %s', counts)
        if counts['trained'] or counts['diverged']:
            with open(workdir / 'sweep_log.jsonl', 'a') as f:
                f.write(
                    json.dumps(
                        {
                            'started': started,
                            'train_seconds': time.time() - started,
                            'counts': counts,
                            'host_cores': compute.host_cores(),
                        }
                    )
                    + '\n'
                )
    results = analyze_and_report(
        preset,
        specs,
        workdir,
        num_resamples=_BOOTSTRAP.value,
        cores_override=_CORES.value,
        sweep_seconds=time.time() - started,
    )
    print(Path(results['report']).read_text())


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
