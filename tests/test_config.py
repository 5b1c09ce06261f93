"""Config validation: every mistake fails before compilation, naming the value and the choices."""

import importlib.util
from pathlib import Path

import ml_collections
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train import config as config_lib
from train.config import ConfigError, default_config, model_config, validate

EXPERIMENTS = Path(__file__).resolve().parents[1] / 'experiments'


def test_default_config_is_valid():
    validate(default_config())


def test_unknown_top_level_key_lists_valid_keys():
    config = default_config()
    config.learning_rate = 0.1  # belongs in config.optimizer
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'.*'optimizer'"):
        validate(config)


def test_unknown_nested_key():
    config = default_config()
    config.optimizer.lr = 0.1
    with pytest.raises(ConfigError, match="'optimizer.lr'.*'learning_rate'"):
        validate(config)


def test_wrong_type():
    config = default_config()
    with config.ignore_type():
        config.batch_size = 'big'
    with pytest.raises(ConfigError, match="'batch_size' must be of type int"):
        validate(config)


@pytest.mark.parametrize(
    'key,value,choice',
    [
        ('optimizer.name', 'adagrad', 'adamw'),
        ('schedule.name', 'linear', 'warmup_cosine'),
        ('optimizer.weight_decay_mode', 'both', 'decoupled'),
        ('dtype', 'float16', 'bfloat16'),
        ('task', 'detect', 'classify'),
        ('nonfinite', 'ignore', 'skip'),
    ],
)
def test_unknown_names_list_choices(key, value, choice):
    config = default_config()
    block, _, leaf = key.rpartition('.')
    (config[block] if block else config)[leaf] = value
    with pytest.raises(ConfigError, match=f'{value!r}.*{choice!r}'):
        validate(config)


def test_unknown_model_name_lists_models():
    config = default_config()
    config.model.name = 'resnet9000'
    with pytest.raises(ConfigError, match="'resnet9000'.*'resnet18'"):
        validate(config)


def test_model_field_of_another_model_is_rejected():
    config = default_config()
    config.model = model_config('cnn')
    config.model.patch_size = 4  # a ViT field
    with pytest.raises(ConfigError, match="patch_size is not a field of model 'cnn'"):
        validate(config)


def test_model_config_exposes_every_field_for_cli_overrides():
    block = model_config('resnet18', stem='cifar')
    assert block.stem == 'cifar' and block.width == 64 and block.num_classes == -1
    assert 'dtype' not in block  # owned by config.dtype
    with pytest.raises(ConfigError, match='no field'):
        model_config('resnet18', patches=4)


@given(batch_size=st.integers(-1000, 0))
@settings(max_examples=20, deadline=None)
def test_non_positive_batch_sizes_rejected(batch_size):
    config = default_config()
    config.batch_size = batch_size
    with pytest.raises(ConfigError, match='batch_size must be > 0'):
        validate(config)


@given(momentum=st.floats(allow_nan=False, allow_infinity=False).filter(lambda m: not 0 <= m < 1))
@settings(max_examples=30, deadline=None)
def test_out_of_range_momentum_rejected(momentum):
    config = default_config()
    config.optimizer.momentum = momentum
    with pytest.raises(ConfigError, match='momentum must be in'):
        validate(config)


def _experiment_configs():
    cases = []
    for path in sorted(EXPERIMENTS.glob('*.py')):
        if path.name.startswith('_'):
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cases.append(pytest.param(module, id=path.stem))
    return cases


def test_experiments_top_level_holds_only_configs():
    """Programs (sweeps, benchmarks, lessons, analyses) live in subfolders; every file at the
    top is a config file."""
    for path in sorted(EXPERIMENTS.glob('*.py')):
        if path.name.startswith('_'):
            continue
        source = path.read_text()
        assert 'def get_config' in source and 'app.run(' not in source, path.name


@pytest.mark.parametrize('module', _experiment_configs())
def test_every_experiment_config_is_valid(module):
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    validate(config)
    assert 'Command' in module.__doc__ and 'Expected' in module.__doc__


def test_model_kwargs_turns_cli_lists_into_tuples():
    config = default_config()
    config.model = model_config('cnn')
    with config.ignore_type():
        config.model.channels = [8, 16]
    assert config_lib.model_kwargs(config)['channels'] == (8, 16)


def test_command_line_rejects_unknown_override_before_any_work(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'train.main',
            f'--config={repo}/tests/tiny_digits_config.py',
            f'--workdir={tmp_path}',
            '--config.optimizer.momentun=0.8',
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert 'momentun' in result.stderr
    assert not (tmp_path / 'checkpoints').exists()
