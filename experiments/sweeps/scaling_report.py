"""The scaling study's `report.md`: the grid and its cost, the models' FLOP counts, per family
every cell's best learning rate (marked when still at a cap), the laws fitted and tested on
held-out budgets, the compute-optimal choices, and the families compared with the verdict the
numbers give. Reads what experiments/sweeps/scaling_study.py collected and analysed (the plots
are experiments/sweeps/scaling_plots.py); trains nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.analysis import compute
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps.scaling_analysis import ASSUMED_MFU
from experiments.sweeps.scaling_grid import DIVERGED, FINISHED, size_key
from experiments.sweeps.scaling_plan import Plan

# --- Report ------------------------------------------------------------------------------------


def _fit_text(fit: dict[str, Any]) -> str:
    if 'params' not in fit:
        return f'not fitted ({fit["error"]})'
    parts = []
    for name, value in fit['params'].items():
        low, high = fit['intervals_95'].get(name, (math.nan, math.nan))
        parts.append(f'{name} = {value:.4g} [{low:.4g}, {high:.4g}]')
    return (
        f'{fit["formula"]}: ' + ', '.join(parts) + f' ({fit["num_points"]} points, '
        f'{fit["num_bootstrap"]} bootstrap fits, '
        f'rms log residual {fit["residual_rms_log"]:.3f})'
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]


def _cost_lines(
    finished: Sequence[dict[str, Any]], sweep_log: Sequence[dict[str, Any]], sweep_seconds: float
) -> list[str]:
    lines = []
    if finished:
        wall = sum(r['wall_seconds'] for r in finished) / 60
        loops = sum(r['train_loop_seconds'] for r in finished) / 60
        core_hours = sum(r['wall_core_hours'] for r in finished)
        lines.append(
            f"The finished runs took {wall:.1f} min of wall time (each run's sessions, "
            f'compilation and evaluation included; {core_hours:.3f} core-hours at '
            f'{finished[0]["cores_per_device"]} cores per device), of which the training '
            f'loops took {loops:.1f} min.'
        )
    for entry in sweep_log:
        when = time.strftime('%Y-%m-%d %H:%M', time.gmtime(entry['started']))
        lines.append(
            f'- driver invocation of {when} UTC: {entry["train_seconds"] / 60:.1f} min '
            f'training the grid ({entry["counts"]}) on {entry["host_cores"]} host cores'
        )
    if sweep_seconds:
        took = f'{sweep_seconds / 60:.1f} min' if sweep_seconds >= 60 else f'{sweep_seconds:.0f} s'
        lines.append(f'- this invocation of the driver, analysis included: {took}')
    return lines + ['']


def _model_lines(
    preset: scaling.Preset, families: Sequence[str], flops: dict[str, Any]
) -> list[str]:
    rows = []
    for family in families:
        for size, rung in preset.families[family].sizes.items():
            entry = flops.get(size_key(preset, family, size))
            if entry is None:
                continue
            xla = entry['train_step_flops']
            transformer = ''
            if 'transformer_6n_flops' in entry:
                transformer = (
                    f'{entry["transformer_6n_flops"] / xla:.3f} '
                    f'({entry["transformer_6n_attention_flops"] / xla:.3f})'
                )
            rows.append(
                (
                    family,
                    size,
                    rung.description,
                    f'{entry["params"]:,.0f}',
                    f'{entry["forward_flops_per_example"] / 1e6:.2f}',
                    f'{xla / 1e9:.3f}',
                    f'{entry["analytic_train_step_flops"] / xla:.3f}',
                    transformer,
                )
            )
    header = (
        'family',
        'size',
        'model',
        'parameters',
        'forward MFLOPs/example',
        'train GFLOPs/step',
        'analytic 3x(conv+matmul) / XLA',
        '6N(+attention) / XLA',
    )
    return ['## Models', ''] + _table(header, rows) + ['']


def _held_out_lines(held_out: dict[str, Any]) -> list[str]:
    """The laws fitted on the smaller budgets and tested on the largest."""
    lines = [
        f'- Held-out prediction: fitted on the {held_out["num_fit"]} cheapest frontier points, '
        f'predicting the {held_out["num_held_out"]} largest '
        '(error: mean |log(predicted / measured)|, 95% bootstrap interval):'
    ]
    for law, result in held_out['laws'].items():
        if result.get('error') is None:
            lines.append(f'  - {law}: not fitted ({result["reason"]})')
            continue
        low, high = result['error_interval_95']
        b_low, b_high = result['intervals_95'].get('b', (math.nan, math.nan))
        note = f'; degenerate: {result["degenerate"]}' if result.get('degenerate') else ''
        lines.append(
            f'  - {result["formula"]}: error {result["error"]:.3f} [{low:.3f}, {high:.3f}], '
            f'b = {result["params"]["b"]:.3g} [{b_low:.3g}, {b_high:.3g}]{note}'
        )
    return lines + [f'- {held_out["sentence"]}']


def _rate_mark(point: dict[str, Any], plan: Plan | None, family: str) -> str:
    """A best rate at the edge of the rates tried: at the cap, or not extended yet."""
    if not point['lr_at_grid_edge']:
        return ''
    if plan is None:
        return ' (edge)'
    if (family, point['size'], float(point['epochs'])) in plan.lr_capped:
        return ' (edge: AT THE CAP)'
    return ' (edge: extension not run yet)'


def _family_lines(family: str, result: dict[str, Any], plan: Plan | None = None) -> list[str]:
    frontier_ids = {(p['size'], p['epochs']) for p in result['frontier']}
    rows = []
    for p in sorted(result['points'], key=lambda p: (p['params'], p['epochs'])):
        on_frontier = 'yes' if (p['size'], p['epochs']) in frontier_ids else ''
        rows.append(
            (
                p['size'],
                f'{p["epochs"]:g}',
                f'{p["best_grid_lr"]:g}{_rate_mark(p, plan, family)}',
                ' '.join(f'{lr:g}' for lr in p['learning_rates_tried']),
                f'{p["loss"]:.4f}',
                f'{p["accuracy"]:.2%}',
                f'{p["compute"]:.3g}',
                f'{p["device_seconds"]:.1f} ({p["device_kind"]})',
                f'{p["tpu_v4_core_hours"]:.2e}',
                on_frontier,
            )
        )
    lines = [f'## {family}', ''] + _table(
        (
            'size',
            'epochs',
            'best LR',
            'LRs tried',
            'held-out loss',
            'accuracy',
            'training FLOPs',
            'device-seconds (device)',
            f'TPU-v4 core-hours at MFU {ASSUMED_MFU:g}',
            'on frontier',
        ),
        rows,
    )

    contested = [o for o in result['compute_optimal'] if o['candidates'] >= 2]
    longest = max(p['epochs'] for p in result['points'])
    at_longest = sum(math.isclose(o['epochs'], longest, rel_tol=1e-6) for o in contested)
    distinct = len({(o['size'], o['spent']) for o in contested})
    budget_note = (
        f'- Levels where sizes were compared: {len(contested)} ({distinct} distinct '
        f'choices, the points of the two fits above); at {at_longest} of them the '
        f'best choice trains for the longest budget of the grid ({longest:g} epochs)'
    )
    if plan is not None and family in plan.epochs_capped:
        budget_note += ': the optimum is AT THE BUDGET CAP (longer budgets belong in the grid)'
    elif contested and 2 * at_longest >= len(contested):
        budget_note += ': longer budgets belong in the grid'
    edge_note = (
        '- Budgets whose best rate is the lowest or highest of the grid, so that the '
        f'optimum is not bracketed: {result["lr_at_grid_edge"]} of '
        f'{len(result["points"])}'
    )
    if len(result['points'][0]['learning_rates_tried']) < 3:
        edge_note += ' (a grid of two rates never brackets it)'
    lines += [
        '',
        f'- Power law on the frontier: {_fit_text(result["power_law"])}',
        f'- Saturating law (Zhai et al.): {_fit_text(result["saturating"])}',
        f'- Saturating power law: {_fit_text(result["saturating_power"])}',
        *_held_out_lines(result['held_out']),
        '- Compute-optimal parameters N_opt = k·C^p: ' + _fit_text(result['optimal_params_fit']),
        f'- Compute-optimal epochs E_opt = k·C^p: {_fit_text(result["optimal_epochs_fit"])}',
        budget_note,
        '- Optimal learning rate vs epoch budget, LR_opt = k·E^p: '
        + _fit_text(result['optimal_lr_fit']),
        edge_note,
        '',
    ]
    rows = [
        (
            f'{o["compute"]:.3g}',
            o['size'],
            f'{o["params"]:,.0f}',
            f'{o["epochs"]:.3g}',
            f'{o["spent"]:.3g}',
            f'{o["loss"]:.4f}',
            o['candidates'],
        )
        for o in result['compute_optimal']
    ]
    return (
        lines
        + _table(
            (
                'compute level',
                'best size',
                'its parameters',
                'epochs',
                'compute it spends',
                'loss',
                'sizes compared',
            ),
            rows,
        )
        + ['']
    )


def _comparison_lines(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    lines = ['## Frontiers compared', '']
    for entry in comparisons:
        lines += [
            f'### {entry["convnet"]} against {entry["vit"]}',
            '',
            f'**{entry["verdict"]}**',
            '',
        ]
        if entry.get('levels'):
            rows = [
                (
                    f'{row["compute"]:.3g}',
                    f'{compute.tpu_v4_core_hours(row["compute"], ASSUMED_MFU):.2e}',
                    f'{row["loss_ratio"]:.3f}',
                    '[{:.3f}, {:.3f}]'.format(*(math.exp(v) for v in row['interval_95'])),
                    {'below': 'ConvNet below', 'above': 'ConvNet above'}.get(
                        row['side'], 'not distinguishable'
                    ),
                )
                for row in entry['levels']
            ]
            lines += _table(
                (
                    'training FLOPs',
                    f'TPU-v4 core-hours at MFU {ASSUMED_MFU:g}',
                    'loss ratio ConvNet / ViT (power laws)',
                    '95% bootstrap interval',
                    'verdict',
                ),
                rows,
            )
            lines.append('')
        lines += [f'- {text}' for text in entry['exponents']] + ['']
    return lines


def write_report(
    preset: scaling.Preset,
    specs: Sequence[scaling.RunSpec],
    records: Sequence[dict[str, Any]],
    analysis: dict[str, Any],
    flops: dict[str, Any],
    workdir: Path,
    figures: Sequence[Path],
    sweep_seconds: float = 0.0,
    sweep_log: Sequence[dict[str, Any]] = (),
    *,
    comparisons: Sequence[dict[str, Any]] = (),
    plan: Plan | None = None,
) -> Path:
    """`<workdir>/report.md`: the grid, its cost, the models' FLOP counts and checks, and per
    family the LR-tuned runs, the fitted laws with their intervals, the compute-optimal choices
    and the learning rates (a best rate or budget still at a cap of `plan` is marked); then the
    frontiers compared (`comparisons`) with their verdicts, and the figures."""
    finished = [r for r in records if r['status'] == FINISHED]
    diverged = [r for r in records if r['status'] == DIVERGED]
    families = sorted({s.family for s in specs})
    budgets = sorted({s.epochs for s in specs})
    lines = [
        f'# Scaling study `{preset.name}`',
        '',
        f'Data: `{preset.dataset}` train split `{preset.train_split}`, held-out '
        f'`{preset.eval_split}`, images {preset.image_shape}; batch {preset.batch_size}. '
        f'Grid: families {families} x sizes x epoch budgets {budgets} (each its own warmup '
        f'+ cosine schedule) x learning rates a factor 2 apart: {len(specs)} runs, '
        f'{len(finished)} finished, {len(diverged)} diverged, '
        f'{len(specs) - len(records)} not run yet.',
        '',
        "Training FLOPs are XLA's count of the compiled train step (forward, backward, "
        'optimiser; multiply-add = 2; loop bodies multiplied by their trip counts) times the '
        "steps; evaluation is not included. Device-seconds are the training loop's measured "
        'seconds (from the logged throughput) x devices, on the device named; core-hours are '
        'those x cores per device / 3600. TPU-v4 core-hours convert the FLOPs: core-hours = '
        'FLOPs / (peak FLOP/s per core x MFU x 3600), with the peak '
        f'{compute.TPU_V4_PEAK_FLOPS_PER_CORE:.4g} FLOP/s (bfloat16; 275 TFLOP/s a chip of '
        f'two cores) and an assumed MFU of {ASSUMED_MFU:g}.',
        '',
    ]
    if plan is not None:
        lines += [
            f'Planned runs not done yet: {len(plan.runs)}. Cells whose best rate is still at a '
            f'cap: {len(plan.lr_capped)}; families whose compute-optimal budget is at the budget '
            f'cap: {list(plan.epochs_capped) or "none"}.',
            '',
        ]
    lines += _cost_lines(finished, sweep_log, sweep_seconds)
    lines += _model_lines(preset, families, flops)
    for family, result in analysis.items():
        lines += _family_lines(family, result, plan)
    if comparisons:
        lines += _comparison_lines(comparisons)
    if diverged:
        lines += ['## Diverged runs', '']
        lines += [f'- {r["run_id"]}: {r["error"][:120]}' for r in diverged] + ['']
    lines += ['## Figures', ''] + [f'![{p.stem}]({p.name})' for p in figures] + ['']
    path = workdir / 'report.md'
    path.write_text('\n'.join(lines))
    return path
