"""Early stopping, the metrics writer and the pictures, on small hand-made inputs."""

import json

import numpy as np
import pytest

from train import pictures
from train.early_stopping import EarlyStopping
from train.metrics_writer import MetricWriter


def test_early_stopping_counts_evaluations_without_improvement():
    stopper = EarlyStopping('loss', mode='min', patience=2, min_delta=0.01)
    assert not stopper.update(1, {'loss': 1.0})
    assert not stopper.update(2, {'loss': 0.995})  # within min_delta: no improvement
    assert not stopper.update(3, {'loss': 0.5})
    assert not stopper.update(4, {'loss': 0.6})
    assert stopper.update(5, {'loss': 0.55})
    assert (stopper.best_value, stopper.best_step) == (0.5, 3)


def test_early_stopping_max_mode_and_unknown_metric():
    stopper = EarlyStopping('accuracy', mode='max', patience=1)
    assert not stopper.update(1, {'accuracy': 0.5})
    assert stopper.update(2, {'accuracy': 0.4})
    with pytest.raises(ValueError, match="'top5'.*'accuracy'"):
        EarlyStopping('top5').update(1, {'accuracy': 0.5, 'loss': 1.0})


def test_metric_writer_jsonl_truncation_and_disabled_writer(tmp_path):
    writer = MetricWriter(tmp_path)
    for step in (10, 20, 30):
        writer.write(step, 'train', {'loss': 1.0 / step})
    writer.write(20, 'eval', {'accuracy': 0.5})
    writer.truncate_after(20)
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [(r['step'], r['kind']) for r in records] == [(10, 'train'), (20, 'train'), (20, 'eval')]
    writer.close()
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    quiet = MetricWriter(tmp_path / 'other', enabled=False)
    quiet.write(1, 'train', {'loss': 1.0})
    assert not (tmp_path / 'other').exists()


def test_pictures_are_pngs(tmp_path):
    metrics = tmp_path / 'metrics.jsonl'
    metrics.write_text(
        ''.join(
            json.dumps(r) + '\n'
            for r in [
                {'step': 1, 'kind': 'train', 'loss': 2.0, 'accuracy': 0.1},
                {'step': 2, 'kind': 'train', 'loss': 1.0, 'accuracy': 0.5},
                {'step': 2, 'kind': 'eval', 'loss': 1.2, 'accuracy': 0.4},
            ]
        )
    )
    curves = pictures.plot_training_curves(metrics, tmp_path / 'p' / 'curves.png')
    confusion = pictures.plot_confusion_matrix(
        np.array([[5, 1], [2, 7]]), ['cat', 'dog'], tmp_path / 'p' / 'confusion.png'
    )
    for path in (curves, confusion):
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert pictures.read_metrics(metrics)['eval'][0]['accuracy'] == 0.4
