"""Entry point: `python -m train.main --config=experiments/<name>.py[:key=value,...] --workdir=DIR`.

Override any config key on the command line: `--config.optimizer.learning_rate=0.05`; hardware
choices are config keys too (`--config.runtime.cpu_devices=2`, train/runtime.py). Rerunning
the same command resumes from the newest checkpoint in the workdir.
Multi-host (Cloud TPU pods, several GPU hosts): add `--multihost`; on TPU VMs and SLURM
`jax.distributed.initialize()` finds its peers itself, elsewhere pass `--coordinator_address`,
`--num_processes` and `--process_id`.

Exit codes (train/cli.py): 0 finished, 64 bad input (one line `error: ...`), 70 stopped on a
non-finite loss or gradient, 75 preempted (SIGTERM; a checkpoint was written, rerun the command).
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from train import cli, host_cpu
from train import config as config_lib
from train import runtime as runtime_lib
from train.loop import PREEMPTED, train_and_evaluate
from train.metrics_writer import quiet_library_logs
from train.progress import NonFiniteError
from train.storage import as_path

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with ":key=value,...".', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, metrics and pictures go: a folder or a gs:// URL.'
)
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-host without auto-detection).'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index (multi-host).')

flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = _CONFIG.value
    config_lib.validate(config)  # before anything starts: a bad key costs no restart
    host = host_cpu.host_facts(processes=_NUM_PROCESSES.value or 1)
    # Allocator settings are read when a process starts: the program restarts itself once with
    # them (same command); a caller's process (a test) is left as it is.
    restart = [sys.executable, *sys.orig_argv[1:]] if __name__ == '__main__' else None
    runtime = runtime_lib.apply(
        runtime_lib.resolve(config, host), starting_process=True, restart_command=restart
    )
    quiet_library_logs()
    if _MULTIHOST.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # only process 0 reports
    for choice, reason in runtime.reasons:
        logging.info('runtime: %s: %s', choice, reason)
    workdir = as_path(_WORKDIR.value)  # a local folder or a gs:// URL
    try:
        summary = train_and_evaluate(config, workdir, runtime)
    except NonFiniteError as error:
        cli.fail(str(error), cli.EXIT_NONFINITE)
    if jax.process_index() == 0:
        print(
            json.dumps(
                {
                    'stop_reason': summary['stop_reason'],
                    'step': summary['step'],
                    'eval': summary['eval'],
                },
                indent=None,
            )
        )
        print(f'metrics:      {workdir / "metrics.jsonl"}')
        print(f'tensorboard:  tensorboard --logdir {workdir / "tensorboard"}')
        print(f'checkpoints:  {workdir / "checkpoints"}')
        print(f'pictures:     {workdir / "pictures"}')
        print(f'summary:      {workdir / "summary.json"}')
    return cli.EXIT_PREEMPTED if summary['stop_reason'].startswith(PREEMPTED) else cli.EXIT_OK


if __name__ == '__main__':
    cli.run(main)
