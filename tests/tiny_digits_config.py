"""A tiny run for the trainer's process-level tests (kill and resume).

Command: python -m train.main --config=tests/tiny_digits_config.py --workdir=/tmp/tiny
Hardware: any CPU; seconds. Expected: above 60% test accuracy on digits after 400 steps.
"""

from train.config import default_config, model_config


def get_config():
    config = default_config()
    config.dataset.name = 'digits'
    config.model = model_config('mlp', depth=1, width=32)
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_steps = 400
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 3e-3
    return config
