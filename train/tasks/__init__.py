"""Task steps: what a task computes from a batch (loss, metrics, pictures); the loop is generic.

A task object answers:
  - `init_batch_shape` / `init_variables(rng)`: how to initialise the model;
  - `train_loss(params, model_state, batch, rng) -> (loss, (model_state, metrics))`;
  - `eval_sums(params, model_state, batch) -> dict of per-batch sums` (masked);
  - `summarize(sums) -> dict` of eval metrics from the sums over the whole split;
  - `write_pictures(workdir, eval_sums)`: PNGs next to the run's metrics.
"""

from __future__ import annotations

from train.tasks.classify import ClassificationTask

TASKS = {'classify': ClassificationTask}


def create_task(name: str, **kwargs):
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; valid tasks: {sorted(TASKS)}')
    return TASKS[name](**kwargs)
