"""Trains every model of experiments/fashion_mnist_convnets.py with the same budget and writes
one results table: test accuracy, parameters, FLOPs per example, train examples/s.

    python -m experiments.sweeps.convnet_comparison --workdir=workdirs/convnets [--models=mlp,cnn]
        [--num_epochs=3]

Each model trains in `<workdir>/<model>` through the ordinary trainer, so an interrupted
comparison resumes where it stopped and a finished model is not trained again. Writes
`<workdir>/results.json`, `<workdir>/results.md` and `<workdir>/accuracy_vs_flops.png`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from absl import flags

from experiments.sweeps import comparison
from train import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for every run and the results table.')
_MODELS = flags.DEFINE_list('models', None, 'Subset of the models (default: all).')
_NUM_EPOCHS = flags.DEFINE_float('num_epochs', None, 'Override the shared budget in epochs.')


def measure(name: str, workdir: Path, num_epochs: float | None) -> dict:
    """Trains (or resumes) one model and returns its row of the table."""
    import data
    import nets
    from experiments import fashion_mnist_convnets
    from nets.tools.summary import flops_per_example
    from train import config as config_lib
    from train.loop import train_and_evaluate

    config = fashion_mnist_convnets.get_config(name)
    if num_epochs is not None:
        config.num_epochs = num_epochs
    summary = train_and_evaluate(config, workdir / name)
    info = data.dataset_info(config.dataset.name, config.dataset.data_dir or None)
    kwargs = config_lib.model_kwargs(config)
    kwargs['num_classes'] = info.num_classes
    model = nets.create(config.model.name, **kwargs)
    return {
        'model': name,
        'registered_name': config.model.name,
        'test_accuracy': summary['eval']['accuracy'],
        'test_loss': summary['eval']['loss'],
        'parameters': summary['num_params'],
        'mflops_per_example': flops_per_example(model, (1, *info.example_shape)) / 1e6,
        'train_examples_per_second': comparison.median_train_speed(workdir / name),
        'epochs': summary['epochs'],
        'steps': summary['step'],
    }


def write_table(rows: list[dict], workdir: Path) -> None:
    (workdir / 'results.json').write_text(json.dumps(rows, indent=2))
    lines = [
        '| model | test accuracy | parameters | MFLOPs/example (XLA, MAC=2) | train examples/s |',
        '|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["model"]} (`{r["registered_name"]}`) | {r["test_accuracy"]:.2%} | '
            f'{r["parameters"]:,} | {r["mflops_per_example"]:.1f} | '
            f'{r["train_examples_per_second"]:,.0f} |'
        )
    (workdir / 'results.md').write_text('\n'.join(lines) + '\n')

    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r['mflops_per_example'], r['test_accuracy'] * 100, s=20 + r['parameters'] / 5e3)
        ax.annotate(
            r['model'],
            (r['mflops_per_example'], r['test_accuracy'] * 100),
            textcoords='offset points',
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xscale('log')
    ax.set_xlabel('MFLOPs per example (forward, XLA count)')
    ax.set_ylabel('Fashion-MNIST test accuracy (%)')
    ax.set_title(f'same budget: {rows[0]["epochs"]:.0f} epochs; marker area ~ parameters')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(workdir / 'accuracy_vs_flops.png', dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    from experiments.fashion_mnist_convnets import MODELS
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    names = comparison.selected(_MODELS.value, MODELS)
    workdir = Path(_WORKDIR.value)
    jobs = [(name, functools.partial(measure, name, workdir, _NUM_EPOCHS.value)) for name in names]
    comparison.run_all(jobs, workdir, write_table)


if __name__ == '__main__':
    flags.mark_flag_as_required('workdir')
    cli.run(main)
