"""DCGAN vs DDPM on Fashion-MNIST with the same training compute, scored by a Fréchet distance in
the feature space of a Fashion-MNIST classifier trained by this codebase.

    python -m experiments.sweeps.generative_comparison --workdir=workdirs/generative \
        [--budget_tflops=8] [--classifier_workdir=workdirs/convnets/cnn] [--num_samples=1000]

Budget: equal training FLOPs. Each model's train step is compiled exactly as the trainer
compiles it (train/steps.py, one device) and XLA's cost analysis counts its FLOPs (multiply-add
= 2; the GAN step holds D's and G's updates); num_steps = budget / FLOPs per step. Wall times
are reported beside it, but on a CPU shared with other jobs they measure the machine's load
as much as the model.

Measure (experiments/analysis/frechet.py): the penultimate-layer features (the 128-wide input of
the final Dense 'head') of the `cnn` classifier of experiments/fashion_mnist_convnets.py (trained if
`--classifier_workdir` holds no run). `--num_samples` generated images are compared with as many
real test images (half A); the floor is half A against a disjoint half B of the same size.
Coverage: the fraction of the 10 classes the classifier assigns to at least one sample, and
the histogram of its predictions. The DDPM samples with DDIM (50 steps, η = 0) for the table;
its 1,000-step ancestral sampler is timed on `--ancestral_samples` images.

Writes `<workdir>/{gan,ddpm}` (ordinary resumable runs), `<workdir>/results.json`, and into
`--docs_dir`: generative_comparison.md, dcgan_samples.png, ddpm_samples.png,
ddpm_ancestral_samples.png and generative_coverage.png.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from absl import flags, logging

from train import cli
from train.pictures import read_metrics
from train.workdir import read_run_config

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/generative', 'Folder for both runs.')
_CLASSIFIER = flags.DEFINE_string(
    'classifier_workdir',
    'workdirs/convnets/cnn',
    'A Fashion-MNIST classifier run (trained here if missing).',
)
_BUDGET = flags.DEFINE_float('budget_tflops', 8.0, 'Training TFLOPs for each model.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1000, 'Generated images per model scored.')
_ANCESTRAL = flags.DEFINE_integer(
    'ancestral_samples', 8, 'Images drawn with the 1,000-step ancestral sampler.'
)
_DDIM_STEPS = flags.DEFINE_integer('ddim_steps', 50, 'DDIM steps of the scored DDPM samples.')
_DOCS = flags.DEFINE_string('docs_dir', 'docs', 'Where the table and pictures go.')

SAMPLE_BATCH = 250


def train_step_flops(config) -> float:
    """FLOPs of one train step of `config`, as the trainer builds it (loops corrected)."""
    import data
    from experiments.analysis import compute

    info = data.dataset_info(config.dataset.name, config.dataset.data_dir or None)
    return compute.train_step_flops(config, info.example_shape, info.num_classes, info=info)


def seconds_per_step(workdir: Path) -> float:
    """The median seconds per train step over the logged windows, the first one (which holds
    the compilation) left out when there are others."""
    records = read_metrics(workdir / 'metrics.jsonl').get('train', [])
    batch_size = read_run_config(workdir).batch_size
    speeds = [r['examples_per_second'] for r in records[1:]] or [
        r['examples_per_second'] for r in records
    ]
    return batch_size / statistics.median(speeds)


def generate(sample_fn, count: int, seed: int) -> tuple[Any, float]:
    """`count` images from `sample_fn(key) -> batch`, and the seconds per image (compilation
    excluded: one batch is drawn first and thrown away)."""
    import jax
    import numpy as np

    jax.block_until_ready(sample_fn(jax.random.PRNGKey(seed + 10_000)))
    started = time.perf_counter()
    batches = []
    for i in range((count + SAMPLE_BATCH - 1) // SAMPLE_BATCH):
        batches.append(
            jax.block_until_ready(sample_fn(jax.random.fold_in(jax.random.PRNGKey(seed), i)))
        )
    seconds = time.perf_counter() - started
    images = np.concatenate([np.asarray(b) for b in batches])[:count]
    return images, seconds / (len(batches) * batches[0].shape[0])


def score(
    name: str, images, extractor, reference, floor: float, per_image: float, extra: dict[str, Any]
) -> dict[str, Any]:
    from experiments.analysis import frechet

    features, predicted = extractor(frechet.to_pixels(images))
    coverage, histogram = frechet.class_coverage(predicted, extractor.num_classes)
    return {
        'model': name,
        'frechet_distance': frechet.feature_distance(features, reference),
        'floor': floor,
        'coverage': coverage,
        'class_histogram': histogram.tolist(),
        'seconds_per_image': per_image,
        'samples': len(images),
        **extra,
    }


def write_docs(
    rows: list[dict[str, Any]], context: dict[str, Any], docs: Path, class_names: list[str]
) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    lines = [
        '# DCGAN vs DDPM on Fashion-MNIST at the same training compute',
        '',
        f'Generated by `{context["command"]}` on {context["hardware"]}.',
        '',
        f'**Budget: equal training FLOPs**, {context["budget_tflops"]:g} TFLOPs per model. Each '
        "model's train step was compiled as the trainer compiles it and counted by XLA's cost "
        "analysis (multiply-add = 2); the GAN's step holds one D and one G update.",
        '',
        '| | DCGAN | DDPM |',
        '|---|---|---|',
    ]
    gan, ddpm = context['runs']['gan'], context['runs']['ddpm']
    for label, key, fmt in (
        ('model', 'model', '{}'),
        ('parameters', 'num_params', '{:,}'),
        ('batch size', 'batch_size', '{}'),
        ('GFLOPs per train step (XLA)', 'gflops_per_step', '{:.2f}'),
        ('train steps', 'steps', '{:,}'),
        ('training FLOPs (T)', 'tflops', '{:.2f}'),
        ('seconds per train step (median)', 'seconds_per_step', '{:.3f}'),
        ('train-step time: steps x median (s)', 'train_seconds', '{:.0f}'),
        ('run wall time incl. compile, evals, checkpoints (s)', 'wall_seconds', '{:.0f}'),
    ):
        lines.append(f'| {label} | {fmt.format(gan[key])} | {fmt.format(ddpm[key])} |')
    lines += [
        '',
        f'Scores on {rows[0]["samples"]:,} samples each, in the feature space of '
        f'{context["classifier"]}. The floor is the distance between two disjoint halves of '
        f'real test images of the same size ({rows[0]["samples"]:,} each): what a perfect '
        'generator would score here. These are not Inception FIDs: compare them only with each '
        'other and with the floor.',
        '',
        '| generator | Fréchet distance | real-vs-real floor | class coverage | '
        'class histogram vs real (TV) | sampling time per image |',
        '|---|---|---|---|---|---|',
    ]
    real_histogram = np.asarray(rows[0]['class_histogram'])
    for k, r in enumerate(rows):
        fd = '—' if r['frechet_distance'] is None else f'{r["frechet_distance"]:.2f}'
        coverage = '—' if r['coverage'] is None else f'{r["coverage"]:.0%}'
        if k == 0:
            tv = 'reference'
        elif r['class_histogram'] is None:
            tv = '—'
        else:  # total variation: the share of samples that would have to change class
            tv = f'{0.5 * np.abs(np.asarray(r["class_histogram"]) - real_histogram).sum():.2f}'
        lines.append(
            f'| {r["model"]} | {fd} | {r["floor"]:.2f} | {coverage} | {tv} | '
            f'{r["seconds_per_image"] * 1e3:,.1f} ms |'
        )
    lines += [
        '',
        'Predicted-class histogram of the samples (fraction per class):',
        '',
        '| class | ' + ' | '.join(r['model'] for r in rows if r['class_histogram']) + ' |',
        '|---|' + '---|' * sum(1 for r in rows if r['class_histogram']),
    ]
    for i, name in enumerate(class_names):
        lines.append(
            f'| {name} | '
            + ' | '.join(f'{r["class_histogram"][i]:.1%}' for r in rows if r['class_histogram'])
            + ' |'
        )
    lines += [
        '',
        '![DCGAN samples](dcgan_samples.png) ![DDPM samples](ddpm_samples.png)',
        '',
        'Left: DCGAN, right: DDPM (DDIM, η = 0), the first 64 scored samples of each. '
        '`ddpm_ancestral_samples.png`: the ancestral sampler. `generative_coverage.png`: '
        'the histograms.',
        '',
    ]
    lines += [
        "Reading the table: the distance is measured in the classifier's feature space, so "
        'only its ratio to the floor and the ranking mean something. Coverage counts a class '
        'once a single sample is assigned to it, which at this sample size says little; the '
        'total-variation distance between the predicted-class histograms of the samples and of '
        'real images shows how unevenly a generator spreads over the classes (mode '
        "preference). At equal FLOPs the GAN gets several times the DDPM's steps, because a "
        'U-Net step at full resolution costs several DCGAN steps; sampling is one generator '
        'pass for the GAN against 50 (DDIM) or 1,000 (ancestral) U-Net passes.',
        '',
    ]
    docs.mkdir(parents=True, exist_ok=True)
    (docs / 'generative_comparison.md').write_text('\n'.join(lines))

    with_histograms = [r for r in rows if r['class_histogram']]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(with_histograms)
    for k, r in enumerate(with_histograms):
        ax.bar(
            np.arange(len(class_names)) + k * width, r['class_histogram'], width, label=r['model']
        )
    ax.set_xticks(
        np.arange(len(class_names)) + 0.4 - width / 2,
        class_names,
        rotation=30,
        ha='right',
        fontsize=8,
    )
    ax.set_ylabel('fraction of samples')
    ax.set_title('classes the classifier assigns to the samples')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / 'generative_coverage.png', dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    import jax
    import numpy as np

    import data
    from experiments import fashion_mnist_convnets, fashion_mnist_ddpm, fashion_mnist_gan
    from experiments.analysis import frechet
    from experiments.analysis.runs import load_run
    from train import pictures
    from train.loop import train_and_evaluate
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    workdir, docs = Path(_WORKDIR.value), Path(_DOCS.value)
    classifier_dir = Path(_CLASSIFIER.value)
    if not (classifier_dir / 'summary.json').exists():
        logging.info('=== classifier for the features: %s', classifier_dir)
        train_and_evaluate(fashion_mnist_convnets.get_config('cnn'), classifier_dir)
    budget = _BUDGET.value * 1e12

    runs: dict[str, dict[str, Any]] = {}
    for name, config in (
        ('gan', fashion_mnist_gan.get_config()),
        ('ddpm', fashion_mnist_ddpm.get_config()),
    ):
        flops = train_step_flops(config)
        config.num_steps = max(1, round(budget / flops))
        # Four evaluations (sample grids), the last one at the final step.
        config.eval_every_steps = config.checkpoint_every_steps = -(-config.num_steps // 4)
        logging.info(
            '=== %s: %.2f GFLOPs per step -> %d steps', name, flops / 1e9, config.num_steps
        )
        summary = train_and_evaluate(config, workdir / name)
        runs[name] = {
            'model': config.model.name,
            'num_params': summary['num_params'],
            'batch_size': config.batch_size,
            'gflops_per_step': flops / 1e9,
            'steps': summary['step'],
            'tflops': flops * summary['step'] / 1e12,
            'seconds_per_step': seconds_per_step(workdir / name),
            'train_seconds': seconds_per_step(workdir / name) * summary['step'],
            'wall_seconds': summary['wall_seconds_this_session'],
            'eval': summary['eval'],
        }

    # Real reference and floor: 2n distinct test images, halves A and B.
    n = _NUM_SAMPLES.value
    extractor = frechet.FeatureExtractor(classifier_dir)
    test = data.load_source('fashion_mnist', 'test')
    chosen = np.random.default_rng(0).choice(len(test), 2 * n, replace=False)
    real = np.stack([test[int(i)]['image'] for i in chosen])
    half_a, half_b = frechet.disjoint_halves(2 * n, seed=1)
    real_features, real_predicted = extractor(real)
    reference = real_features[half_a]
    floor = frechet.feature_distance(real_features[half_a], real_features[half_b])
    real_coverage, real_histogram = frechet.class_coverage(
        real_predicted[half_b], extractor.num_classes
    )
    rows = [
        {
            'model': f'real test images (half B, {n:,})',
            'frechet_distance': floor,
            'floor': floor,
            'coverage': real_coverage,
            'class_histogram': real_histogram.tolist(),
            'seconds_per_image': 0.0,
            'samples': n,
        }
    ]

    gan = load_run(workdir / 'gan')
    gan_sample = jax.jit(lambda key: gan.task.sample(gan.variables, key, SAMPLE_BATCH))
    images, per_image = generate(gan_sample, n, seed=1)
    rows.append(score('DCGAN', images, extractor, reference, floor, per_image, {}))
    pictures.save_image_grid((images[:64] + 1) / 2, docs / 'dcgan_samples.png')

    ddpm = load_run(workdir / 'ddpm')
    ddim_sample = jax.jit(
        lambda key: ddpm.task.sample(
            ddpm.variables, key, SAMPLE_BATCH, sampler='ddim', steps=_DDIM_STEPS.value, eta=0.0
        )
    )
    images, per_image = generate(ddim_sample, n, seed=2)
    rows.append(
        score(
            f'DDPM, DDIM sampler ({_DDIM_STEPS.value} steps, η = 0)',
            images,
            extractor,
            reference,
            floor,
            per_image,
            {},
        )
    )
    pictures.save_image_grid((images[:64] + 1) / 2, docs / 'ddpm_samples.png')

    count = _ANCESTRAL.value
    ancestral = jax.jit(lambda key: ddpm.task.sample(ddpm.variables, key, count, sampler='ddpm'))
    jax.block_until_ready(ancestral(jax.random.PRNGKey(4)))  # compile
    started = time.perf_counter()
    images = np.asarray(jax.block_until_ready(ancestral(jax.random.PRNGKey(3))))
    per_image = (time.perf_counter() - started) / count
    pictures.save_image_grid((images + 1) / 2, docs / 'ddpm_ancestral_samples.png')
    _, predicted = extractor(frechet.to_pixels(images))
    rows.append(
        {
            'model': f'DDPM, ancestral sampler ({ddpm.task.schedule.timesteps} steps; '
            f'{count} images, not scored)',
            'frechet_distance': None,
            'floor': floor,
            'coverage': None,
            'class_histogram': None,
            'seconds_per_image': per_image,
            'samples': count,
            'ancestral_predicted': predicted.tolist(),
        }
    )

    classifier = load_run(classifier_dir)
    accuracy = json.loads((classifier_dir / 'summary.json').read_text())['eval']['accuracy']
    context = {
        'command': 'python -m experiments.sweeps.generative_comparison '
        f'--workdir={workdir} --budget_tflops={_BUDGET.value:g} '
        f'--num_samples={n}',
        'hardware': f'{jax.devices()[0].platform.upper()} ({jax.device_count()} XLA device, '
        'a 2-core machine shared with other jobs)',
        'budget_tflops': _BUDGET.value,
        'runs': runs,
        'classifier': f'the `{classifier.config.model.name}` classifier trained in '
        f'`{classifier_dir}` (step {classifier.step}, test accuracy '
        f'{accuracy:.1%}; penultimate layer: the '
        f'{reference.shape[1]}-wide input of its final Dense `head`)',
    }
    (workdir / 'results.json').write_text(json.dumps({'rows': rows, **context}, indent=2))
    write_docs(rows, context, docs, list(extractor.run.info.class_names))
    print((docs / 'generative_comparison.md').read_text())


if __name__ == '__main__':
    cli.run(main)
