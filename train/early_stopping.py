"""Early stopping: stop when an eval metric has not improved for `patience` evaluations."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    metric: str
    mode: str = 'min'  # 'min' for a loss, 'max' for an accuracy
    patience: int = 3
    min_delta: float = 0.0
    best_value: float = math.nan
    best_step: int = -1
    evals_without_improvement: int = 0

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Records one evaluation; True when training should stop."""
        if self.metric not in metrics:
            raise ValueError(
                f'early_stopping.metric={self.metric!r} is not an eval metric; '
                f'valid: {sorted(metrics)}'
            )
        value = metrics[self.metric]
        sign = 1.0 if self.mode == 'max' else -1.0
        improved = math.isnan(self.best_value) or sign * (value - self.best_value) > self.min_delta
        if improved:
            self.best_value, self.best_step = value, step
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        return self.evals_without_improvement >= self.patience
