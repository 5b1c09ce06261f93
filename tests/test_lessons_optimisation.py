"""Lessons 1-6 of the lessons report at tiny scale on digits, each judge() on
hand-made numbers both ways, and the report runner (skip, rerun, error rows, links, copy)."""

import json
import re
import shutil

import pytest

from experiments import lessons
from experiments.lessons import (
    c01_backprop,
    c02_optimisers,
    c03_regularisation,
    c04_batch_norm,
    c05_hyperparameters,
    c06_relu_vs_tanh,
    report,
)

NUMBERS = (1, 2, 3, 4, 5, 6)
PNG = b'\x89PNG\r\n\x1a\n'


pytestmark = pytest.mark.usefixtures('rbg_random_numbers')


@pytest.fixture(scope='module')
def tiny_lessons(tmp_path_factory, digits_dir):
    """Lessons 1-6 run once at tiny scale into one workdir: (workdir, {number: Finding})."""
    workdir = tmp_path_factory.mktemp('lessons')
    return workdir, {n: lessons.run_lesson(n, workdir, 'tiny', digits_dir) for n in NUMBERS}


@pytest.mark.parametrize('number', NUMBERS)
def test_lesson_runs_and_its_verdict_is_judged_from_its_numbers(tiny_lessons, number):
    workdir, findings = tiny_lessons
    finding, module = findings[number], lessons.load_lesson(number)
    assert (finding.number, finding.title, finding.claim) == (number, module.TITLE, module.CLAIM)
    assert finding.verdict.verdict in lessons.VERDICTS and finding.verdict.reason
    folder = workdir / lessons.LESSONS[number]
    assert finding.plots and all((folder / p).read_bytes()[:8] == PNG for p in finding.plots)
    assert finding.table.startswith('| ')
    assert finding.verdict == module.judge(finding.numbers)
    # What the report reads back gives the same verdict.
    stored = json.loads((folder / 'finding.json').read_text())
    assert stored['scale'] == 'tiny' and stored['seconds'] > 0
    assert module.judge(stored['numbers']) == finding.verdict


def test_hand_written_backward_equals_jax_grad(tiny_lessons):
    rows = tiny_lessons[1][1].numbers['widths']
    assert all(r['grad_rel_error'] <= c01_backprop.GRAD_RTOL for r in rows)
    assert all(r['logits_abs_error'] < 1e-4 for r in rows)
    assert all(1.0 < r['flop_ratio'] < 4.0 for r in rows)  # reverse mode ~ 3x the forward


def _backprop(error: float, time_ratio: float, flop_ratio: float = 2.8) -> dict:
    return {
        'widths': [
            {
                'width': w,
                'grad_rel_error': error,
                'time_ratio': time_ratio,
                'flop_ratio': flop_ratio,
            }
            for w in (128, 1024)
        ]
    }


def test_backprop_judge():
    assert c01_backprop.judge(_backprop(1e-7, 3.0)).verdict == lessons.SUPPORTED
    assert c01_backprop.judge(_backprop(1e-7, 9.0)).verdict == lessons.PARTLY
    assert c01_backprop.judge(_backprop(0.1, 9.0, 9.0)).verdict == lessons.NOT_SUPPORTED


def _optimisers(speedup: float | None, scheduled_loss: float) -> dict:
    return {
        'optimisers': {
            'sgd': {'speedup': 1.0},
            **{n: {'speedup': speedup} for n in ('momentum', 'rmsprop', 'adam')},
        },
        'schedules': {
            'constant': {'final_loss': 0.4},
            'warmup_cosine': {'final_loss': scheduled_loss},
            'step': {'final_loss': scheduled_loss},
        },
    }


def test_optimisers_judge():
    assert c02_optimisers.judge(_optimisers(2.0, 0.3)).verdict == lessons.SUPPORTED
    assert c02_optimisers.judge(_optimisers(2.0, 0.39)).verdict == lessons.PARTLY
    assert c02_optimisers.judge(_optimisers(None, None)).verdict == lessons.NOT_SUPPORTED


def _regularisation(gap: float, test_accuracy: float) -> dict:
    base = {'gap': 1.0, 'test_accuracy': 0.80}
    other = {'gap': gap, 'test_accuracy': test_accuracy}
    return {'variants': {'none': base, 'l2': other, 'dropout': other, 'early_stopping': other}}


def test_regularisation_judge():
    assert c03_regularisation.judge(_regularisation(0.6, 0.81)).verdict == lessons.SUPPORTED
    # A gap closed by underfitting (test accuracy falls) is not less overfitting.
    assert c03_regularisation.judge(_regularisation(0.6, 0.70)).verdict == lessons.NOT_SUPPORTED
    assert c03_regularisation.judge(_regularisation(0.98, 0.80)).verdict == lessons.NOT_SUPPORTED


def _batch_norm(bn_lr: float, speedup: float, bn_gain: float, plain_steps: int | None) -> dict:
    return {
        'summary': {
            'largest_trained_lr': {'plain': 0.3, 'bn': bn_lr},
            'speedup': speedup,
            'dropout_gain': {'plain': 0.02, 'bn': bn_gain},
            'saturating': {
                'sigmoid': {'bn_steps_to_trained': 50, 'plain_steps_to_trained': plain_steps}
            },
        }
    }


def test_batch_norm_judge():
    judge = c04_batch_norm.judge
    assert judge(_batch_norm(3.0, 2.0, -0.01, None)).verdict == lessons.SUPPORTED
    assert judge(_batch_norm(3.0, 1.0, 0.02, 60)).verdict == lessons.PARTLY
    assert judge(_batch_norm(0.1, 1.0, 0.02, 60)).verdict == lessons.NOT_SUPPORTED


def _sweep_run(lr: float, losses: list[float] | None) -> dict:
    """One run of a c04 sweep as train_once records it; `losses=None`: diverged."""
    curve = [[10 * (i + 1), loss] for i, loss in enumerate(losses or [])]
    final = sum(losses[-3:]) / 3 if losses else None
    return {
        'lr': lr,
        'curve': curve,
        'final_loss': final,
        'diverged': losses is None,
        'trained': final is not None and final < c04_batch_norm.TRAINED_LOSS,
    }


def test_batch_norm_summary_of_sweeps():
    slow, fast, stuck = [2.0, 1.5, 1.2, 0.9, 0.8, 0.7], [1.0, 0.8, 0.6, 0.5, 0.4, 0.4], [2.3] * 6
    relu = {
        'plain': [_sweep_run(0.1, slow), _sweep_run(1.0, None)],
        'bn': [_sweep_run(0.1, slow), _sweep_run(1.0, fast)],
    }
    sigmoid = {'plain': [_sweep_run(1.0, stuck)], 'bn': [_sweep_run(1.0, fast)]}
    dropout = {'plain': {'without': 0.80, 'with': 0.84}, 'bn': {'without': 0.85, 'with': 0.85}}
    summary = c04_batch_norm.summarise(relu, {'sigmoid': sigmoid}, dropout)
    assert summary['largest_trained_lr'] == {'plain': 0.1, 'bn': 1.0}
    # The target is slow's final loss, 0.8; trailing means over 3 logs reach it at 60 and 30.
    assert summary['target_loss'] == pytest.approx(0.8)
    assert summary['steps_to_target'] == {'plain': 60, 'bn': 30}
    assert summary['speedup'] == 2.0
    assert summary['dropout_gain'] == pytest.approx({'plain': 0.04, 'bn': 0.0})
    assert summary['saturating']['sigmoid']['plain_steps_to_trained'] is None
    assert summary['saturating']['sigmoid']['bn_steps_to_trained'] == 10
    assert c04_batch_norm.judge({'summary': summary}).verdict == lessons.SUPPORTED


def _hyperparameters(ratio: float | None, change: float) -> dict:
    move = {'log2_train_loss_ratio': ratio, 'test_accuracy_change': change}
    return {'moves': {'dropout': [move], 'width': [move, move]}}


def test_hyperparameters_judge():
    judge = c05_hyperparameters.judge
    assert judge(_hyperparameters(1.5, 0.0)).verdict == lessons.SUPPORTED  # optimisation
    assert judge(_hyperparameters(0.0, -0.05)).verdict == lessons.SUPPORTED  # generalisation
    assert judge(_hyperparameters(None, 0.0)).verdict == lessons.SUPPORTED  # diverged
    verdict = judge(_hyperparameters(0.1, 0.005))
    assert verdict.verdict == lessons.NOT_SUPPORTED and 'dropout: neither' in verdict.reason


def _relu_vs_tanh(relu: int | None, tanh: int | None) -> dict:
    numbers = {
        'relu': {'steps_to_threshold': relu, 'steps_to_strict': None},
        'tanh': {'steps_to_threshold': tanh, 'steps_to_strict': None},
    }
    numbers['speed_ratio'] = c06_relu_vs_tanh.speed_ratio(relu, tanh, 300)
    return numbers


def test_relu_vs_tanh_judge():
    judge = c06_relu_vs_tanh.judge
    assert judge(_relu_vs_tanh(20, 120)).verdict == lessons.SUPPORTED
    assert judge(_relu_vs_tanh(20, None)).verdict == lessons.SUPPORTED  # tanh never got there
    assert judge(_relu_vs_tanh(20, 30)).verdict == lessons.PARTLY
    assert judge(_relu_vs_tanh(40, 30)).verdict == lessons.NOT_SUPPORTED
    assert judge(_relu_vs_tanh(None, 30)).verdict == lessons.NOT_SUPPORTED


def test_parse_lessons():
    assert report.parse_lessons('') == sorted(lessons.LESSONS)
    assert report.parse_lessons('4, 1') == [4, 1]
    with pytest.raises(ValueError, match='99'):
        report.parse_lessons('1,99')


def test_report_runner_skips_reruns_and_reports_errors(
    tiny_lessons, digits_dir, tmp_path, monkeypatch
):
    workdir = tmp_path / 'lessons'
    shutil.copytree(tiny_lessons[0], workdir)
    finding_file = {n: workdir / lessons.LESSONS[n] / 'finding.json' for n in NUMBERS}
    written = {n: finding_file[n].stat().st_mtime_ns for n in NUMBERS}

    # Findings at this scale exist: nothing runs.
    assert report.run_lessons(workdir, [2, 3], 'tiny', digits_dir) == {2: 'skipped', 3: 'skipped'}
    assert all(finding_file[n].stat().st_mtime_ns == written[n] for n in (2, 3))

    # --rerun runs lesson 1 again (its measured finding, handed back at once: the fixture ran
    # it for real); lesson 6 fails, and is reported, without stopping lesson 1.
    def fail(*args):
        raise RuntimeError('simulated failure')

    monkeypatch.setattr(c06_relu_vs_tanh, 'run', fail)
    monkeypatch.setattr(c01_backprop, 'run', lambda *args: tiny_lessons[1][1])
    path = report.build_report(
        workdir, [6, 1], 'tiny', digits_dir, rerun=True, copy_to=tmp_path / 'docs'
    )
    assert finding_file[1].stat().st_mtime_ns > written[1]
    assert (workdir / lessons.LESSONS[6] / report.ERROR_FILE).exists()

    text = path.read_text()
    for number in (1, 2, 3, 4, 5):
        finding = lessons.Finding.from_json(json.loads(finding_file[number].read_text()))
        assert (
            f'| {number} | [{finding.title}](#claim-{number}) | {finding.verdict.verdict} |' in text
        )
        assert finding.verdict.reason in text and finding.table in text
        assert f'--lessons={number} --scale=tiny' in text
    assert re.search(r'\| 6 \| .* \| \*\*error\*\* \| RuntimeError: simulated failure', text)
    assert 'Not run yet: claims 7, 8, 9, 10, 11, 12, 13.' in text
    links = re.findall(r'!\[[^]]*\]\(([^)]+)\)', text)
    assert len(links) >= 5
    copied = (tmp_path / 'docs' / 'report.md').read_text()
    assert copied == text
    for link in links:
        assert (workdir / link).read_bytes()[:8] == PNG
        assert (tmp_path / 'docs' / link).read_bytes()[:8] == PNG
