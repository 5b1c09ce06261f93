"""What a scaling study costs before it runs: each model's FLOP counts (kept in the study's
flops.json) and the estimated wall time of a preset's grid from those counts and a probe of a
few train steps per family (`python -m experiments.sweeps.scaling_study --estimate`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import data
from experiments.analysis import compute
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps.scaling_grid import size_key


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


# What a run costs beyond its training loop and evaluation FLOPs: building the model and data,
# checkpoints, summaries (cpu_tiny's runs spent about this between their wall and loop times).
RUN_OVERHEAD_SECONDS = 4.0


def _estimated_seconds(
    runs: Sequence[tuple[str, float]],
    flops: dict[str, dict[str, float]],
    evaluation_flops: dict[str, float],
    flops_per_second: float,
    seconds_per_run: float,
    steps_per_epoch: int,
) -> float:
    """Seconds of `runs` ((size, epochs) pairs): training and evaluation FLOPs at
    `flops_per_second`, plus `seconds_per_run`."""
    steps = [
        (flops[size]['train_step_flops'], max(1, math.ceil(epochs * steps_per_epoch)))
        for size, epochs in runs
    ]
    evaluating = sum(evaluation_flops[size] for size, _ in runs) / flops_per_second
    return compute.sweep_seconds(steps, flops_per_second, seconds_per_run) + evaluating


def estimate(
    preset: scaling.Preset, base: Sequence[scaling.RunSpec], workdir: Path, probe_steps: int = 5
) -> dict[str, Any]:
    """Estimated wall time of a study from each model's FLOPs per train step (flops.json) and
    one probe per family: the steps per second of a few steps of its middle size, whose
    FLOP/s stand for the family's, and its first step (compilation) plus RUN_OVERHEAD_SECONDS
    for each run's fixed cost.
    Evaluation is counted as forward FLOPs at the same FLOP/s. Gives the base grid, and the
    most the extensions can add: every budget up to `max_epochs` and every cell's rates widened
    by `max_lr_steps` on the side they lean to (one side, as a cell extends one way)."""
    train_examples = len(data.load_source(preset.dataset, preset.train_split, preset.data_dir))
    eval_examples = len(data.load_source(preset.dataset, preset.eval_split, preset.data_dir))
    steps_per_epoch = data.steps_per_epoch(train_examples, preset.batch_size)
    families = list(dict.fromkeys(s.family for s in base))
    budgets = sorted({s.epochs for s in base})
    extra_budgets = []
    while preset.max_epochs and (extra_budgets or budgets)[-1] * 2 <= preset.max_epochs + 1e-9:
        extra_budgets.append((extra_budgets or budgets)[-1] * 2)
    result: dict[str, Any] = {'steps_per_epoch': steps_per_epoch, 'families': {}}
    base_seconds = extension_seconds = 0.0
    for family_name in families:
        family = preset.families[family_name]
        sizes = list(family.sizes)
        middle = sizes[len(sizes) // 2]
        config = scaling.run_config(
            preset, family_name, middle, budgets[0], family.learning_rates[0]
        )
        steps_per_second, first_step = compute.measured_steps_per_second(
            config, preset.image_shape, preset.num_classes, steps=probe_steps
        )
        flops = {size: model_flops(preset, family_name, size, workdir) for size in sizes}
        flops_per_second = flops[middle]['train_step_flops'] * steps_per_second
        evaluation = {s: f['forward_flops_per_example'] * eval_examples for s, f in flops.items()}

        base_runs = [(s.size, s.epochs) for s in base if s.family == family_name]
        extra = [(size, e) for e in extra_budgets for size in sizes for _ in family.learning_rates]
        widened = [
            (size, e) for e in budgets + extra_budgets for size in sizes
        ] * preset.max_lr_steps
        family_base, family_extra = (
            _estimated_seconds(
                runs,
                flops,
                evaluation,
                flops_per_second,
                first_step + RUN_OVERHEAD_SECONDS,
                steps_per_epoch,
            )
            for runs in (base_runs, extra + widened)
        )
        base_seconds += family_base
        extension_seconds += family_extra
        result['families'][family_name] = {
            'probe_size': middle,
            'steps_per_second': steps_per_second,
            'flops_per_second': flops_per_second,
            'first_step_seconds': first_step,
            'base_runs': len(base_runs),
            'base_seconds': family_base,
            'most_extension_runs': len(extra) + len(widened),
            'most_extension_seconds': family_extra,
        }
    result['base_seconds'] = base_seconds
    result['most_seconds'] = base_seconds + extension_seconds
    result['extra_budgets'] = extra_budgets
    return result
