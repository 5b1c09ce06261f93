"""The course's seq2seq claim on real translation: the context-vector encoder-decoder, Bahdanau
attention and the Transformer of experiments/translation.py, each trained with the same longer
budget from several seeds, scored by BLEU on the 1,000 test verses.

    python -m experiments.sweeps.translation_comparison --workdir=workdirs/translation_long \
        [--num_steps=1500] [--seeds=0,1] [--models=context,attention,transformer_small]

The default models are the three forms, the Transformer at transformer_small size; `transformer`
(transformer_tiny) is the fourth choice.

Runs go seed by seed (every model's seed 0 first), each in `<workdir>/<model>_seed<seed>`
through the ordinary trainer, so an interrupted comparison resumes where it stopped. Writes
`<workdir>/results.json` and `<workdir>/results.md` after every run: BLEU per seed, the mean,
and for each pair of models whether their seeds' BLEU ranges are disjoint (separated outside
seed noise) or overlap.

Hardware and time: the idle 2-core CPU (AMD EPYC, Zen 4): 9-12.5 min per context or attention
run, 16-21 min per transformer_small run at 1,500 steps; about 90 min for the default six.
Expected (2026-12-07, BLEU seeds 0 / 1): attention 14.86 / 14.71, transformer_small 10.82 /
10.92, context 3.85 / 3.73, every pair separated (transformer_tiny: 4.07 / 3.78, not separated
from context).
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

from absl import app, flags

from experiments.sweeps import comparison
from train import cli

DEFAULT_MODELS = ('context', 'attention', 'transformer_small')


def define_flags() -> None:
    """The program's flags, defined only when it runs: tests import this module beside other
    sweeps that define `--workdir` too."""
    flags.DEFINE_string('workdir', None, 'Folder for every run and the results table.')
    flags.DEFINE_list(
        'models', list(DEFAULT_MODELS), 'Models (choices: experiments/translation.py MODELS).'
    )
    flags.DEFINE_list('seeds', ['0', '1'], 'Seeds of every model.')
    flags.DEFINE_integer('num_steps', 1500, 'Training steps of every run (batch 64).')
    flags.mark_flag_as_required('workdir')


def run_config(model: str, seed: int, num_steps: int):
    """experiments/translation.py's config for `model` with this budget and seed, evaluated
    (and its 1,000 verses decoded) once, at the end."""
    from experiments import translation

    config = translation.get_config(f'model={model}')
    config.num_steps = num_steps
    config.seed = seed
    config.eval_every_steps = num_steps
    config.checkpoint_every_steps = 100
    return config


def measure(model: str, seed: int, config, run_dir: Path) -> dict:
    """Trains (or resumes) one run and returns its row."""
    from train.loop import train_and_evaluate

    summary = train_and_evaluate(config, run_dir)
    evaluation = summary['eval']
    return {
        'model': model,
        'registered_name': config.model.name,
        'seed': seed,
        'steps': summary['step'],
        'parameters': summary['num_params'],
        'bleu': evaluation['bleu'],
        'bleu_decoded_reference': evaluation['bleu_decoded_reference'],
        'loss': evaluation['loss'],
        'wall_seconds': summary['wall_seconds_this_session'],
    }


def separation(rows: list[dict]) -> list[dict]:
    """For each pair of models, whether one's worst seed beats the other's best (BLEU)."""
    by_model: dict[str, list[float]] = {}
    for row in rows:
        by_model.setdefault(row['model'], []).append(row['bleu'])
    pairs = []
    mean = {model: sum(bleus) / len(bleus) for model, bleus in by_model.items()}
    for a, b in itertools.combinations(by_model, 2):
        high, low = (a, b) if mean[a] >= mean[b] else (b, a)
        gap = min(by_model[high]) - max(by_model[low])
        pairs.append(
            {
                'better': high,
                'worse': low,
                'gap': gap,
                'separated': gap > 0 and len(by_model[high]) > 1 and len(by_model[low]) > 1,
            }
        )
    return pairs


def write_table(rows: list[dict], workdir: Path) -> None:
    pairs = separation(rows)
    (workdir / 'results.json').write_text(json.dumps({'runs': rows, 'pairs': pairs}, indent=2))
    lines = [
        '| model | seed | steps | BLEU | BLEU vs decoded reference | test loss | parameters | '
        'wall s (last session) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["model"]} (`{r["registered_name"]}`) | {r["seed"]} | {r["steps"]} | '
            f'{r["bleu"]:.2f} | {r["bleu_decoded_reference"]:.2f} | {r["loss"]:.3f} | '
            f'{r["parameters"]:,} | {r["wall_seconds"]:.0f} |'
        )
    lines.append('')
    for p in pairs:
        verdict = 'separated' if p['separated'] else 'not separated'
        lines.append(
            f'- {p["better"]} over {p["worse"]}: {verdict} (worst seed of {p["better"]} minus '
            f'best seed of {p["worse"]}: {p["gap"]:+.2f} BLEU)'
        )
    (workdir / 'results.md').write_text('\n'.join(lines) + '\n')


def main(argv: list[str]) -> None:
    del argv
    from experiments.translation import MODELS
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    names = comparison.selected(flags.FLAGS.models, MODELS)
    try:
        seeds = [int(s) for s in flags.FLAGS.seeds]
    except ValueError:
        raise app.UsageError(f'--seeds must be integers, got {flags.FLAGS.seeds}') from None
    workdir = Path(flags.FLAGS.workdir)
    jobs = [
        (
            f'{name}, seed {seed}',
            functools.partial(
                measure,
                name,
                seed,
                run_config(name, seed, flags.FLAGS.num_steps),
                workdir / f'{name}_seed{seed}',
            ),
        )
        for seed in seeds  # every model's seed 0 first
        for name in names
    ]
    comparison.run_all(jobs, workdir, write_table)


if __name__ == '__main__':
    define_flags()
    cli.run(main)
