"""Trains the plain and the deformable ResNet of experiments/fashion_mnist_deformable.py on
rotated and zoomed Fashion-MNIST and writes one table: accuracy on the clean test images and on
the test images rotated by any angle and zoomed (one fixed draw, the training distribution),
parameters, FLOPs per example, train examples/s.

    python -m experiments.sweeps.deformable_comparison --workdir=workdirs/deformable
        [--models=resnet] [--num_epochs=1]

Each model trains in `<workdir>/<model>` through the ordinary trainer (an interrupted
comparison resumes; a finished model is not trained again). Writes `<workdir>/results.json`
and `<workdir>/results.md`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_collections
from absl import flags

from experiments.sweeps import comparison
from train import cli


def define_flags() -> None:
    """The program's flags, defined only when it runs: tests import this module beside other
    sweeps that define `--workdir` too."""
    flags.DEFINE_string('workdir', None, 'Folder for both runs and the results table.')
    flags.DEFINE_list('models', None, 'Subset of the models (default: both).')
    flags.DEFINE_float('num_epochs', None, 'Override the shared budget in epochs.')
    flags.mark_flag_as_required('workdir')


def measure(name: str, config: ml_collections.ConfigDict, run_dir: Path) -> dict:
    """Trains (or resumes) one model's run, then evaluates it on the clean test images and on
    the same images rotated by any angle and zoomed as in training."""
    import jax.numpy as jnp
    import numpy as np

    from experiments.analysis import warped_accuracy
    from experiments.analysis.runs import load_run
    from experiments.lessons.c08_residual import load_arrays
    from nets.tools.summary import flops_per_example
    from train.loop import train_and_evaluate

    summary = train_and_evaluate(config, run_dir)
    trained = load_run(run_dir)
    data_dir = config.dataset.data_dir or None
    test = load_arrays(config.dataset.name, config.dataset.eval_split, data_dir)
    images = jnp.asarray(test['image'], jnp.float32) / 255.0
    labels = jnp.asarray(test['label'])
    accuracy = warped_accuracy.warped_accuracy_fn(trained)
    # The test set's zoom range is the training one (the run's 'scale' op).
    zooms = [op['max_factor'] for op in config.augment if op['op'] == 'scale']
    max_zoom = zooms[0] if zooms else 1.0
    degrees, zoom = warped_accuracy.random_rotation_zoom(len(labels), max_zoom)
    identity = warped_accuracy.affine_matrices(np.zeros(len(labels), np.float32))
    warped = warped_accuracy.affine_matrices(degrees, zoom=zoom)
    return {
        'model': name,
        'registered_name': config.model.name,
        'clean_accuracy': accuracy(images, labels, identity),
        'warped_accuracy': accuracy(images, labels, warped),
        'parameters': summary['num_params'],
        'mflops_per_example': flops_per_example(trained.model, (1, *trained.info.example_shape))
        / 1e6,
        'train_examples_per_second': comparison.median_train_speed(run_dir),
        'epochs': summary['epochs'],
        'steps': summary['step'],
    }


def write_table(rows: list[dict], workdir: Path) -> None:
    (workdir / 'results.json').write_text(json.dumps(rows, indent=2))
    lines = [
        '| model | test accuracy, rotated + zoomed | clean test accuracy | parameters | '
        'MFLOPs/example (XLA, MAC=2) | train examples/s |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["model"]} (`{r["registered_name"]}`) | {r["warped_accuracy"]:.2%} | '
            f'{r["clean_accuracy"]:.2%} | {r["parameters"]:,} | {r["mflops_per_example"]:.1f} | '
            f'{r["train_examples_per_second"]:,.0f} |'
        )
    (workdir / 'results.md').write_text('\n'.join(lines) + '\n')


def main(argv: list[str]) -> None:
    del argv
    from experiments.fashion_mnist_deformable import MODELS, get_config
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    workdir = Path(flags.FLAGS.workdir)
    jobs = []
    for name in comparison.selected(flags.FLAGS.models, MODELS):
        config = get_config(f'model={name}')
        if flags.FLAGS.num_epochs is not None:
            config.num_epochs = flags.FLAGS.num_epochs
        jobs.append((name, functools.partial(measure, name, config, workdir / name)))
    comparison.run_all(jobs, workdir, write_table)


if __name__ == '__main__':
    define_flags()
    cli.run(main)
