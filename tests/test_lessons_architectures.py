"""Lessons 7-13 (architectures, and local minima): each runs at scale='tiny', returns a Finding
whose verdict is judge(numbers) and whose plots exist; each judge() is fed hand-made numbers
both ways."""

import pytest

from experiments.lessons import (
    NOT_SUPPORTED,
    PARTLY,
    SUPPORTED,
    VERDICTS,
    Finding,
    load_lesson,
    run_lesson,
)

pytestmark = pytest.mark.usefixtures('rbg_random_numbers')


@pytest.fixture(scope='module')
def mnist1d_dir(digits_dir):
    """Lesson 9 compares a data set with its spatially shuffled twin: MNIST-1D's two variants,
    prepared next to the digits (a few seconds)."""
    from data.prepare import prepare

    prepare(['mnist1d', 'mnist1d_shuffled'], digits_dir)
    return digits_dir


def check_tiny(number: int, workdir, data_dir) -> Finding:
    finding = run_lesson(number, workdir, 'tiny', data_dir)
    module = load_lesson(number)
    assert isinstance(finding, Finding) and finding.number == number
    assert finding.verdict.verdict in VERDICTS
    assert finding.verdict == module.judge(finding.numbers)
    assert finding.plots
    lesson_dir = next(workdir.glob(f'c{number:02d}_*'))
    for plot in finding.plots:
        assert (lesson_dir / plot).is_file()
    assert (lesson_dir / 'finding.json').is_file()
    assert '|' in finding.table
    return finding


# --------------------------------------------------------------------------- lesson 8


def test_residual_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(8, tmp_path, digits_dir)
    assert len(finding.numbers['plain']['grad_norms_init']) == finding.numbers['depth']


def residual_numbers(
    plain_spread: float, residual_spread: float, plain_loss: float, residual_loss: float
) -> dict:
    def twin(spread, loss):
        return {
            'spread_init': spread,
            'spread_trained': spread,
            'final_loss': loss,
            'test_accuracy': 0.5,
        }

    return {
        'depth': 24,
        'steps': 100,
        'plain': twin(plain_spread, plain_loss),
        'residual': twin(residual_spread, residual_loss),
    }


def test_residual_judge_both_ways():
    judge = load_lesson(8).judge
    assert judge(residual_numbers(80.0, 3.0, 1.7, 0.3)).verdict == SUPPORTED
    assert judge(residual_numbers(3.0, 3.0, 1.0, 1.0)).verdict == NOT_SUPPORTED
    assert judge(residual_numbers(80.0, 3.0, 1.0, 1.0)).verdict == PARTLY


# --------------------------------------------------------------------------- lesson 10


def test_long_lags_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(10, tmp_path, digits_dir)
    assert set(finding.numbers['adding']) == {'rnn', 'lstm', 'gru'}


def long_lag_numbers(rnn_nmse: float, lstm_nmse: float, rnn_decay: float) -> dict:
    flat, decayed = [1.0, 1.0, 0.5], [1.0, 0.1, rnn_decay]
    return {
        'lengths': [10, 100],
        'probe_length': 3,
        'adding': {'rnn': {'100': rnn_nmse}, 'lstm': {'100': lstm_nmse}, 'gru': {'100': lstm_nmse}},
        'gradient_by_lag': {
            when: {'rnn': decayed, 'lstm': flat, 'gru': flat} for when in ('init', 'trained')
        },
    }


def test_long_lags_judge_both_ways():
    judge = load_lesson(10).judge
    assert judge(long_lag_numbers(0.97, 0.01, 1e-6)).verdict == SUPPORTED
    failed = long_lag_numbers(0.01, 0.97, 1.0)
    failed['gradient_by_lag']['trained']['rnn'] = [1.0, 1.0, 1.0]
    assert judge(failed).verdict == NOT_SUPPORTED
    assert judge(long_lag_numbers(0.97, 0.01, 1.0)).verdict == PARTLY


# --------------------------------------------------------------------------- lesson 7


def test_receptive_fields_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(7, tmp_path, digits_dir)
    # Counted exactly, whatever the scale: the stack and the single 7x7 see 7x7.
    assert finding.numbers['stack']['field'] == finding.numbers['single']['field'] == [7, 7]
    assert finding.numbers['stack']['nonlinearities'] == 3


def receptive_numbers(stack_params: int, inception_ratio: float, stack_accuracy: float) -> dict:
    return {
        'channels': 64,
        'dataset': 'mnist5k',
        'stack': {'params': stack_params, 'field': [7, 7], 'nonlinearities': 3},
        'single': {'params': 1000, 'field': [7, 7], 'nonlinearities': 1},
        'inception': {
            'naive': {'params': 100, 'flops': 100.0},
            'with_1x1': {'params': 100 * inception_ratio, 'flops': 100.0 * inception_ratio},
        },
        'trained': {
            '3 x 3x3': {'params': stack_params, 'accuracy': stack_accuracy},
            '1 x 7x7': {'params': 1000, 'accuracy': 0.9},
        },
    }


def test_receptive_fields_judge_both_ways():
    judge = load_lesson(7).judge
    assert judge(receptive_numbers(550, 0.4, 0.95)).verdict == SUPPORTED
    assert judge(receptive_numbers(550, 0.9, 0.95)).verdict == PARTLY
    numbers = receptive_numbers(2000, 1.0, 0.5)
    numbers['stack'].update(field=[5, 5], nonlinearities=1)
    assert judge(numbers).verdict == NOT_SUPPORTED


# --------------------------------------------------------------------------- lesson 9


def test_cnn_vs_mlp_lesson_runs_tiny(tmp_path, mnist1d_dir):
    finding = check_tiny(9, tmp_path, mnist1d_dir)
    assert set(finding.numbers['accuracy']) == {'ordered', 'shuffled'}


def cnn_mlp_numbers(cnn: float, mlp: float, cnn_shuffled: float, mlp_shuffled: float) -> dict:
    return {
        'seeds': [0],
        'accuracy': {
            'ordered': {'cnn': cnn, 'mlp': mlp},
            'shuffled': {'cnn': cnn_shuffled, 'mlp': mlp_shuffled},
        },
    }


def test_cnn_vs_mlp_judge_both_ways():
    judge = load_lesson(9).judge
    assert judge(cnn_mlp_numbers(0.98, 0.68, 0.59, 0.69)).verdict == SUPPORTED
    assert judge(cnn_mlp_numbers(0.98, 0.68, 0.95, 0.69)).verdict == PARTLY
    assert judge(cnn_mlp_numbers(0.60, 0.68, 0.95, 0.40)).verdict == NOT_SUPPORTED


# --------------------------------------------------------------------------- lesson 11


def test_position_encodings_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(11, tmp_path, digits_dir)
    assert set(finding.numbers['results']) == {'sinusoidal', 'learned'}
    # Measured at initialisation, exact at any scale: without encodings order-blind.
    order = finding.numbers['order_blindness']
    assert set(order) == {'transformer', 'vit_tokens', 'vit_logits'}
    assert all(errors['none'] < 1e-5 for errors in order.values())
    assert all(e > 1e-3 for errors in order.values() for p, e in errors.items() if p != 'none')


def position_numbers(
    within: tuple[float, float], beyond: tuple[float, float], blind: float = 1e-7
) -> dict:
    def results(at_l, past_l):
        return {
            '1': {'accuracy': at_l, 'unseen_accuracy': None},
            '2': {'accuracy': (at_l + past_l) / 2, 'unseen_accuracy': past_l},
        }

    return {
        'length': 32,
        'factors': [1, 2],
        'vocab': 16,
        'results': {
            'sinusoidal': results(within[0], beyond[0]),
            'learned': results(within[1], beyond[1]),
        },
        'order_blindness': {
            'transformer': {'sinusoidal': 0.3, 'learned': 0.03, 'none': blind},
            'vit_tokens': {'sincos2d': 0.3, 'learned': 0.03, 'none': blind},
        },
    }


def test_position_encodings_judge_both_ways():
    judge = load_lesson(11).judge
    assert judge(position_numbers((1.0, 0.99), (0.8, 0.1))).verdict == SUPPORTED
    assert judge(position_numbers((1.0, 0.99), (0.1, 0.1))).verdict == PARTLY
    assert judge(position_numbers((1.0, 0.99), (0.8, 0.1), blind=0.05)).verdict == PARTLY
    numbers = position_numbers((1.0, 0.5), (0.1, 0.3), blind=0.05)
    assert judge(numbers).verdict == NOT_SUPPORTED


# --------------------------------------------------------------------------- lesson 12


def test_invariance_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(12, tmp_path, digits_dir)
    # Measured at initialisation, exact at any scale: attention global, a 3x3 conv local.
    assert finding.numbers['one_layer']['attention']['fraction'] == 1.0
    assert finding.numbers['one_layer']['conv']['positions'] == 9
    # Exact by construction, trained or not: the P4-CNN's map turns with the image.
    assert finding.numbers['rotation_equivariance']['p4cnn'] < 1e-4
    rotate = finding.numbers['rotate']['p4cnn']
    assert abs(rotate[-1] - rotate[0]) <= 0.01  # at 90 degrees the same predictions


def invariance_numbers(
    cnn_robust: float, cnn_error: float, cnn_rotated: float, p4cnn: tuple | None = None
) -> dict:
    """`p4cnn`: (its accuracy at 90 degrees, its quarter-turn equivariance error), or no P4-CNN."""
    numbers = {
        'angles': [0, 90],
        'one_layer': {
            'conv': {'positions': 9, 'fraction': 0.05},
            'attention': {'positions': 196, 'fraction': 1.0},
        },
        'translation_robustness': {'mlp': 0.3, 'cnn': cnn_robust, 'vit': 0.6, 'swin': 0.6},
        'equivariance': {'cnn': cnn_error, 'vit': 0.4, 'swin': 0.2},
        'rotate': {
            'mlp': [0.9, 0.2],
            'cnn': [0.9, cnn_rotated],
            'vit': [0.9, 0.2],
            'swin': [0.9, 0.2],
        },
    }
    if p4cnn is not None:
        numbers['rotate']['p4cnn'] = [0.9, p4cnn[0]]
        numbers['rotation_equivariance'] = {'cnn': 1.0, 'p4cnn': p4cnn[1]}
    return numbers


def test_invariance_judge_both_ways():
    judge = load_lesson(12).judge
    assert judge(invariance_numbers(0.9, 0.01, 0.2)).verdict == SUPPORTED
    assert judge(invariance_numbers(0.9, 0.01, 0.2, p4cnn=(0.9, 1e-7))).verdict == SUPPORTED
    # An invariant P4-CNN does not count against "no plain model is rotation-invariant" ...
    assert 'p4cnn 1.00' in judge(invariance_numbers(0.9, 0.01, 0.2, (0.9, 1e-7))).reason
    # ... but one that is not invariant fails its own parts.
    assert judge(invariance_numbers(0.9, 0.01, 0.2, p4cnn=(0.2, 0.5))).verdict == PARTLY
    assert judge(invariance_numbers(0.3, 0.5, 0.9)).verdict == PARTLY
    numbers = invariance_numbers(0.3, 0.5, 0.9, p4cnn=(0.2, 0.5))
    numbers['one_layer']['attention']['fraction'] = 0.5
    assert judge(numbers).verdict == NOT_SUPPORTED


# --------------------------------------------------------------------------- lesson 13


def test_local_minima_lesson_runs_tiny(tmp_path, digits_dir):
    finding = check_tiny(13, tmp_path, digits_dir)
    runs = finding.numbers['runs']
    assert len(runs) == 3 and all(r['final_loss'] > 0 for r in runs)
    assert len(finding.numbers['slices']['best_to_runner_up']) == len(finding.numbers['alphas'])


def minima_numbers(trapped: bool, hessian_min: float, barrier: float | None) -> dict:
    good = {'seed': 0, 'final_loss': 0.002, 'half_loss': 0.004, 'hessian_max': 0.004}
    stuck = {'seed': 1, 'final_loss': 0.347, 'half_loss': 0.348, 'hessian_max': 0.75}
    for run in (good, stuck):
        run.update(grad_norm=1e-3, hessian_min=-1e-8)
    stuck['hessian_min'] = hessian_min
    return {
        'runs': [good, stuck],
        'summary': {'best_loss': 0.002, 'trapped': [1] if trapped else []},
        'barrier': barrier,
    }


def test_local_minima_judge_both_ways():
    module = load_lesson(13)
    assert module.judge(minima_numbers(True, -1e-8, 2.5)).verdict == SUPPORTED
    assert module.judge(minima_numbers(True, -0.2, 2.5)).verdict == PARTLY  # a saddle
    assert module.judge(minima_numbers(False, -1e-8, None)).verdict == NOT_SUPPORTED
    # Trapped: far above the best and no longer improving; a slow seed is not trapped.
    runs = minima_numbers(True, 0.0, 1.0)['runs']
    assert module.summarise_seeds(runs)['trapped'] == [1]
    runs[1]['half_loss'] = 0.6
    assert module.summarise_seeds(runs)['trapped'] == []
