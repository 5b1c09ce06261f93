"""PNG pictures written next to a run's metrics: training curves and confusion matrices."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(metrics_file: Path) -> dict[str, list[dict]]:
    """metrics.jsonl -> records grouped by their 'kind' ('train', 'eval', ...)."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    with open(metrics_file) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                grouped[record.get('kind', 'train')].append(record)
    return dict(grouped)


def plot_training_curves(metrics_file: Path, out_path: Path) -> Path:
    """One panel per metric that train and eval share (loss, accuracy, ...), against step."""
    records = read_metrics(metrics_file)
    train, evals = records.get('train', []), records.get('eval', [])
    names = [n for n in ('loss', 'accuracy') if any(n in r for r in train + evals)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.6),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, rows, style in (('train', train, '-'), ('eval', evals, 'o-')):
            rows = [r for r in rows if name in r]
            if rows:
                ax.plot([r['step'] for r in rows], [r[name] for r in rows], style,
                        label=label, markersize=3)
        ax.set_xlabel('step')
        ax.set_ylabel(name)
        if name == 'loss':
            ax.set_yscale('log')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str] | None,
                          out_path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts printed."""
    n = confusion.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(confusion[i, j]), ha='center', va='center', fontsize=7,
                    color='white' if rates[i, j] > 0.5 else 'black')
    ax.set_xticks(range(n), names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    ax.set_title(f'confusion matrix (accuracy {accuracy:.2%})')
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
