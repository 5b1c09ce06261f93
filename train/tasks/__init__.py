"""The tasks a run can train, by `config.task` name: one registry.

Each task is a `train.tasks.base.Task` subclass in its own file (the protocol, its hooks and
its config block are described there). Adding a task is one new file plus a line here.
"""

from __future__ import annotations

from train.tasks.base import Task
from train.tasks.captioning import CaptioningTask
from train.tasks.classify import ClassificationTask
from train.tasks.diffusion import DiffusionTask
from train.tasks.gan import GANTask
from train.tasks.language_model import LanguageModelTask
from train.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, type[Task]] = {
    'classify': ClassificationTask,
    'language_model': LanguageModelTask,
    'seq2seq': Seq2SeqTask,
    'captioning': CaptioningTask,
    'gan': GANTask,
    'diffusion': DiffusionTask,
}


def task_class(name: str) -> type[Task]:
    """The registered task class; ValueError naming the valid tasks for an unknown name."""
    if name not in TASKS:
        raise ValueError(f'config.task={name!r} is not valid; choose one of {sorted(TASKS)}')
    return TASKS[name]


def create_task(name: str, *, model, info, augmenter=None, **options) -> Task:
    """Task `name` for `model` on data described by `info`, with the task's own options."""
    return task_class(name)(model, info, augmenter, **options)


def task_from_config(config, *, model, info, augmenter=None) -> Task:
    """The config's task, its options taken from its config block."""
    return task_class(config.task).from_config(config, model=model, info=info, augmenter=augmenter)
