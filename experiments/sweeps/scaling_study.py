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

from experiments import scaling
from train import compute
from train import scaling_laws as laws

_PRESET = flags.DEFINE_string('preset', 'cpu_tiny', f'One of {sorted(scaling.PRESETS)}.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder of the study: runs, results, report.')
_FAMILIES = flags.DEFINE_list('families', None, "Families to run (default: the preset's two).")
_EPOCHS = flags.DEFINE_list('epochs', None, "Epoch budgets (default: the preset's).")
_EMIT = flags.DEFINE_bool('emit_commands', False, 'Print one command per unfinished run; train '
                          'nothing.')
_ANALYZE_ONLY = flags.DEFINE_bool('analyze_only', False, 'Collect finished runs and analyse them; '
                                  'train nothing.')
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', 1000, 'Bootstrap resamples per fitted law.')
_CORES = flags.DEFINE_integer('cores_per_device', 0, 'Cores behind one device for core-hours '
                              "(0: the preset's, else from the platform; TPU v4 chips have 2).")

FINISHED, DIVERGED, INTERRUPTED, PENDING = 'finished', 'diverged', 'interrupted', 'pending'


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


def run_grid(specs: Sequence[scaling.RunSpec], workdir: Path, *,
             train_fn: Callable[..., dict[str, Any]] | None = None,
             preset: scaling.Preset | None = None,
             after_each: Callable[[], None] | None = None) -> dict[str, int]:
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
            config = scaling.run_config(preset or spec.preset, spec.family, spec.size, spec.epochs,
                                        spec.learning_rate)
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
    train = (f'python -m train.main --config=experiments/scaling.py:{spec.config_arg} '
             f'--workdir={run_dir(workdir, spec)}')
    if preset.launcher == 'tpu':
        return ('gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all '
                f'--command="cd $REPO && TFDS_DATA_DIR=$TFDS_DATA_DIR {train} --multihost"')
    return train


def emit_commands(specs: Sequence[scaling.RunSpec], workdir: Path,
                  preset: scaling.Preset) -> list[str]:
    """One command per unfinished run; also written to `<workdir>/commands.sh`."""
    commands = [launch_command(s, workdir, preset) for s in specs
                if run_state(run_dir(workdir, s)) not in (FINISHED, DIVERGED)]
    header = ['#!/bin/sh', f'# {preset.name}: {len(commands)} of {len(specs)} runs to go.']
    if preset.launcher == 'tpu':
        header += ['# Set TPU_NAME, ZONE, REPO (the checkout, same path on every worker) and',
                   '# TFDS_DATA_DIR (the prepared data set, readable by every worker). The workdir',
                   '# must be a file system every worker shares (all of them write checkpoints).',
                   ': "${TPU_NAME:?}" "${ZONE:?}" "${REPO:?}" "${TFDS_DATA_DIR:?}"']
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'commands.sh').write_text('\n'.join(header + commands) + '\n')
    return commands


# --- Results -----------------------------------------------------------------------------------

def _size_key(preset: scaling.Preset, family: str, size: str) -> str:
    h, w, c = preset.image_shape
    return f'{preset.name}/{family}/{size}/batch{preset.batch_size}/{h}x{w}x{c}'


def model_flops(preset: scaling.Preset, family: str, size: str, workdir: Path) -> dict[str, float]:
    """flop_report of one size, kept in `<workdir>/flops.json` (compiling costs seconds)."""
    path = workdir / 'flops.json'
    table = json.loads(path.read_text()) if path.exists() else {}
    key = _size_key(preset, family, size)
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
    return compute.cores_per_device(summary.get('platform', 'cpu'), summary.get('device_kind', ''),
                                    summary.get('devices', 1))


def run_record(spec: scaling.RunSpec, preset: scaling.Preset, workdir: Path,
               cores_override: int = 0) -> dict[str, Any] | None:
    """The results line of one finished or diverged run (None for a run not done yet)."""
    directory = run_dir(workdir, spec)
    state = run_state(directory)
    if state not in (FINISHED, DIVERGED):
        return None
    family = preset.families[spec.family]
    flops = model_flops(preset, spec.family, spec.size, workdir)
    config = scaling.run_config(preset, spec.family, spec.size, spec.epochs, spec.learning_rate)
    record: dict[str, Any] = {
        'run_id': spec.run_id, 'status': state, 'family': spec.family, 'kind': family.kind,
        'size': spec.size, 'model': family.sizes[spec.size].model,
        'description': family.sizes[spec.size].description, 'epochs': spec.epochs,
        'learning_rate': spec.learning_rate, 'batch_size': preset.batch_size,
        'params': flops['params'], 'train_step_flops': flops['train_step_flops'],
        'forward_flops_per_example': flops['forward_flops_per_example'],
        'config': json.loads(config.to_json_best_effort()),
    }
    sessions_path = directory / 'sessions.json'
    sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
    if state == DIVERGED:
        record.update(eval_loss=None, eval_accuracy=None, steps=None, train_flops=None,
                      error=json.loads((directory / 'diverged.json').read_text())['error'])
        return record
    summary = json.loads((directory / 'summary.json').read_text())
    devices = summary.get('devices', 1)
    loop_seconds = compute.train_loop_seconds(directory / 'metrics.jsonl', preset.batch_size)
    # Sessions the driver timed (every session of a local sweep); a run launched by a command
    # has only its last session's wall time, in its summary.
    wall = sum(s['wall_seconds'] for s in sessions) or summary.get('wall_seconds_this_session', 0.0)
    cores = _device_cores(summary, preset, cores_override)
    record.update(
        eval_loss=summary['eval']['loss'], eval_accuracy=summary['eval'].get('accuracy'),
        steps=summary['step'], train_flops=flops['train_step_flops'] * summary['step'],
        platform=summary.get('platform'), devices=devices, cores_per_device=cores,
        train_loop_seconds=loop_seconds, wall_seconds=wall,
        train_device_seconds=loop_seconds * devices,
        core_hours=compute.core_hours(loop_seconds * devices, cores),
        wall_core_hours=compute.core_hours(wall * devices, cores))
    return record


def collect(specs: Sequence[scaling.RunSpec], preset: scaling.Preset, workdir: Path,
            cores_override: int = 0) -> list[dict[str, Any]]:
    """Every finished or diverged run's record, also written to `<workdir>/results.jsonl`."""
    records = [r for r in (run_record(s, preset, workdir, cores_override) for s in specs) if r]
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / 'results.jsonl', 'w') as f:
        for record in records:
            f.write(json.dumps(record) + '\n')
    return records


# --- Analysis ----------------------------------------------------------------------------------

def _try_fit(fit: Callable[..., laws.Fit], x: Sequence[float], y: Sequence[float],
             num_resamples: int) -> dict[str, Any]:
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
            [r['eval_loss'] if r['status'] == FINISHED else math.inf for r in runs])
        points.append({
            'family': family, 'size': size, 'epochs': epochs, 'params': best['params'],
            'compute': best['train_flops'], 'core_hours': best['core_hours'],
            'loss': best['eval_loss'], 'accuracy': best['eval_accuracy'],
            'best_grid_lr': best['learning_rate'], 'optimal_lr': rate, 'lr_at_grid_edge': at_edge,
            'learning_rates_tried': sorted(r['learning_rate'] for r in runs),
        })
    return sorted(points, key=lambda p: (p['family'], p['compute']))


def analyze_family(points: Sequence[dict[str, Any]], num_resamples: int) -> dict[str, Any]:
    """Frontier, both laws, compute-optimal size and epochs, and optimal LR of one family."""
    compute_values = [p['compute'] for p in points]
    losses = [p['loss'] for p in points]
    frontier = [points[i] for i in laws.pareto_frontier(compute_values, losses)]
    fx, fy = [p['compute'] for p in frontier], [p['loss'] for p in frontier]
    optimal = laws.compute_optimal([p['size'] for p in points], [p['params'] for p in points],
                                   compute_values, losses, [p['epochs'] for p in points])
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
        'optimal_params_fit': _try_fit(laws.fit_log_linear, [o.spent for o in contested],
                                       [o.params for o in contested], num_resamples),
        'optimal_epochs_fit': _try_fit(laws.fit_log_linear, [o.spent for o in contested],
                                       [o.epochs for o in contested], num_resamples),
        'optimal_lr_fit': _try_fit(laws.fit_log_linear, [p['epochs'] for p in learning_rates],
                                   [p['optimal_lr'] for p in learning_rates], num_resamples),
        'lr_at_grid_edge': sum(p['lr_at_grid_edge'] for p in points),
    }


def analyze(records: Sequence[dict[str, Any]], num_resamples: int = 1000) -> dict[str, Any]:
    points = tuned_points(records)
    families = sorted({p['family'] for p in points})
    return {family: analyze_family([p for p in points if p['family'] == family], num_resamples)
            for family in families}


# --- Plots -------------------------------------------------------------------------------------

def _law_curve(fit: dict[str, Any], low: float, high: float) -> tuple[Any, Any] | None:
    import numpy as np
    if 'params' not in fit:
        return None
    x = np.geomspace(low, high, 100)
    p = fit['params']
    if fit['law'] == 'power':
        return x, p['a'] * x ** (-p['b'])
    return x, p['c'] + p['a'] * (x + p['d']) ** (-p['b'])


def _log_axes(ax: Any, y_plain: bool = True) -> None:
    """Log-log axes whose labels do not collide: no labels on minor x ticks, and plain numbers
    on y, where a loss range spans less than a decade."""
    from matplotlib import ticker
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if y_plain:
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%.3g'))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter('%.3g'))


def write_plots(records: Sequence[dict[str, Any]], analysis: dict[str, Any],
                workdir: Path) -> list[Path]:
    """loss_vs_compute.png, frontiers.png, optimal_lr_vs_epochs.png and compute_optimal.png in
    the workdir."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families = list(analysis)
    colours = plt.get_cmap('viridis')
    written = []

    # 1. Every run, each size's LR-tuned budgets joined, the frontier and both laws.
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 4.6), squeeze=False)
    for ax, family in zip(axes[0], families):
        result = analysis[family]
        sizes = list(dict.fromkeys(p['size'] for p in sorted(result['points'],
                                                               key=lambda p: p['params'])))
        for i, size in enumerate(sizes):
            colour = colours(i / max(len(sizes) - 1, 1))
            tuned = sorted((p for p in result['points'] if p['size'] == size),
                           key=lambda p: p['compute'])
            ax.plot([p['compute'] for p in tuned], [p['loss'] for p in tuned], 'o-', color=colour,
                    label=f"{size} ({tuned[0]['params']:,.0f} params)", markersize=5)
            others = [r for r in records if r['family'] == family and r['size'] == size
                      and r['status'] == FINISHED]
            ax.scatter([r['train_flops'] for r in others], [r['eval_loss'] for r in others],
                       marker='x', color=colour, alpha=0.4, s=18)
        frontier = result['frontier']
        ax.plot([p['compute'] for p in frontier], [p['loss'] for p in frontier], 's', mfc='none',
                mec='black', markersize=11, label='frontier')
        low = min((p['compute'] for p in frontier), default=1.0)
        high = max((p['compute'] for p in frontier), default=1.0)
        for key, style in (('power_law', '--'), ('saturating', '-')):
            curve = _law_curve(result[key], low, high)
            if curve is not None:
                b = result[key]['params']['b']
                ax.plot(*curve, style, color='black', lw=1,
                        label=f"{result[key]['formula']}, b = {b:.3f}")
        _log_axes(ax)
        ax.set_xlabel('training FLOPs (XLA count)')
        ax.set_ylabel('held-out loss')
        ax.set_title(f'{family}: LR-tuned budgets (o), other LRs (x)')
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'loss_vs_compute.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 2. The families' frontiers and power laws on one figure.
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for i, family in enumerate(families):
        result = analysis[family]
        colour = plt.get_cmap('tab10')(i)
        frontier = result['frontier']
        ax.plot([p['compute'] for p in frontier], [p['loss'] for p in frontier], 'o', color=colour,
                label=f'{family} frontier')
        points = result['points']
        curve = _law_curve(result['power_law'], min(p['compute'] for p in points),
                           max(p['compute'] for p in points))
        if curve is not None:
            p = result['power_law']['params']
            ax.plot(*curve, '--', color=colour, label=f"{family}: {p['a']:.3g}·C^-{p['b']:.3f}")
        curve = _law_curve(result['saturating'], min(p['compute'] for p in points),
                           max(p['compute'] for p in points))
        if curve is not None:
            ax.plot(*curve, '-', color=colour, lw=1, alpha=0.7,
                    label=f'{family}: saturating fit')
    _log_axes(ax)
    ax.set_xlabel('training FLOPs (XLA count)')
    ax.set_ylabel('held-out loss')
    ax.set_title('Pareto frontiers')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'frontiers.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 3. The best learning rate of each budget, one line per size.
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False)
    for ax, family in zip(axes[0], families):
        points = analysis[family]['points']
        sizes = list(dict.fromkeys(p['size'] for p in sorted(points, key=lambda p: p['params'])))
        for i, size in enumerate(sizes):
            rows = sorted((p for p in points if p['size'] == size), key=lambda p: p['epochs'])
            # Sizes often share a rate: a small vertical offset keeps every line visible.
            offset = 2.0 ** (0.03 * (i - (len(sizes) - 1) / 2))
            ax.plot([p['epochs'] for p in rows], [p['optimal_lr'] * offset for p in rows], 'o-',
                    color=colours(i / max(len(sizes) - 1, 1)), label=size, alpha=0.85)
        tried = sorted({lr for p in points for lr in p['learning_rates_tried']})
        for lr in tried:
            ax.axhline(lr, color='grey', lw=0.5, ls=':')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log', base=2)
        ax.set_xticks(sorted({p['epochs'] for p in points}))
        ax.set_xticklabels([f"{e:g}" for e in sorted({p['epochs'] for p in points})])
        ax.set_yticks(tried)
        ax.set_yticklabels([f'{lr:g}' for lr in tried])
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        low, high = min(tried), max(tried)
        ax.set_ylim(low / 2 ** 0.5, high * 2 ** 0.5)
        ax.set_xlabel('epoch budget')
        ax.set_ylabel('best learning rate (dotted: the grid; sizes offset)')
        ax.set_title(family)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'optimal_lr_vs_epochs.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 4. Compute-optimal parameters and epochs against compute.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, family in enumerate(families):
        colour = plt.get_cmap('tab10')(i)
        optimal = analysis[family]['compute_optimal']
        for ax, key, fit_key in ((axes[0], 'params', 'optimal_params_fit'),
                                 (axes[1], 'epochs', 'optimal_epochs_fit')):
            contested = [o for o in optimal if o['candidates'] >= 2]
            alone = [o for o in optimal if o['candidates'] < 2]
            ax.plot([o['spent'] for o in contested], [o[key] for o in contested], 'o',
                    color=colour, label=f'{family} (sizes compared: fitted)', markersize=5)
            ax.plot([o['spent'] for o in alone], [o[key] for o in alone], 'o', mfc='none',
                    color=colour, label=f'{family} (one size only)', markersize=5)
            fit = analysis[family][fit_key]
            if 'params' in fit:
                xs = sorted(o['spent'] for o in optimal)
                ax.plot(xs, [fit['params']['k'] * x ** fit['params']['p'] for x in xs], '--',
                        color=colour, label=f"{family}: ∝ C^{fit['params']['p']:.2f}")
    for ax, label in zip(axes, ('compute-optimal parameters', 'compute-optimal epochs')):
        _log_axes(ax, y_plain=False)
        ax.set_xlabel('training FLOPs')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(workdir / 'compute_optimal.png')
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


# --- Report ------------------------------------------------------------------------------------

def _fit_text(fit: dict[str, Any]) -> str:
    if 'params' not in fit:
        return f"not fitted ({fit['error']})"
    parts = []
    for name, value in fit['params'].items():
        low, high = fit['intervals_95'].get(name, (math.nan, math.nan))
        parts.append(f'{name} = {value:.4g} [{low:.4g}, {high:.4g}]')
    return (f"{fit['formula']}: " + ', '.join(parts) + f" ({fit['num_points']} points, "
            f"{fit['num_bootstrap']} bootstrap fits, "
            f"rms log residual {fit['residual_rms_log']:.3f})")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]


def _cost_lines(finished: Sequence[dict[str, Any]], sweep_log: Sequence[dict[str, Any]],
                sweep_seconds: float) -> list[str]:
    lines = []
    if finished:
        wall = sum(r['wall_seconds'] for r in finished) / 60
        loops = sum(r['train_loop_seconds'] for r in finished) / 60
        core_hours = sum(r['wall_core_hours'] for r in finished)
        lines.append(f'The finished runs took {wall:.1f} min of wall time (each run\'s sessions, '
                     f'compilation and evaluation included; {core_hours:.3f} core-hours at '
                     f"{finished[0]['cores_per_device']} cores per device), of which the training "
                     f'loops took {loops:.1f} min.')
    for entry in sweep_log:
        when = time.strftime('%Y-%m-%d %H:%M', time.gmtime(entry['started']))
        lines.append(f"- driver invocation of {when} UTC: {entry['train_seconds'] / 60:.1f} min "
                     f"training the grid ({entry['counts']}) on {entry['host_cores']} host cores")
    if sweep_seconds:
        took = f'{sweep_seconds / 60:.1f} min' if sweep_seconds >= 60 else f'{sweep_seconds:.0f} s'
        lines.append(f'- this invocation of the driver, analysis included: {took}')
    return lines + ['']


def _model_lines(preset: scaling.Preset, families: Sequence[str],
                 flops: dict[str, Any]) -> list[str]:
    rows = []
    for family in families:
        for size, rung in preset.families[family].sizes.items():
            entry = flops.get(_size_key(preset, family, size))
            if entry is None:
                continue
            xla = entry['train_step_flops']
            transformer = ''
            if 'transformer_6n_flops' in entry:
                transformer = (f"{entry['transformer_6n_flops'] / xla:.3f} "
                               f"({entry['transformer_6n_attention_flops'] / xla:.3f})")
            rows.append((family, size, rung.description, f"{entry['params']:,.0f}",
                         f"{entry['forward_flops_per_example'] / 1e6:.2f}", f'{xla / 1e9:.3f}',
                         f"{entry['analytic_train_step_flops'] / xla:.3f}", transformer))
    header = ('family', 'size', 'model', 'parameters', 'forward MFLOPs/example',
              'train GFLOPs/step', 'analytic 3x(conv+matmul) / XLA', '6N(+attention) / XLA')
    return ['## Models', ''] + _table(header, rows) + ['']


def _family_lines(family: str, result: dict[str, Any]) -> list[str]:
    frontier_ids = {(p['size'], p['epochs']) for p in result['frontier']}
    rows = []
    for p in sorted(result['points'], key=lambda p: (p['params'], p['epochs'])):
        edge = ' (edge)' if p['lr_at_grid_edge'] else ''
        on_frontier = 'yes' if (p['size'], p['epochs']) in frontier_ids else ''
        rows.append((p['size'], f"{p['epochs']:g}", f"{p['best_grid_lr']:g}{edge}",
                     f"{p['loss']:.4f}", f"{p['accuracy']:.2%}", f"{p['compute']:.3g}",
                     f"{p['core_hours']:.4f}", on_frontier))
    lines = [f'## {family}', ''] + _table(
        ('size', 'epochs', 'best LR on the grid', 'held-out loss', 'accuracy', 'training FLOPs',
         'core-hours', 'on frontier'), rows)

    contested = [o for o in result['compute_optimal'] if o['candidates'] >= 2]
    longest = max(p['epochs'] for p in result['points'])
    at_longest = sum(math.isclose(o['epochs'], longest, rel_tol=1e-6) for o in contested)
    distinct = len({(o['size'], o['spent']) for o in contested})
    budget_note = (f'- Levels where sizes were compared: {len(contested)} ({distinct} distinct '
                   f'choices, the points of the two fits above); at {at_longest} of them the '
                   f'best choice trains for the longest budget of the grid ({longest:g} epochs)')
    if contested and at_longest == len(contested):
        budget_note += ': longer budgets belong in the grid'
    edge_note = ('- Budgets whose best rate is the lowest or highest of the grid, so that the '
                 f"optimum is not bracketed: {result['lr_at_grid_edge']} of "
                 f"{len(result['points'])}")
    if len(result['points'][0]['learning_rates_tried']) < 3:
        edge_note += ' (a grid of two rates never brackets it)'
    lines += ['', f"- Power law on the frontier: {_fit_text(result['power_law'])}",
              f"- Saturating law (Zhai et al.): {_fit_text(result['saturating'])}",
              '- Compute-optimal parameters N_opt = k·C^p: '
              + _fit_text(result['optimal_params_fit']),
              f"- Compute-optimal epochs E_opt = k·C^p: {_fit_text(result['optimal_epochs_fit'])}",
              budget_note,
              '- Optimal learning rate vs epoch budget, LR_opt = k·E^p: '
              + _fit_text(result['optimal_lr_fit']),
              edge_note, '']
    rows = [(f"{o['compute']:.3g}", o['size'], f"{o['params']:,.0f}", f"{o['epochs']:.3g}",
             f"{o['spent']:.3g}", f"{o['loss']:.4f}", o['candidates'])
            for o in result['compute_optimal']]
    return lines + _table(('compute level', 'best size', 'its parameters', 'epochs',
                           'compute it spends', 'loss', 'sizes compared'), rows) + ['']


def _comparison_lines(analysis: dict[str, Any]) -> list[str]:
    names = list(analysis)
    common_low = max(min(p['compute'] for p in analysis[f]['points']) for f in names)
    common_high = min(max(p['compute'] for p in analysis[f]['points']) for f in names)
    if common_low >= common_high:
        return ['## Frontiers compared', '', "- the families' compute ranges do not overlap", '']
    lines = ['## Frontiers compared', '']
    for level in (common_low, math.sqrt(common_low * common_high), common_high):
        values = []
        for f in names:
            fit = analysis[f]['power_law']
            if 'params' in fit:
                loss = fit['params']['a'] * level ** -fit['params']['b']
                values.append(f'{f} {loss:.4f}')
        lines.append(f'- at {level:.3g} FLOPs the power laws give: ' + ', '.join(values))
    return lines + ['']


def write_report(preset: scaling.Preset, specs: Sequence[scaling.RunSpec],
                 records: Sequence[dict[str, Any]], analysis: dict[str, Any],
                 flops: dict[str, Any], workdir: Path, figures: Sequence[Path],
                 sweep_seconds: float = 0.0, sweep_log: Sequence[dict[str, Any]] = ()) -> Path:
    """`<workdir>/report.md`: the grid, its cost, the models' FLOP counts and checks, and per
    family the LR-tuned runs, the fitted laws with their intervals, the compute-optimal choices
    and the learning rates; then the frontiers compared and the figures."""
    finished = [r for r in records if r['status'] == FINISHED]
    diverged = [r for r in records if r['status'] == DIVERGED]
    families = sorted({s.family for s in specs})
    budgets = sorted({s.epochs for s in specs})
    lines = [f'# Scaling study `{preset.name}`', '',
             f'Data: `{preset.dataset}` train split `{preset.train_split}`, held-out '
             f'`{preset.eval_split}`, images {preset.image_shape}; batch {preset.batch_size}. '
             f'Grid: families {families} x sizes x epoch budgets {budgets} (each its own warmup '
             f'+ cosine schedule) x learning rates a factor 2 apart: {len(specs)} runs, '
             f'{len(finished)} finished, {len(diverged)} diverged, '
             f'{len(specs) - len(records)} not run yet.', '',
             "Training FLOPs are XLA's count of the compiled train step (forward, backward, "
             'optimiser; multiply-add = 2; loop bodies multiplied by their trip counts) times the '
             "steps; evaluation is not included. Core-hours are the training loop's measured "
             'seconds (from the logged throughput) x devices x cores per device.', '']
    lines += _cost_lines(finished, sweep_log, sweep_seconds)
    lines += _model_lines(preset, families, flops)
    for family, result in analysis.items():
        lines += _family_lines(family, result)
    if len(analysis) >= 2:
        lines += _comparison_lines(analysis)
    if diverged:
        lines += ['## Diverged runs', '']
        lines += [f"- {r['run_id']}: {r['error'][:120]}" for r in diverged] + ['']
    lines += ['## Figures', ''] + [f'![{p.stem}]({p.name})' for p in figures] + ['']
    path = workdir / 'report.md'
    path.write_text('\n'.join(lines))
    return path


def analyze_and_report(preset: scaling.Preset, specs: Sequence[scaling.RunSpec], workdir: Path,
                       *, num_resamples: int = 1000, cores_override: int = 0,
                       sweep_seconds: float = 0.0) -> dict[str, Any]:
    """Collects the runs, fits, plots and writes results.json and report.md."""
    records = collect(specs, preset, workdir, cores_override)
    analysis = analyze(records, num_resamples)
    flops_path = workdir / 'flops.json'
    flops = json.loads(flops_path.read_text()) if flops_path.exists() else {}
    log_path = workdir / 'sweep_log.jsonl'
    sweep_log = ([json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
                 if log_path.exists() else [])
    figures = write_plots(records, analysis, workdir) if analysis else []
    report = write_report(preset, specs, records, analysis, flops, workdir, figures, sweep_seconds,
                          sweep_log)
    results = {'preset': preset.name, 'runs': records, 'analysis': analysis,
               'figures': [str(f) for f in figures], 'report': str(report)}
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
        counts = run_grid(specs, workdir, preset=preset,
                          after_each=lambda: collect(specs, preset, workdir, _CORES.value))
        logging.info('runs: %s', counts)
        if counts['trained'] or counts['diverged']:
            with open(workdir / 'sweep_log.jsonl', 'a') as f:
                f.write(json.dumps({'started': started, 'train_seconds': time.time() - started,
                                    'counts': counts, 'host_cores': compute.host_cores()}) + '\n')
    results = analyze_and_report(preset, specs, workdir, num_resamples=_BOOTSTRAP.value,
                                 cores_override=_CORES.value, sweep_seconds=time.time() - started)
    print(Path(results['report']).read_text())


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    app.run(main)
