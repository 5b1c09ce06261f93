"""Scaling laws tested by prediction, frontiers compared with intervals, the computed verdict, and
the planner that extends learning rates and budgets until the optima are found."""

import json
import math

import numpy as np
import pytest

from experiments.analysis import compute
from experiments.analysis import scaling_laws as laws
from experiments.analysis import scaling_prediction as prediction
from experiments.sweeps import scaling_grid as scaling
from experiments.sweeps import scaling_plan
from experiments.sweeps import scaling_study as study

# --- Held-out prediction -----------------------------------------------------------------------


def test_power_law_fitted_on_small_budgets_recovers_its_exponent_and_predicts_the_large_ones():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e10, 1e16, 12)
    loss = 50.0 * c**-0.11 * np.exp(rng.normal(0, 0.01, c.size))
    result = prediction.predict_held_out(c, loss, 'power', num_resamples=300)
    assert len(result['held_out_compute']) == 3 and len(result['fit_compute']) == 9
    low, high = result['intervals_95']['b']
    assert low < 0.11 < high and high - low < 0.03
    assert result['error'] < 0.03
    err_low, err_high = result['error_interval_95']
    assert 0 <= err_low <= err_high < 0.1


def test_saturating_law_wins_on_curves_that_saturate():
    rng = np.random.default_rng(1)
    c = np.geomspace(1e9, 1e15, 12)
    loss = (0.6 + 40.0 * c**-0.2) * np.exp(rng.normal(0, 0.003, c.size))
    comparison = prediction.compare_laws(c, loss, num_resamples=300)
    saturating = comparison['laws']['saturating_power']
    assert saturating['degenerate'] == ''
    low, high = saturating['intervals_95']['b']
    assert low < 0.2 < high
    assert comparison['better'] == 'saturating_power'
    assert comparison['laws']['power']['error'] > 3 * saturating['error']
    assert comparison['difference_interval_95'][0] > 0
    assert 'L = a·C^(-b) + c form predicts' in comparison['sentence']


def test_a_pure_power_law_makes_the_saturating_form_degenerate_and_the_report_says_so():
    rng = np.random.default_rng(2)
    c = np.geomspace(1e10, 1e16, 10)
    loss = 30.0 * c**-0.1 * np.exp(rng.normal(0, 0.005, c.size))
    comparison = prediction.compare_laws(c, loss, num_resamples=200)
    degenerate = comparison['laws']['saturating_power']['degenerate']
    assert degenerate  # the floor goes to 0, or the points cannot pin it down
    assert 'c -> 0' in degenerate or 'unidentifiable' in degenerate
    assert comparison['better'] == 'power'
    assert 'degenerate' in comparison['sentence']
    # "Better" only where the paired interval says so; otherwise chosen because of the collapse.
    measurably_better = comparison['difference_interval_95'][1] < 0
    assert ('predicts the' in comparison['sentence']) == measurably_better
    assert ('is the one to use' in comparison['sentence']) != measurably_better


@pytest.mark.parametrize(
    'params,intervals,expected',
    [
        ({'a': 1.0, 'b': 0.2, 'c': 0.001}, {'c': (0.0, 0.01)}, 'c -> 0'),
        ({'a': 1.0, 'b': 0.2, 'c': 0.995}, {'c': (0.9, 0.999)}, 'sits at its bound'),
        ({'a': 1.0, 'b': 0.2, 'c': 0.5}, {'c': (0.05, 0.95)}, 'unidentifiable'),
        ({'a': 1.0, 'b': 4.99, 'c': 0.5}, {'c': (0.45, 0.55)}, 'bound of the fit'),
        ({'a': 1.0, 'b': 0.2, 'c': 0.5}, {'c': (0.45, 0.55)}, ''),
    ],
)
def test_saturating_degeneracy(params, intervals, expected):
    reason = prediction.saturating_degeneracy(params, intervals, best_loss=1.0)
    assert (expected in reason) if expected else reason == ''


def test_too_few_points_for_the_held_out_test_are_said():
    comparison = prediction.compare_laws([1, 10, 100, 1000], [3.0, 2.0, 1.5, 1.2])
    assert comparison['better'] is None
    assert 'needs 4' in comparison['laws']['saturating_power']['reason']
    assert comparison['sentence'].startswith('Too few')
    with pytest.raises(ValueError, match='needs 3'):
        prediction.predict_held_out([1, 10, 100, 1000], [3.0, 2.0, 1.5, 1.2], 'power')


# --- Two frontiers and the verdict -------------------------------------------------------------


def _frontier(scale, exponent, noise, seed, low=1e10, high=1e14):
    rng = np.random.default_rng(seed)
    c = np.geomspace(low, high, 9)
    return c, scale * 30 * c**-exponent * np.exp(rng.normal(0, noise, c.size))


@pytest.mark.parametrize(
    'scale,expected,phrase',
    [
        (0.8, 'below', 'frontier is below the vit frontier at all 8 compute levels'),
        (1.25, 'above', 'frontier is above the vit frontier at all 8 compute levels'),
        (1.0, 'indistinguishable', 'are not distinguishable at all 8 compute levels'),
    ],
)
def test_frontier_difference_and_verdict(scale, expected, phrase):
    ca, la = _frontier(scale, 0.1, 0.03, 3)
    cb, lb = _frontier(1.0, 0.1, 0.03, 4, low=3e10, high=3e14)
    result = prediction.frontier_difference(ca, la, cb, lb, num_resamples=300)
    levels = result['levels']
    assert len(levels) == 8 and levels[0]['compute'] == pytest.approx(3e10)
    assert levels[-1]['compute'] == pytest.approx(1e14)  # only the shared range
    assert {row['side'] for row in levels} == {expected}
    for row in levels:
        low, high = row['interval_95']
        assert low <= row['log_difference'] <= high
    sentence = prediction.verdict('nfnet', 'vit', levels)
    assert phrase in sentence


def test_crossing_frontiers_give_a_mixed_verdict():
    ca, la = _frontier(0.25, 0.05, 0.005, 5)  # flatter: below until 1e12 FLOPs, then above
    cb, lb = _frontier(1.0, 0.1, 0.005, 6)
    levels = prediction.frontier_difference(ca, la, cb, lb, num_resamples=200)['levels']
    sides = [row['side'] for row in levels]
    assert sides[0] == 'below' and sides[-1] == 'above'
    sentence = prediction.verdict('nfnet', 'vit', levels)
    assert sentence.startswith('The nfnet frontier is below it from')
    assert ', then ' in sentence and 'above it' in sentence


def test_verdict_from_hand_made_levels():
    def row(compute_value, low, high):
        side = 'below' if high < 0 else 'above' if low > 0 else 'indistinguishable'
        return {
            'compute': compute_value,
            'log_difference': (low + high) / 2,
            'interval_95': [low, high],
            'loss_ratio': math.exp((low + high) / 2),
            'side': side,
        }

    mixed = [row(1e9, -0.3, -0.1), row(1e10, -0.1, 0.05), row(1e11, -0.2, 0.1)]
    sentence = prediction.verdict('resnet', 'vit', mixed)
    assert 'below it at 1e+09 FLOPs' in sentence
    assert 'not distinguishable from the vit frontier from 1e+10 to 1e+11 FLOPs' in sentence
    assert prediction.verdict('resnet', 'vit', []).startswith('No compute level')
    with pytest.raises(ValueError, match='do not overlap'):
        prediction.frontier_difference([1, 2, 3], [3, 2, 1], [10, 20, 30], [3, 2, 1])


def test_tpu_v4_core_hours():
    one_hour = compute.TPU_V4_PEAK_FLOPS_PER_CORE * 0.5 * 3600
    assert compute.tpu_v4_core_hours(one_hour, 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='mfu'):
        compute.tpu_v4_core_hours(1e18, 0.0)
    assert compute.sweep_seconds([(1e9, 10), (2e9, 5)], 1e9, 3.0) == pytest.approx(26.0)


def test_saturating_power_fit_law_value_and_formula():
    c = np.geomspace(1e8, 1e14, 10)
    fit = laws.fit_saturating_power(c, 0.4 + 20 * c**-0.15, num_resamples=50)
    assert set(fit.params) == {'a', 'b', 'c'}
    assert fit.params['b'] == pytest.approx(0.15, rel=0.05)
    assert fit.params['c'] == pytest.approx(0.4, rel=0.05)
    assert fit.formula() == 'L = a·C^(-b) + c'
    with pytest.raises(ValueError, match='valid'):
        laws.law_value('cubic', {}, 1.0)


# --- The planner -------------------------------------------------------------------------------


def _preset(max_lr_steps=1, max_epochs=2.0):
    base = scaling.PRESETS['cpu_small']
    vit = base.families['vit']
    smallest = list(vit.sizes.values())[:2]
    sizes = {'xxs': smallest[0], 'xs': smallest[1]}
    family = scaling.Family('vit', 'vit', sizes, vit.optimizer, (0.01, 0.02, 0.04), 0.1)
    return scaling.dataclasses.replace(
        base,
        families={'vit': family},
        default_families=('vit',),
        epochs=(0.5, 1.0),
        max_lr_steps=max_lr_steps,
        max_epochs=max_epochs,
    )


def _record(size, epochs, lr, loss, params):
    return {
        'family': 'vit',
        'size': size,
        'epochs': epochs,
        'learning_rate': lr,
        'status': 'finished' if math.isfinite(loss) else 'diverged',
        'eval_loss': loss if math.isfinite(loss) else None,
        'params': params,
        'train_flops': params * 1e6 * epochs,
    }


def _records(loss_of_rate, size_loss=None, rates=(0.01, 0.02, 0.04), budgets=(0.5, 1.0)):
    """Every size x budget x rate: loss = the size and budget's term + the rate's term."""
    size_loss = size_loss or (lambda size, epochs: (1.0 if size == 'xxs' else 0.8) / epochs**0.3)
    params = {'xxs': 1e3, 'xs': 3e3}
    return [
        _record(size, epochs, lr, size_loss(size, epochs) + loss_of_rate(lr), params[size])
        for size in ('xxs', 'xs')
        for epochs in budgets
        for lr in rates
    ]


def test_the_plan_starts_with_the_base_grid():
    preset = _preset()
    base = scaling.grid(preset)
    plan = scaling_plan.plan(preset, base, [])
    assert list(plan.runs) == base
    done = _records(lambda lr: abs(math.log2(lr / 0.02)) * 0.1)[:5]
    assert len(scaling_plan.plan(preset, base, done).runs) == len(base) - 5


def test_a_best_rate_at_the_top_edge_is_extended_then_capped():
    preset = _preset(max_lr_steps=1, max_epochs=1.0)
    base = scaling.grid(preset)
    # Higher is better up to 0.16: the optimum lies beyond the grid and beyond the cap.
    rate_loss = lambda lr: -0.1 * math.log2(min(lr, 0.16))  # noqa: E731
    records = _records(rate_loss)
    plan = scaling_plan.plan(preset, base, records)
    assert sorted({r.learning_rate for r in plan.runs}) == [0.08]
    assert len(plan.runs) == 4 and not plan.lr_capped  # every cell, one rate up
    records = _records(rate_loss, rates=(0.01, 0.02, 0.04, 0.08))
    plan = scaling_plan.plan(preset, base, records)
    assert plan.runs == ()  # 0.16 is beyond max_lr_steps = 1 factor of 2
    assert len(plan.lr_capped) == 4
    assert ('vit', 'xxs', 0.5) in plan.lr_capped


def test_an_interior_best_rate_and_a_diverged_top_rate_stop_the_rate_search():
    preset = _preset(max_epochs=1.0)
    base = scaling.grid(preset)
    interior = _records(lambda lr: abs(math.log2(lr / 0.02)) * 0.1)
    assert scaling_plan.plan(preset, base, interior).runs == ()
    # Best at the top, then the next rate up diverges: bracketed.
    records = _records(lambda lr: -lr)
    records += [
        _record(size, epochs, 0.08, math.inf, 1e3)
        for size in ('xxs', 'xs')
        for epochs in (0.5, 1.0)
    ]
    plan = scaling_plan.plan(preset, base, records)
    assert plan.runs == () and plan.lr_capped == ()
    # Every rate diverged: go lower.
    cell = scaling_plan.Cell('vit', 'xxs', 0.5, (0.01, 0.02, 0.04), (math.inf,) * 3)
    assert scaling_plan.next_rate(preset, cell) == (0.005, False)


def test_budgets_are_extended_while_the_optimum_is_the_longest_up_to_the_cap():
    preset = _preset(max_epochs=2.0)
    base = scaling.grid(preset)

    # Longer is always better, steeply: the small model at its longest budget wins at every
    # level it reaches.
    def size_loss(size, epochs):
        return (1.0 if size == 'xxs' else 0.98) / epochs

    records = _records(lambda lr: abs(math.log2(lr / 0.02)) * 0.1, size_loss)
    plan = scaling_plan.plan(preset, base, records)
    assert {r.epochs for r in plan.runs} == {2.0}
    assert len(plan.runs) == 2 * 3  # sizes x base rates
    assert any('adding 2 epochs' in reason for reason in plan.reasons)
    records = _records(
        lambda lr: abs(math.log2(lr / 0.02)) * 0.1, size_loss, budgets=(0.5, 1.0, 2.0)
    )
    plan = scaling_plan.plan(preset, base, records)
    assert plan.runs == () and plan.epochs_capped == ('vit',)


def test_smoke_preset_is_two_by_two_by_two():
    preset = scaling_plan.smoke_preset('cpu_small')
    runs = scaling.grid(preset)
    assert len(runs) == 2 * 2 * 2 * 2  # families x sizes x budgets x rates
    assert preset.max_lr_steps == 0 and preset.max_epochs == 0
    assert preset.train_split == 'train[:512]'


def test_the_sweep_runs_the_plan_round_after_round_and_resumes_from_the_workdir(tmp_path):
    """A stand-in trainer whose best rate is 0.08: the sweep trains the base grid (0.01-0.04),
    extends every cell to 0.08, then 0.16, and stops there (0.08 is bracketed)."""
    preset = _preset(max_lr_steps=2, max_epochs=1.0)
    base = scaling.grid(preset)
    table = {
        scaling.size_key(preset, 'vit', size): {
            'params': params,
            'train_step_flops': params * 1e5,
            'forward_flops_per_example': params,
        }
        for size, params in (('xxs', 1e3), ('xs', 3e3))
    }
    (tmp_path / 'flops.json').write_text(json.dumps(table))
    trained = []

    def train(config, workdir):
        trained.append(workdir.name)
        width = config.model.hidden_size
        loss = 1 / width + abs(math.log2(config.optimizer.learning_rate / 0.08)) * 0.1
        loss /= config.num_epochs**0.2
        steps = round(10 * config.num_epochs)
        summary = {
            'stop_reason': 'finished',
            'step': steps,
            'total_steps': steps,
            'eval': {'loss': loss, 'accuracy': 0.5},
        }
        workdir.mkdir(parents=True)
        (workdir / 'summary.json').write_text(json.dumps(summary))
        return summary

    counts = study.sweep(preset, base, tmp_path, train_fn=train)
    assert counts['rounds'] == 3 and counts['trained'] == len(trained) == 12 + 4 + 4
    rates = sorted({float(name.split('_lr')[1]) for name in trained})
    assert rates == [0.01, 0.02, 0.04, 0.08, 0.16]
    specs, records, plan = study.planned_specs(preset, base, tmp_path)
    assert len(records) == 20 and plan.runs == () and plan.lr_capped == ()

    def refuse(config, workdir):
        raise AssertionError(f'{workdir} trained again')

    assert study.sweep(preset, base, tmp_path, train_fn=refuse)['trained'] == 0
