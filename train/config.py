"""The experiment config: defaults for every key, and validation before any compilation.

Every experiment file starts from `default_config()` and changes what it needs, so every key a
run can have exists in one place and can be overridden on the command line
(`--config.optimizer.learning_rate=0.05`). `validate(config)` runs before data loading and
compilation: an unknown key, a value of the wrong type or an unknown name (model, dataset,
optimizer, schedule, ...) fails with a message naming the value and the valid choices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

import nets
from data import jpeg
from train import profiling, runtime
from train.optim import OPTIMIZERS, check_optimizer_keys
from train.tasks import TASKS, task_class

WEIGHT_DECAY_MODES = ('coupled', 'decoupled')
SCHEDULES = ('constant', 'step', 'exponential', 'warmup_cosine', 'plateau')
DTYPES = ('float32', 'bfloat16')
NONFINITE_POLICIES = ('stop', 'skip')
EARLY_STOPPING_MODES = ('min', 'max')
# Training batch order: shuffled examples, or parallel contiguous streams (truncated BPTT).
DATA_ORDERS = ('shuffled', 'streams')
SHARDING_STRATEGIES = ('fsdp', 'replicate')

# Model fields the trainer sets itself; a config never carries them.
_TRAINER_OWNED_MODEL_FIELDS = ('dtype', 'param_dtype')


class ConfigError(ValueError):
    """A config value that cannot run; the message names the value and the valid choices."""


def default_config() -> ml_collections.ConfigDict:
    """Every key a run can have, with its default."""
    config = ml_collections.ConfigDict()
    config.task = 'classify'
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = 'fashion_mnist'
    config.dataset.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.dataset.train_split = 'train'
    config.dataset.eval_split = 'test'
    config.dataset.worker_count = 0  # grain worker processes; 0 reads in the main process
    # Encoded images of varying size (imagenet2012, imagenet_standin; data/jpeg.py). They are
    # always decoded in worker processes: worker_count 0 = every core but one.
    config.dataset.image_size = 224  # side of the square train and eval crops
    config.dataset.crop_area_range = (0.08, 1.0)  # train: fraction of the image's area
    config.dataset.crop_aspect_range = (3 / 4, 4 / 3)  # train: crop width / height
    config.dataset.flip = True  # train: mirror left-right half the time
    config.dataset.eval_crop_fraction = 0.875  # eval: centre square side / short side
    config.dataset.max_corrupt_fraction = 0.001  # undecodable records tolerated per epoch
    config.dataset.decoder = 'auto'  # 'auto', 'simplejpeg', 'pillow', 'pillow_full'
    # 'streams': row r of consecutive batches reads consecutive records of one stream and a
    # recurrent language model carries its state across steps (data.pipeline.stream_loader).
    config.dataset.order = 'shuffled'

    config.model = model_config('cnn')

    config.batch_size = 128  # global, over all devices and processes
    config.eval_batch_size = 1000
    config.num_epochs = 10.0  # may be fractional
    config.num_steps = -1  # > 0 overrides num_epochs
    config.dtype = 'float32'  # compute dtype of the model; parameters stay float32
    # Each step's batch is split into this many micro-batches whose gradients are averaged
    # before one update (optax.MultiSteps' state): the full batch's step with 1/k of its
    # activation memory.
    config.grad_accum_steps = 1
    # Exponential moving average of the parameters (0 = off); evaluated beside the raw ones, its
    # metrics prefixed 'ema_'. Warm-up decay min(ema_decay, (1 + n) / (10 + n)) after n updates.
    config.ema_decay = 0.0

    # How parameters and optimiser state lie on the mesh: (regex, strategy) pairs matched in
    # order against each parameter's path ('Dense_0/kernel'); the first match wins, unmatched
    # parameters are replicated. 'fsdp' shards the largest dimension that divides over the
    # devices (ZeRO-3 / big_vision's fsdp), 'replicate' keeps a full copy on every device.
    # E.g. (('.*', 'fsdp'),) shards everything; (('.*embedding', 'fsdp'),) only embeddings.
    config.param_sharding = ()
    # Parameters smaller than this stay replicated under 'fsdp': gathering them costs more
    # than the memory they would save.
    config.fsdp_min_size = 2**14

    # On-device augmentation of training images (data/augment): a sequence of ops, each a dict
    # {'op': name, **params}, applied in order inside the jitted train step; eval sees none.
    config.augment = ()

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = 'momentum'
    config.optimizer.learning_rate = 0.1
    # Keys only some optimisers read (train.optim.OPTIMIZER_SPECIFIC_KEYS). Unset, each takes
    # the optimiser's default (momentum 0.9 for momentum/nesterov, 0 for rmsprop; Adam's b1 0.9,
    # b2 0.999, eps 1e-8; rms_decay 0.9); set for an optimiser that does not read it, a run fails.
    config.optimizer.momentum = placeholder(float)
    config.optimizer.b1 = placeholder(float)
    config.optimizer.b2 = placeholder(float)
    config.optimizer.eps = placeholder(float)
    config.optimizer.rms_decay = placeholder(float)
    config.optimizer.weight_decay = 0.0
    config.optimizer.weight_decay_mode = (
        'coupled'  # coupled = L2 in the gradient; decoupled = AdamW-style
    )
    config.optimizer.l1 = 0.0
    config.optimizer.grad_clip_norm = 0.0  # 0 = no clipping
    config.optimizer.agc_clip = 0.0  # adaptive gradient clipping (NFNets), 0 = off
    config.optimizer.agc_eps = 1e-3
    # Per-parameter rules (train/param_rules.py), regexes matched against the whole parameter
    # path ('conv1/kernel'), the first matching rule deciding: (regex, factor) pairs scaling the
    # learning rate, e.g. (('.*/offset/.*', 0.1),); parameters that weight decay and L1 skip
    # (besides biases and norm scales); parameters AGC skips (the classifier). A rule that
    # matches no parameter is an error when the optimiser is initialised.
    config.optimizer.lr_multipliers = ()
    config.optimizer.weight_decay_exclude = ()
    config.optimizer.agc_exclude = ('head/.*',)

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.0
    config.schedule.end_factor = 0.0  # cosine ends at learning_rate * end_factor
    config.schedule.decay_factor = 0.96  # step/exponential: multiply by this ...
    config.schedule.decay_every_epochs = 8.0  # ... every this many epochs
    config.schedule.plateau_factor = 0.5
    config.schedule.plateau_patience_epochs = 2
    config.schedule.plateau_min_scale = 1e-3

    config.log_every_steps = 50
    config.eval_every_steps = -1  # -1 = once per epoch
    config.checkpoint_every_steps = -1  # -1 = once per epoch
    config.keep_checkpoints = 3

    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.metric = ''  # e.g. 'loss' or 'accuracy' of the eval split; '' = off
    config.early_stopping.mode = 'min'
    config.early_stopping.patience = 3  # evaluations without improvement before stopping
    config.early_stopping.min_delta = 0.0

    config.nonfinite = 'stop'  # on a NaN/Inf loss or gradient: stop, or skip that update
    # With 'skip': this many updates skipped in a row stop the run (it is not learning).
    config.nonfinite_max_skips = 20
    config.pictures = True
    # Steps start..stop-1 traced with jax.profiler into <workdir>/profile (train/profiling.py);
    # (-1, -1): no trace.
    config.profile_steps = (-1, -1)
    # Parameters (and batch statistics) to start from, with a fresh optimiser and schedule: a
    # run's workdir, its checkpoints/ folder, or a folder written by `python -m nets.convert`.
    # What does not fit (a new head, a new image size) is re-initialised or resampled, and
    # named in the log. Resuming the workdir's own checkpoint always wins.
    config.init_from = ''

    # Hardware choices (train/runtime.py): device split, XLA flags, kernels, allocator,
    # micro-batches; resolved per run and recorded in config.json and summary.json.
    config.runtime = runtime.default_block()

    # Each task's own options (train/tasks/<task>.py), one block per task that has some; a
    # block is only read by its task, and changing the block of another task is an error.
    for task in TASKS.values():
        if task.options_block:
            config[task.options_block] = task.default_options()
    return config


def _plain_field_value(value: Any) -> bool:
    """Whether a model field's default can live in a ConfigDict and be set from the CLI."""
    return value is None or isinstance(value, (bool, int, float, str, tuple))


# Model sizes the trainer takes from the data set (classes, vocabularies) unless set.
DATA_SIZED_MODEL_FIELDS = ('num_classes', 'vocab_size', 'source_vocab_size', 'target_vocab_size')


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A `config.model` block: the model's name and every configurable field, so each one can be
    overridden with `--config.model.<field>=...`."""
    fields = nets.model_fields(name)  # raises on an unknown name, listing valid ones
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f'model {name!r} has no field(s) {unknown}; valid fields: {sorted(fields)}'
        )
    block = {'name': name}
    for field in DATA_SIZED_MODEL_FIELDS:
        if field in fields:
            block[field] = -1  # -1: taken from the data set at run time
    for field, default in fields.items():
        if field in _TRAINER_OWNED_MODEL_FIELDS:
            continue
        value = overrides.get(field, block.get(field, default))
        if _plain_field_value(value):
            block[field] = value
    return ml_collections.ConfigDict(block)


def _check_keys(config: Mapping[str, Any], reference: Mapping[str, Any], path: str) -> None:
    for key, value in config.items():
        where = f'{path}{key}'
        if key not in reference:
            raise ConfigError(f'unknown config key {where!r}; valid keys here: {sorted(reference)}')
        expected = reference[key]
        if isinstance(expected, Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f'config key {where!r} must be a block of keys, got {value!r}')
            _check_keys(value, expected, where + '.')
            continue
        if expected is None:  # an optional number (a placeholder left unset)
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        elif isinstance(expected, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(expected, bool)
        elif isinstance(expected, float):
            ok = isinstance(value, (int, float))
        elif isinstance(expected, tuple):  # the command line and JSON turn tuples into lists
            ok = isinstance(value, (tuple, list))
        else:
            ok = isinstance(value, type(expected))
        if not ok:
            raise ConfigError(
                f'config key {where!r} must be of type {type(expected).__name__}, '
                f'got {value!r} ({type(value).__name__})'
            )


def _leaves(block: Mapping[str, Any], prefix: str):
    for key, value in block.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f'{where}={value!r} is not valid; choose one of {list(choices)}')


def _check_positive(where: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f'{where} must be a finite number, got {value!r}')
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f'{where} must be {">= 0" if allow_zero else "> 0"}, got {value!r}')


def _check_augment(ops: Any) -> None:
    if not ops:
        return
    if not isinstance(ops, (tuple, list)) or not all(isinstance(op, Mapping) for op in ops):
        raise ConfigError(
            "config.augment must be a sequence of dicts like {'op': 'rotate', "
            f"'degrees': (-10.0, 10.0)}}, got {ops!r}"
        )
    from data import augment  # imported here: most runs never need it

    try:
        augment.check_ops(ops)
    except ValueError as error:
        raise ConfigError(f'config.augment: {error}') from error


def _check_param_sharding(rules: Any) -> None:
    if not isinstance(rules, (tuple, list)):
        raise ConfigError(
            f'config.param_sharding must be a sequence of (regex, strategy) pairs, got {rules!r}'
        )
    import re

    for rule in rules:
        if (
            not isinstance(rule, (tuple, list))
            or len(rule) != 2
            or not all(isinstance(part, str) for part in rule)
        ):
            raise ConfigError(
                'config.param_sharding must hold (regex, strategy) pairs of strings '
                f"like ('.*kernel', 'fsdp'), got {rule!r}"
            )
        pattern, strategy = rule
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(
                f'config.param_sharding: {pattern!r} is not a regular expression ({error})'
            ) from error
        _check_choice(
            f'config.param_sharding strategy of {pattern!r}', strategy, SHARDING_STRATEGIES
        )


def _check_task_blocks(config: ml_collections.ConfigDict) -> None:
    """The chosen task's block is checked by the task; every other task's block must be left at
    its defaults, since nothing would read it."""
    chosen = task_class(config.task)
    for name, task in TASKS.items():
        block = task.options_block
        if not block or task is chosen or block == chosen.options_block:
            continue
        changed = sorted(
            key for key, value in task.default_options().items() if config[block][key] != value
        )
        if changed:
            raise ConfigError(
                f'config.{block}.{changed[0]} applies only to '
                f'config.task={name!r}; this run is task={config.task!r}'
            )
    try:
        chosen.check_options(config)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the whole config before anything expensive happens. Raises ConfigError."""
    reference = default_config().to_dict()
    plain = config.to_dict()
    model_block = plain.pop('model', None)
    reference.pop('model')
    _check_keys(plain, reference, '')
    if not isinstance(model_block, Mapping) or 'name' not in model_block:
        raise ConfigError(
            f'config.model must be a block with a "name"; valid names: {nets.list_models()}'
        )
    model_name = model_block['name']
    if model_name not in nets.list_models():
        raise ConfigError(
            f'config.model.name={model_name!r} is not a registered model; '
            f'valid names: {nets.list_models()}'
        )
    fields = nets.model_fields(model_name)
    for key in model_block:
        if key != 'name' and (key not in fields or key in _TRAINER_OWNED_MODEL_FIELDS):
            valid = sorted(f for f in fields if f not in _TRAINER_OWNED_MODEL_FIELDS)
            raise ConfigError(
                f'config.model.{key} is not a field of model {model_name!r}; valid fields: {valid}'
            )

    for where, value in _leaves(plain, 'config.'):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f'{where} must be a finite number, got {value!r}')
    _check_augment(config.augment)
    _check_choice('config.task', config.task, tuple(TASKS))
    _check_choice('config.dtype', config.dtype, DTYPES)
    _check_choice('config.nonfinite', config.nonfinite, NONFINITE_POLICIES)
    _check_choice('config.optimizer.name', config.optimizer.name, OPTIMIZERS)
    try:
        check_optimizer_keys(config.optimizer)
        runtime.check_block(config.runtime)
        profiling.check_profile_steps(config.profile_steps)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    _check_choice(
        'config.optimizer.weight_decay_mode', config.optimizer.weight_decay_mode, WEIGHT_DECAY_MODES
    )
    _check_choice('config.schedule.name', config.schedule.name, SCHEDULES)
    _check_choice('config.early_stopping.mode', config.early_stopping.mode, EARLY_STOPPING_MODES)
    _check_choice('config.dataset.order', config.dataset.order, DATA_ORDERS)
    if config.dataset.order == 'streams' and not task_class(config.task).carries_streams:
        streaming = ' or '.join(repr(name) for name, task in TASKS.items() if task.carries_streams)
        raise ConfigError(
            f"config.dataset.order='streams' carries a recurrent state between steps "
            f'and needs config.task={streaming}, got {config.task!r}'
        )
    _check_positive('config.batch_size', config.batch_size)
    _check_positive('config.grad_accum_steps', config.grad_accum_steps)
    if config.batch_size % config.grad_accum_steps:
        raise ConfigError(
            f'config.batch_size={config.batch_size} does not split into '
            f'config.grad_accum_steps={config.grad_accum_steps} equal micro-batches;'
            ' use a batch size that is a multiple of it'
        )
    if config.grad_accum_steps > 1 and not task_class(config.task).accumulates_gradients(config):
        raise ConfigError(
            'config.grad_accum_steps > 1 needs a task whose loss averages over '
            "independent examples: not task='gan' (its own two-network step) nor "
            "dataset.order='streams' (state carried between rows of a batch)"
        )
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f'config.ema_decay must be in [0, 1), got {config.ema_decay}')
    _check_param_sharding(config.param_sharding)
    _check_positive('config.fsdp_min_size', config.fsdp_min_size, allow_zero=True)
    _check_positive('config.eval_batch_size', config.eval_batch_size)
    _check_positive('config.optimizer.learning_rate', config.optimizer.learning_rate)
    _check_positive('config.optimizer.weight_decay', config.optimizer.weight_decay, allow_zero=True)
    _check_positive('config.optimizer.l1', config.optimizer.l1, allow_zero=True)
    _check_positive(
        'config.optimizer.grad_clip_norm', config.optimizer.grad_clip_norm, allow_zero=True
    )
    _check_positive('config.optimizer.agc_clip', config.optimizer.agc_clip, allow_zero=True)
    _check_positive('config.optimizer.agc_eps', config.optimizer.agc_eps)
    _check_positive('config.schedule.warmup_epochs', config.schedule.warmup_epochs, allow_zero=True)
    _check_positive('config.schedule.decay_every_epochs', config.schedule.decay_every_epochs)
    _check_positive('config.log_every_steps', config.log_every_steps)
    _check_positive('config.keep_checkpoints', config.keep_checkpoints)
    _check_positive('config.dataset.worker_count', config.dataset.worker_count, allow_zero=True)
    _check_positive('config.early_stopping.patience', config.early_stopping.patience)
    _check_positive(
        'config.early_stopping.min_delta', config.early_stopping.min_delta, allow_zero=True
    )
    for key in ('num_steps', 'eval_every_steps', 'checkpoint_every_steps'):
        if config[key] != -1 and config[key] <= 0:
            meaning = 'use num_epochs' if key == 'num_steps' else 'once per epoch'
            raise ConfigError(
                f'config.{key}={config[key]} is not valid; use a number of steps > 0, '
                f'or -1 ({meaning})'
            )
    if config.num_steps == -1 and config.num_epochs <= 0:
        raise ConfigError(
            f'config.num_epochs={config.num_epochs} is not valid with config.num_steps=-1; '
            'set num_epochs > 0 or num_steps > 0'
        )
    _check_positive('config.nonfinite_max_skips', config.nonfinite_max_skips)
    _check_learning_rate(config.optimizer)
    try:
        jpeg.options_from_config(config.dataset)
    except ValueError as error:
        raise ConfigError(f'config.dataset: {error}') from error
    if config.init_from and not Path(config.init_from).exists():
        raise ConfigError(f'config.init_from={config.init_from!r} does not exist')
    if not 0.0 <= config.schedule.end_factor <= 1.0:
        raise ConfigError(
            f'config.schedule.end_factor must be in [0, 1], got {config.schedule.end_factor}'
        )
    if not 0.0 < config.schedule.decay_factor <= 1.0:
        raise ConfigError(
            f'config.schedule.decay_factor must be in (0, 1], got {config.schedule.decay_factor}'
        )
    if not 0.0 < config.schedule.plateau_factor < 1.0:
        raise ConfigError(
            f'config.schedule.plateau_factor must be in (0, 1), '
            f'got {config.schedule.plateau_factor}'
        )
    for key in ('momentum', 'b1', 'b2', 'rms_decay'):
        value = config.optimizer[key]
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f'config.optimizer.{key} must be in [0, 1), got {value}')
    if config.optimizer.eps is not None:
        _check_positive('config.optimizer.eps', config.optimizer.eps)
    _check_task_blocks(config)


# Above these a learning rate diverges for any model this trainer builds: adaptive optimisers
# normalise the step, so their rate is a step size in parameter units; plain SGD's scales a
# gradient that can be small.
MAX_LEARNING_RATE = {'adaptive': 1.0, 'sgd': 100.0}
_ADAPTIVE_OPTIMIZERS = ('adam', 'adamw', 'rmsprop')


def _check_learning_rate(optimizer: ml_collections.ConfigDict) -> None:
    family = 'adaptive' if optimizer.name in _ADAPTIVE_OPTIMIZERS else 'sgd'
    limit = MAX_LEARNING_RATE[family]
    if optimizer.learning_rate > limit:
        raise ConfigError(
            f'config.optimizer.learning_rate={optimizer.learning_rate} is out of range for '
            f'optimizer {optimizer.name!r}: valid (0, {limit:g}]'
        )


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments for `nets.create` from `config.model` (name excluded)."""
    kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
    # ConfigDict turns tuples into lists on the way through the CLI; modules want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


_TRUE_WORDS = ('true', 'yes', '1')
_FALSE_WORDS = ('false', 'no', '0')


def _typed_value(key: str, text: str, default: Any) -> Any:
    """`text` converted to the type of `default` (ConfigError naming the key when it cannot)."""
    if isinstance(default, bool):
        if text.lower() in _TRUE_WORDS + _FALSE_WORDS:
            return text.lower() in _TRUE_WORDS
        raise ConfigError(f'config argument {key}={text!r} is not a boolean; use true or false')
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError as error:
            raise ConfigError(
                f'config argument {key}={text!r} is not a {type(default).__name__}'
            ) from error
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """A config file's argument (`--config=file.py:key=value,key2=value2`) as a ConfigDict of
    `defaults` updated by it. Values take the type of their default; a bare `key` sets a
    boolean key to True. An unknown key or a value of the wrong type raises ConfigError naming
    the valid keys."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (part.strip() for part in (arg or '').split(','))):
        key, has_value, text = item.partition('=')
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f'unknown config argument {key!r} in {arg!r}; valid arguments: '
                + (', '.join(f'{k}={v!r}' for k, v in defaults.items()) or 'none')
            )
        if not has_value:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f'config argument {key!r} needs a value: {key}=...')
            parsed[key] = True
            continue
        parsed[key] = _typed_value(key, text.strip(), defaults[key])
    return parsed


def check_arg_choice(key: str, value: str, choices: Any) -> None:
    """ConfigError unless a config argument's value is one of `choices`."""
    if value not in choices:
        raise ConfigError(
            f'config argument {key}={value!r} is not valid; choose one of {sorted(choices)}'
        )
