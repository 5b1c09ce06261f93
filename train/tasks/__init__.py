"""Task steps: what a task computes from a batch (loss, metrics, pictures); the loop is generic.

A task object answers:
  - `init_batch_shape` / `init_variables(rng)`: how to initialise the model;
  - `train_loss(params, model_state, batch, rng) -> (loss, (model_state, metrics))`;
  - `eval_sums(params, model_state, batch) -> dict of per-batch sums` (masked);
  - `summarize(sums) -> dict` of eval metrics from the sums over the whole split;
  - `write_pictures(workdir, eval_sums)`: PNGs next to the run's metrics;
  - optionally `write_samples(workdir, params, model_state) -> list[Path]`: what a generative
    model writes (language_model: samples.txt), called at the end of a run with pictures on;
  - optionally `final_eval(params, model_state, raw_eval_source) -> dict`: metrics computed
    once at the end, on the host, merged into summary.json's eval (seq2seq: BLEU).
  - optionally `make_optimizer(config, steps_per_epoch=, total_steps=) -> (tx, schedule)` and
    `train_step(state, batch, *, tx) -> (state, metrics)`: a task with several
    networks and optimisers (gan: alternating D and G updates) builds and runs its own update;
  - optionally `write_eval_pictures(picture_dir, step, params, model_state) -> list[Path]`:
    pictures drawn at every evaluation (gan, diffusion: a fixed-noise sample grid);
  - optionally `logged_train_metrics`: the train metrics the log averages (default loss,
    accuracy, grad_norm).
"""

from __future__ import annotations

from train.tasks.classify import ClassificationTask
from train.tasks.language_model import LanguageModelTask
from train.tasks.captioning import CaptioningTask
from train.tasks.seq2seq import Seq2SeqTask
from train.tasks.gan import GANTask
from train.tasks.diffusion import DiffusionTask

TASKS = {'classify': ClassificationTask, 'language_model': LanguageModelTask,
         'seq2seq': Seq2SeqTask, 'captioning': CaptioningTask,
         'gan': GANTask, 'diffusion': DiffusionTask}


def create_task(name: str, **kwargs):
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; valid tasks: {sorted(TASKS)}')
    return TASKS[name](**kwargs)
