"""Scaling studies: FLOP counts against analytic ones, the fitted laws against known exponents,
the frontier, the presets, a sweep that skips finished runs and resumes interrupted ones, and a
whole study (cpu_small at a drastically reduced size) from training to its report."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import scaling as scaling_config
from experiments.analysis import compute
from experiments.analysis import scaling_laws as laws
from experiments.sweeps import scaling_analysis as analysis_lib
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps import scaling_plan, scaling_plots
from experiments.sweeps import scaling_report as report
from experiments.sweeps import scaling_study as study
from nets.tools import flops as flop_counter
from tests.conftest import FAST_COMPILE
from train.config import validate

# --- FLOP counts -------------------------------------------------------------------------------


def _xla_forward_flops(module: nn.Module, shape: tuple[int, ...]) -> float:
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))
    return flop_counter.loop_corrected_flops(
        module.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32)
    ).total


@pytest.mark.parametrize(
    'batch,features_in,features_out,bias', [(8, 16, 32, True), (3, 7, 5, False)]
)
def test_dense_flops_equal_analytic(batch, features_in, features_out, bias):
    flops = _xla_forward_flops(nn.Dense(features_out, use_bias=bias), (batch, features_in))
    assert flops == flop_counter.dense_flops(batch, features_in, features_out, bias=bias)


@pytest.mark.parametrize(
    'size,kernel,strides,padding,groups',
    [
        ((10, 10), (3, 3), (1, 1), 'SAME', 1),  # padding taps are not counted
        ((10, 10), (3, 3), (1, 1), 'VALID', 1),
        ((11, 9), (3, 5), (2, 2), 'SAME', 1),
        ((8, 8), (3, 3), (1, 1), 'SAME', 4),  # grouped
        ((12, 12), (4, 4), (4, 4), 'VALID', 1),  # a ViT patch embedding
    ],
)
def test_conv_flops_equal_analytic(size, kernel, strides, padding, groups):
    conv = nn.Conv(8, kernel, strides=strides, padding=padding, feature_group_count=groups)
    flops = _xla_forward_flops(conv, (2, *size, 8))
    assert flops == flop_counter.conv_flops(
        2, size, kernel, 8, 8, strides=strides, padding=padding, feature_group_count=groups
    )


def test_scan_bodies_are_counted_once_per_iteration():
    def chain(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=7)[0]

    def nested(x, w):
        return jax.lax.scan(lambda c, _: (chain(c, w), None), x, None, length=3)[0]

    x = jax.ShapeDtypeStruct((16, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    product = 2 * 16 * 64 * 64
    assert flop_counter.xla_counts_loop_body_once()
    count = flop_counter.loop_corrected_flops(chain, x, w)
    assert count.xla < 2 * product  # what XLA alone reports: one iteration
    assert count.total == pytest.approx(7 * product, rel=1e-3)
    assert flop_counter.loop_corrected_flops(nested, x, w).total == pytest.approx(
        21 * product, rel=1e-3
    )
    # Forward and backward scans of the gradient: three products per iteration.
    grad = jax.grad(lambda w, x: chain(x, w).sum())
    assert flop_counter.loop_corrected_flops(grad, w, x).total == pytest.approx(
        3 * 7 * product, rel=0.05
    )
    assert flop_counter.analytic_forward_flops(chain, x, w) == 7 * product


def test_recurrent_model_train_flops_match_analytic_with_the_loop_correction():
    import nets

    model = nets.create('lstm', num_classes=4, hidden_size=32, num_layers=1)
    shape = (8, 20, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))

    def loss(params, x):
        return model.apply({'params': params}, x).sum()

    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    count = flop_counter.loop_corrected_flops(jax.grad(loss), variables['params'], x)
    analytic = 3 * flop_counter.analytic_forward_flops(
        lambda p, x: model.apply({'params': p}, x), variables['params'], x
    )
    # 20 time steps: XLA alone counts one step of each loop (the LSTM's weight gradients are
    # products outside its loops, nets.kernels.fused_lstm, which XLA does count).
    assert count.loop_correction > 1.5 * count.xla
    assert count.total == pytest.approx(analytic, rel=0.15)


def test_vit_train_step_is_six_n_per_token_within_15_percent():
    config = scaling.run_config('cpu_tiny', 'vit', 'ti', 1.0, 1e-3)
    config.model.update(hidden_size=64, depth=2, num_heads=2, mlp_dim=256)
    report = compute.flop_report(config, (28, 28, 1), 10, batch_size=8)
    xla = report['train_step_flops']
    assert report['transformer_6n_attention_flops'] == pytest.approx(xla, rel=0.15)
    assert report['analytic_train_step_flops'] == pytest.approx(xla, rel=0.15)


def test_core_hours_and_loop_seconds(tmp_path):
    assert compute.cores_per_device('tpu', 'TPU v4') == 2
    assert compute.cores_per_device('tpu', 'TPU v3') == 1
    assert compute.core_hours(3600.0, 2) == 2.0
    metrics = tmp_path / 'metrics.jsonl'
    records = [
        {'step': 10, 'kind': 'train', 'examples_per_second': 100.0},
        {'step': 10, 'kind': 'eval', 'loss': 1.0},
        {'step': 20, 'kind': 'train', 'examples_per_second': 200.0},
    ]
    metrics.write_text('\n'.join(json.dumps(r) for r in records))
    assert compute.train_loop_seconds(metrics, batch_size=20) == pytest.approx(2.0 + 1.0)


# --- Laws --------------------------------------------------------------------------------------


def test_power_law_fit_recovers_the_exponent_from_noisy_points():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e12, 1e17, 12)
    loss = 40.0 * c**-0.12 * np.exp(rng.normal(0, 0.02, c.size))
    fit = laws.fit_power_law(c, loss, num_resamples=300)
    assert fit.params['b'] == pytest.approx(0.12, abs=0.01)
    low, high = fit.intervals['b']
    assert low < 0.12 < high and high - low < 0.02
    assert fit.intervals['a'][0] < 40.0 < fit.intervals['a'][1]


def test_saturating_fit_recovers_exponent_and_floor():
    rng = np.random.default_rng(1)
    c = np.geomspace(1e10, 1e16, 16)
    truth = {'a': 80.0, 'b': 0.2, 'c': 0.3, 'd': 3e10}
    loss = (truth['c'] + truth['a'] * (c + truth['d']) ** -truth['b']) * np.exp(
        rng.normal(0, 0.005, c.size)
    )
    fit = laws.fit_saturating(c, loss, num_resamples=200)
    assert fit.params['b'] == pytest.approx(0.2, abs=0.04)
    assert fit.params['c'] == pytest.approx(0.3, abs=0.06)
    for name in ('b', 'c'):
        low, high = fit.intervals[name]
        assert low <= truth[name] <= high, (name, fit.intervals[name])
    assert fit.num_bootstrap > 150
    assert np.allclose(fit.predict(c), loss, rtol=0.03)


def test_log_linear_fit_and_too_few_points():
    c = np.geomspace(1, 1e6, 8)
    fit = laws.fit_log_linear(c, 3.0 * c**0.5, num_resamples=50)
    assert fit.params['p'] == pytest.approx(0.5) and fit.params['k'] == pytest.approx(3.0)
    with pytest.raises(ValueError, match='at least 5 points'):
        laws.fit_saturating(c[:4], c[:4] ** -0.1)


def test_frontier_is_the_lower_envelope():
    rng = np.random.default_rng(2)
    compute_values = rng.uniform(1, 100, 200)
    loss = 1 / compute_values**0.3 + rng.uniform(0, 0.3, 200)
    loss[5] = np.nan  # a diverged run never sits on the frontier
    frontier = laws.pareto_frontier(compute_values, loss)
    assert 5 not in frontier
    assert np.all(np.diff(compute_values[frontier]) > 0) and np.all(np.diff(loss[frontier]) < 0)
    on = set(frontier.tolist())
    for i in range(200):
        cheaper = (compute_values <= compute_values[i]) & (np.arange(200) != i)
        best_cheaper = np.nanmin(np.where(cheaper, loss, np.inf))
        if i in on:
            assert loss[i] < best_cheaper
        elif np.isfinite(loss[i]):
            assert best_cheaper <= loss[i]
    assert laws.pareto_frontier([1, 2, 3], [3.0, 1.0, 2.0]).tolist() == [0, 1]


def test_compute_optimal_picks_the_lower_curve_within_its_range():
    # Small model: better below 1e3 FLOPs; big model: better above.
    sizes = ['s'] * 3 + ['b'] * 3
    params = [10] * 3 + [100] * 3
    compute_values = [1e2, 1e3, 1e4, 1e3, 1e4, 1e5]
    loss = [1.0, 0.8, 0.75, 0.9, 0.6, 0.4]
    epochs = [1, 10, 100, 1, 10, 100]
    optimal = laws.compute_optimal(sizes, params, compute_values, loss, epochs, num_levels=5)
    assert [o.size for o in optimal] == ['s', 's', 'b', 'b', 'b']
    # At 10^3.5 FLOPs the big model has spent 10^0.5 epochs (log-log interpolation).
    assert optimal[2].epochs == pytest.approx(10**0.5) and optimal[2].candidates == 2
    assert optimal[0].candidates == 1
    assert all(a.loss >= b.loss for a, b in zip(optimal, optimal[1:]))


def test_compute_optimal_keeps_a_cheaper_finished_run_that_beats_the_larger_model():
    # The small model's range ends at 10 FLOPs with a loss the big one only beats at 200.
    optimal = laws.compute_optimal(
        ['s', 's', 'b', 'b'],
        [1, 1, 9, 9],
        [1, 10, 20, 200],
        [1.0, 0.5, 0.9, 0.3],
        [1, 10, 1, 10],
        num_levels=7,
    )
    at_20 = min(optimal, key=lambda o: abs(o.compute - 20))
    assert at_20.size == 's' and at_20.spent == 10 and at_20.epochs == 10
    assert optimal[-1].size == 'b' and optimal[-1].loss == pytest.approx(0.3)


def test_best_learning_rate():
    assert laws.best_learning_rate([0.1, 0.2], [1.0, 0.9]) == (0.2, True)
    rate, edge = laws.best_learning_rate([0.1, 0.2, 0.4], [1.0, 0.8, 1.0])
    assert rate == pytest.approx(0.2) and not edge
    rate, _ = laws.best_learning_rate([0.1, 0.2, 0.4], [1.0, 0.8, 0.9])
    assert 0.2 < rate < 0.4
    assert laws.best_learning_rate([0.1, 0.2], [float('nan'), 1.0]) == (0.2, True)


# --- Presets -----------------------------------------------------------------------------------


def test_cpu_tiny_grid_is_the_promised_one():
    preset = scaling.PRESETS['cpu_tiny']
    runs = scaling.grid('cpu_tiny')
    assert len(runs) == 54  # (4 NFNet + 5 ViT sizes) x 3 budgets x 2 rates
    assert {r.family for r in runs} == {'nfnet', 'vit'}
    assert preset.families['nfnet'].optimizer['agc_clip'] > 0  # NFNets train with AGC
    # ResNet stays available for `--families=resnet,vit`.
    assert {r.family for r in scaling.grid('cpu_tiny', ['resnet'])} == {'resnet'}
    for family in ('nfnet', 'resnet', 'vit'):
        rates = preset.families[family].learning_rates
        assert len(preset.families[family].sizes) >= 4 and len(rates) == 2
        assert rates[1] == pytest.approx(2 * rates[0])
    assert len(preset.epochs) >= 3
    assert len({r.run_id for r in runs}) == 54
    spec = runs[-1]
    config = scaling_config.get_config(spec.config_arg)
    assert config == scaling.run_config(
        spec.preset, spec.family, spec.size, spec.epochs, spec.learning_rate
    )


@pytest.mark.parametrize('preset', sorted(scaling.PRESETS))
def test_every_run_config_of_every_preset_validates(preset):
    families = sorted(scaling.PRESETS[preset].families)
    for spec in scaling.grid(preset, families):
        config = scaling.run_config(preset, spec.family, spec.size, spec.epochs, spec.learning_rate)
        validate(config)
        assert config.schedule.name == 'warmup_cosine' and config.num_epochs == spec.epochs
        assert config.schedule.warmup_epochs < spec.epochs


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ValueError, match="'vit'"):
        scaling.grid('cpu_tiny', ['transformer'])
    with pytest.raises(ValueError, match="'w8'"):
        scaling.run_config('cpu_tiny', 'resnet', 'w1000', 1.0, 0.1)
    with pytest.raises(ValueError, match='tpu_imagenet'):
        scaling_config.get_config('preset=gpu_huge')


def _one_step(config, image_shape, num_classes):
    """Builds the trainer's model, task, optimiser and train step, and runs one step on random
    images on the CPU."""
    from train.loop import create_model
    from train.optim import build_optimizer
    from train.sharding import host_to_global, make_mesh
    from train.steps import init_train_state, make_train_step
    from train.tasks import create_task

    info = compute._dataset_info(config, image_shape, num_classes)
    task = create_task('classify', model=create_model(config, info), info=info)
    mesh = make_mesh(jax.devices()[:1])
    tx, _ = build_optimizer(config.optimizer, config.schedule, steps_per_epoch=10, total_steps=20)
    state = init_train_state(task, tx, config.seed, mesh)
    rng = np.random.default_rng(0)
    batch = {
        'image': rng.integers(0, 256, (config.batch_size, *image_shape), dtype=np.uint8),
        'label': rng.integers(0, num_classes, config.batch_size).astype(np.int32),
    }
    state, metrics = make_train_step(task, tx, mesh, skip_nonfinite=False)(
        state, host_to_global(batch, mesh)
    )
    return int(state.step), float(metrics['loss'])


@pytest.mark.parametrize(
    'preset,family',
    [
        ('tpu_imagenet', 'nfnet'),
        ('tpu_imagenet', 'vit'),
        ('gpu_h100', 'nfnet'),
        ('gpu_h100', 'vit'),
    ],
)
def test_accelerator_preset_steps_compile_and_run_on_cpu_at_reduced_size(preset, family):
    """The TPU and GPU recipes (optimiser, AGC, dtype, schedule) at the smallest rung, shrunk to a
    width and batch the CPU can take: one train step compiles, runs and gives a finite loss."""
    spec = scaling.PRESETS[preset]
    size = next(iter(spec.families[family].sizes))
    config = scaling.run_config(
        preset, family, size, spec.epochs[0], spec.families[family].learning_rates[0]
    )
    shrink = {
        'nfnet': dict(depths=(1, 1), widths=(32, 32), group_width=16),
        'vit': dict(hidden_size=32, depth=1, num_heads=2, mlp_dim=64),
    }[family]
    for key, value in shrink.items():
        config.model[key] = value
    config.batch_size = 2
    validate(config)
    assert config.dtype == ('bfloat16' if preset.startswith('tpu') else 'float32')
    step, loss = _one_step(config, (16, 16, 3), 7)
    assert step == 1 and math.isfinite(loss)


def test_tpu_launch_commands_reach_every_worker(tmp_path):
    preset = scaling.PRESETS['tpu_imagenet']
    specs = scaling.grid(preset)
    commands = study.emit_commands(specs, tmp_path, preset)
    assert len(commands) == len(specs) == (4 + 5) * 6 * 4  # NFNet and ViT sizes x budgets x LRs
    assert all(
        '--worker=all' in c and '--multihost' in c and 'gcloud compute tpus tpu-vm ssh' in c
        for c in commands
    )
    assert f'experiments/scaling.py:{specs[0].config_arg}' in commands[0]
    assert (tmp_path / 'commands.sh').read_text().count('gcloud') == len(specs)


# --- The sweep ---------------------------------------------------------------------------------


def _digits_preset(data_dir: str) -> scaling.Preset:
    base = scaling.PRESETS['cpu_tiny']
    resnet = dataclasses.replace(
        base.families['resnet'],
        sizes={'w2': scaling._resnet_width(2, (1,))},
        learning_rates=(0.05, 0.1),
    )
    return dataclasses.replace(
        base,
        name='digits_test',
        dataset='digits',
        data_dir=data_dir,
        train_split='train',
        eval_split='test',
        image_shape=(8, 8, 1),
        batch_size=64,
        eval_batch_size=128,
        epochs=(1.0,),
        families={'resnet': resnet},
        default_families=('resnet',),
        checkpoint_every_steps=5,
        log_every_steps=5,
    )


def test_sweep_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, digits_dir):
    from train.loop import train_and_evaluate

    preset = _digits_preset(digits_dir)
    specs = scaling.grid(preset)
    assert len(specs) == 2
    calls = []

    def train(config, workdir):
        calls.append(workdir.name)
        return train_and_evaluate(config, workdir)

    assert study.run_grid(specs, tmp_path, train_fn=train, preset=preset)['trained'] == 2
    records = study.collect(specs, preset, tmp_path)
    assert [r['status'] for r in records] == ['finished', 'finished']
    total_steps = records[0]['steps']  # 1,437 images / 64 = 22 steps
    assert total_steps == 22 and records[0]['train_flops'] == 22 * records[0]['train_step_flops']
    assert records[0]['config']['optimizer']['learning_rate'] == 0.05
    assert all(math.isfinite(r['eval_loss']) and r['core_hours'] > 0 for r in records)

    # Interrupt the second run: as if killed after its checkpoint at step 20 (of 22).
    interrupted = study.run_dir(tmp_path, specs[1])
    (interrupted / 'summary.json').unlink()
    shutil.rmtree(interrupted / 'checkpoints' / str(total_steps))
    kept = [p.name for p in (interrupted / 'checkpoints').iterdir() if p.name.isdigit()]
    assert kept == ['20']
    assert study.run_state(interrupted) == study.INTERRUPTED
    interrupted_at = time.time()
    calls.clear()
    assert study.run_grid(specs, tmp_path, train_fn=train, preset=preset) == {
        'skipped': 1,
        'trained': 1,
        'diverged': 0,
        'preempted': 0,
    }
    assert calls == [specs[1].run_id]
    # Resumed, not restarted: the steps up to 20 kept their logged metrics from before.
    lines = (interrupted / 'metrics.jsonl').read_text().splitlines()
    train_records = [r for r in map(json.loads, lines) if r['kind'] == 'train']
    assert [r['step'] for r in train_records] == [5, 10, 15, 20, 22]
    assert all(r['time'] < interrupted_at for r in train_records[:4])
    assert train_records[-1]['time'] > interrupted_at
    resumed = study.collect(specs, preset, tmp_path)[1]
    assert resumed['eval_loss'] == pytest.approx(records[1]['eval_loss'], rel=1e-5)

    # Everything finished: nothing trains.
    def refuse(config, workdir):
        raise AssertionError(f'{workdir} trained again')

    assert study.run_grid(specs, tmp_path, train_fn=refuse, preset=preset)['skipped'] == 2
    lines = (tmp_path / 'results.jsonl').read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])['run_id'] == specs[0].run_id


def test_diverged_runs_are_recorded_and_skipped(tmp_path, digits_dir):
    from train.loop import NonFiniteError

    preset = _digits_preset(digits_dir)
    specs = scaling.grid(preset)[:1]

    def diverge(config, workdir):
        raise NonFiniteError('non-finite loss (nan) at step 3')

    assert study.run_grid(specs, tmp_path, train_fn=diverge, preset=preset)['diverged'] == 1
    assert study.run_state(study.run_dir(tmp_path, specs[0])) == study.DIVERGED
    assert study.run_grid(specs, tmp_path, train_fn=diverge, preset=preset)['skipped'] == 1


def _synthetic_records(family: str, kind: str, exponent: float) -> list[dict]:
    """A grid whose losses follow L = 30·C^-exponent on the LR-tuned points."""
    records = []
    for n, params in enumerate((1e3, 2e3, 4e3, 8e3)):
        for epochs in (0.25, 0.5, 1.0):
            flops = 1e9 * params * epochs
            for lr, penalty in ((0.1, 1.0), (0.2, 1.05 if epochs > 0.3 else 0.97)):
                # Small models stop improving: a model-size-dependent floor.
                loss = 30 * flops**-exponent * penalty + 0.5 / (n + 1)
                records.append(
                    {
                        'run_id': f'{family}-{n}_e{epochs}_lr{lr}',
                        'status': 'finished',
                        'family': family,
                        'kind': kind,
                        'size': f's{n}',
                        'epochs': epochs,
                        'learning_rate': lr,
                        'params': params,
                        'train_flops': flops,
                        'eval_loss': loss,
                        'eval_accuracy': 0.5,
                        'core_hours': flops / 1e18,
                        'wall_seconds': 1.0,
                        'train_loop_seconds': 0.8,
                        'wall_core_hours': 0.001,
                        'cores_per_device': 2,
                    }
                )
    return records


def test_analysis_report_and_plots(tmp_path):
    preset = scaling.PRESETS['cpu_tiny']
    records = _synthetic_records('resnet', 'convnet', 0.1) + _synthetic_records('vit', 'vit', 0.15)
    analysis = study.analyze(records, num_resamples=50)
    comparisons = analysis_lib.compare_families(analysis, num_resamples=50)
    for family in ('resnet', 'vit'):
        result = analysis[family]
        assert len(result['frontier']) >= 3 and 'params' in result['power_law']
        assert result['power_law']['params']['b'] > 0
        assert all(
            p['best_grid_lr'] == (0.2 if p['epochs'] == 0.25 else 0.1) for p in result['points']
        )
        assert result['optimal_lr_fit']['params']['p'] < 0  # longer budgets, lower rates
        assert result['compute_optimal'] and 'params' in result['optimal_params_fit']
    assert [(c['convnet'], c['vit']) for c in comparisons] == [('resnet', 'vit')]
    verdict = comparisons[0]['verdict']
    assert verdict.startswith('The resnet') or verdict.startswith('No verdict')
    figures = scaling_plots.write_plots(records, analysis, tmp_path, comparisons)
    assert all(f.exists() and f.stat().st_size > 10_000 for f in figures)
    # The synthetic grid's sizes and rates as a preset, to plan from.
    planning = dataclasses.replace(
        preset,
        families={
            name: dataclasses.replace(
                preset.families[name],
                sizes={f's{n}': next(iter(preset.families[name].sizes.values())) for n in range(4)},
                learning_rates=(0.1, 0.2),
            )
            for name in ('resnet', 'vit')
        },
        default_families=('resnet', 'vit'),
    )
    plan = scaling_plan.plan(planning, scaling.grid(planning), records)
    assert plan.runs == ()  # cpu_tiny allows no extension
    report_path = report.write_report(
        preset,
        scaling.grid(preset),
        records,
        analysis,
        {},
        tmp_path,
        figures,
        sweep_seconds=60.0,
        sweep_log=[
            {'started': 0.0, 'train_seconds': 120.0, 'counts': {'trained': 48}, 'host_cores': 2}
        ],
        comparisons=comparisons,
        plan=plan,
    )
    text = report_path.read_text()
    assert verdict in text and 'Held-out prediction' in text and 'TPU-v4 core-hours' in text
    # Every best rate of a two-rate grid is at its edge, here also the cap.
    assert 'AT THE CAP' in text and len(plan.lr_capped) == 2 * 4 * 3
    assert 'Power law on the frontier' in text and 'frontiers.png' in text and '## vit' in text
    assert '2.0 min training the grid' in text


def test_cpu_small_smoke_study_runs_end_to_end_into_a_report(tmp_path, digits_dir):
    """cpu_small reduced to 2 sizes x 2 budgets x 1 rate a family, a few steps a run, on the
    8x8 digits: the study trains every run through the ordinary trainer, plans (nothing more:
    the smoke preset allows no extension), analyses and writes its report. In a process of its
    own with XLA's CPU compiler at optimisation level 0: runs of a few steps are nearly all
    compilation (each run's learning rate and schedule are constants of its train step)."""
    driver = f"""
import dataclasses
from pathlib import Path
from experiments.sweeps import scaling_grid, scaling_plan, scaling_study
preset = dataclasses.replace(
    scaling_plan.smoke_preset('cpu_small', rates=1), dataset='digits', data_dir={digits_dir!r},
    image_shape=(8, 8, 1), train_split='train[:512]', eval_split='test[:256]')
scaling_study.study(preset, scaling_grid.grid(preset), Path({str(tmp_path)!r}), num_resamples=20)
"""
    env = os.environ | {'XLA_FLAGS': FAST_COMPILE, 'JAX_PLATFORMS': 'cpu'}
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, '-c', driver], env=env, cwd=root, check=True)
    results = json.loads((tmp_path / 'results.json').read_text())
    assert len(results['runs']) == 8  # 2 families x 2 sizes x 2 budgets x 1 rate
    assert all(r['status'] == 'finished' and r['steps'] in (2, 4) for r in results['runs'])
    assert {r['device_kind'] for r in results['runs']} != {''}
    assert results['plan']['runs'] == []
    text = (tmp_path / 'report.md').read_text()
    assert '## Frontiers compared' in text and '### nfnet against vit' in text
    assert results['comparisons'][0]['verdict'] in text
    assert (tmp_path / 'loss_vs_compute.png').exists()

    # Rerun: everything is done, nothing trains.
    def refuse(config, workdir):
        raise AssertionError(f'{workdir} trained again')

    preset = dataclasses.replace(
        scaling_plan.smoke_preset('cpu_small', rates=1),
        dataset='digits',
        data_dir=digits_dir,
        image_shape=(8, 8, 1),
        train_split='train[:512]',
        eval_split='test[:256]',
    )
    assert study.sweep(preset, scaling.grid(preset), tmp_path, train_fn=refuse)['trained'] == 0
