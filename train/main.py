"""Entry point: `python -m train.main --config=experiments/<name>.py[:arg] --workdir=DIR`.

Override any config key on the command line: `--config.optimizer.learning_rate=0.05`.
Rerunning the same command resumes from the newest checkpoint in the workdir.
Multi-host (Cloud TPU pods, several GPU hosts): add `--multihost`; on TPU VMs and SLURM
`jax.distributed.initialize()` finds its peers itself, elsewhere pass `--coordinator_address`,
`--num_processes` and `--process_id`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train.cpu_defaults import (configure_cpu_conv_backend, configure_cpu_micro_batches,
                                configure_cpu_xla_flags, cpu_malloc_env,
                                restart_with_cpu_malloc_env)
from train.metrics_writer import quiet_library_logs

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with ":arg".', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and pictures go.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (multi-host without auto-detection).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index (multi-host).')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 1, 'XLA CPU devices to split the host into (data parallel across cores). '
    'Ignored when XLA_FLAGS already sets a count; GPUs and TPUs are used as they are.')
_CPU_XLA_DEFAULTS = flags.DEFINE_bool(
    'cpu_xla_defaults', True, 'Add the XLA CPU flags measured fastest for the model family '
    'and dtype (train/cpu_defaults.py) to XLA_FLAGS, and pick the convolution kernels measured '
    'fastest for it (DEEPNETS_CPU_CONV); a flag XLA_FLAGS already sets, or the variable, is '
    'left as it is.')
_CPU_MALLOC_DEFAULTS = flags.DEFINE_bool(
    'cpu_malloc_defaults', True, 'On a CPU-only host, restart once with the glibc allocator '
    'settings measured fastest for the model family (ResNets, language models: freed memory '
    'stays in the heap; train/cpu_defaults.py); variables already set are kept.')
_CPU_MICRO_BATCHES = flags.DEFINE_bool(
    'cpu_micro_batches', True, 'On the CPU, when config.grad_accum_steps is 1, split each '
    'step\'s batch into the micro-batches measured fastest for the model family (ViTs: 16 '
    'examples per device; train/cpu_defaults.py); the update is the whole batch\'s.')

flags.mark_flags_as_required(['config', 'workdir'])


def configure_cpu_devices(count: int) -> None:
    """Splits the CPU into `count` XLA devices; must run before JAX initialises its backends.

    The default stays one (multi-threaded) device: two devices, one per core, trained the
    quickstart about 20% faster on the 2-core machine, but once in about ten runs XLA's CPU
    all-reduce stalled waiting for the other device and aborted the process after 40 s (the run
    resumes from its checkpoint, yet a default must not do that)."""
    if count < 1:
        raise app.UsageError(f'--cpu_devices must be >= 1, got {count}')
    flags_now = os.environ.get('XLA_FLAGS', '')
    if count == 1 or re.search(r'--xla_force_host_platform_device_count', flags_now):
        return
    os.environ['XLA_FLAGS'] = f'{flags_now} --xla_force_host_platform_device_count={count}'.strip()


def _model_family(config) -> str | None:
    """The registry family of config.model.name (None when it is not registered: the config
    check names the valid models later)."""
    import nets
    name = config.get('model', {}).get('name')
    return nets.model_family(name) if name in nets.list_models() else None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    family = _model_family(_CONFIG.value)
    if __name__ == '__main__':  # the program itself, not a caller's process
        restart_with_cpu_malloc_env(_CPU_MALLOC_DEFAULTS.value, family)
    allocator = {name: os.environ.get(name) for name in cpu_malloc_env(family)}
    if _CPU_MALLOC_DEFAULTS.value and allocator and None not in allocator.values():
        logging.info('CPU default: glibc allocator settings %s (train/cpu_defaults.py; '
                     '--nocpu_malloc_defaults turns them off)', allocator)
    configure_cpu_devices(_CPU_DEVICES.value)
    configure_cpu_xla_flags(_CPU_XLA_DEFAULTS.value, family=family,
                            dtype=str(_CONFIG.value.get('dtype', 'float32')))
    configure_cpu_conv_backend(_CPU_XLA_DEFAULTS.value, family)
    quiet_library_logs()
    if _MULTIHOST.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # only process 0 reports
    micro_batches = configure_cpu_micro_batches(_CONFIG.value, _CPU_MICRO_BATCHES.value, family)
    if micro_batches > 1:
        logging.info('CPU default: %d micro-batches per step (config.grad_accum_steps; '
                     '--nocpu_micro_batches turns it off)', micro_batches)
    # Imported here so that --help and flag errors answer without loading JAX models.
    from train.loop import train_and_evaluate

    workdir = Path(_WORKDIR.value)
    summary = train_and_evaluate(_CONFIG.value, workdir)
    if jax.process_index() == 0:
        print(json.dumps({'stop_reason': summary['stop_reason'], 'step': summary['step'],
                          'eval': summary['eval']}, indent=None))
        print(f'metrics:      {workdir / "metrics.jsonl"}')
        print(f'tensorboard:  tensorboard --logdir {workdir / "tensorboard"}')
        print(f'checkpoints:  {workdir / "checkpoints"}')
        print(f'pictures:     {workdir / "pictures"}')
        print(f'summary:      {workdir / "summary.json"}')


if __name__ == '__main__':
    app.run(main)
