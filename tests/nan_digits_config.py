"""The tiny digits run with a model whose loss turns NaN at step 6 (the trainer's exit paths).

Command: python -m train.main --config=tests/nan_digits_config.py --workdir=/tmp/nan
Hardware: any CPU; seconds. Expected: exit code 70 at step 6, checkpoint of step 4 kept.
"""

from tests import nan_model, tiny_digits_config
from train.config import model_config


def get_config():
    nan_model.register()
    config = tiny_digits_config.get_config()
    config.model = model_config(nan_model.NAME, nan_from_step=6)
    config.num_steps = 12
    config.log_every_steps = 1
    config.checkpoint_every_steps = 4
    return config
