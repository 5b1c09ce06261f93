"""A run's workdir: checking it can be written before anything starts, and the config.json every
run writes (the config as run, with the resolved hardware choices) that evaluation, export,
analysis and a resumed run read back.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from train.config import ConfigError
from train.storage import Path, as_path, is_remote

CONFIG_FILE = 'config.json'
# config.json's key for the resolved runtime (train/runtime.py's record), beside the config.
RESOLVED_RUNTIME_KEY = 'resolved_runtime'


def check_workdir(workdir: Path) -> None:
    """Fails early, with the reason, when the run could not write its results: a local folder
    that cannot be made or written, or a gs:// bucket that is missing, unreachable or refuses
    these credentials."""
    remote = is_remote(workdir)
    # Any failure of the cloud clients (HTTP, credentials, connection) means the same thing here.
    failures = Exception if remote else OSError
    try:
        if not remote:  # GCS has no folders; creating one under a missing bucket would create it
            workdir.mkdir(parents=True, exist_ok=True)
        # One probe per process: on a pod every host checks the same shared workdir at once.
        probe = workdir / f'.write_probe.{jax.process_index()}.{os.getpid()}'
        probe.write_text('ok')
        probe.unlink()
    except failures as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if remote and isinstance(error, FileNotFoundError):  # gcsfs names only the request
            reason = f'bucket {str(workdir)[len("gs://") :].split("/")[0]!r} not found'
        hint = (
            ' (does the bucket exist, and may these credentials write to it? '
            'gcloud auth application-default login sets them)'
            if remote
            else ''
        )
        raise ConfigError(f'workdir {str(workdir)!r} is not writable: {reason}{hint}') from error


def write_run_config(
    workdir: Path, config: ml_collections.ConfigDict, runtime_record: dict[str, Any]
) -> None:
    """config.json: the config as run, plus the resolved runtime under RESOLVED_RUNTIME_KEY."""
    record = json.loads(config.to_json_best_effort())
    record[RESOLVED_RUNTIME_KEY] = runtime_record
    (workdir / CONFIG_FILE).write_text(json.dumps(record, indent=2))


def read_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run in `workdir` ran with (config.json without the runtime record)."""
    path = as_path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f'{path} not found: {str(workdir)!r} is not a training workdir '
            '(train one with `python -m train.main --config=... --workdir=...`)'
        )
    record = json.loads(path.read_text())
    record.pop(RESOLVED_RUNTIME_KEY, None)
    return ml_collections.ConfigDict(record)


def config_differences(workdir: Path, config: ml_collections.ConfigDict) -> list[str] | None:
    """'key: saved -> now' for every config key that differs from the run saved in `workdir`
    (None when it has no readable config.json)."""
    try:
        saved = _flat(json.loads((as_path(workdir) / CONFIG_FILE).read_text()))
    except (OSError, ValueError):
        return None
    now = _flat(json.loads(config.to_json_best_effort()))
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    return [f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in keys]


def mismatch_message(workdir: Path, config: ml_collections.ConfigDict, error: Exception) -> str:
    """One line for a workdir whose checkpoints another config wrote: the differing keys when
    the run's config.json is there, else the checkpoint's own complaint."""
    differences = config_differences(workdir, config)
    if differences is None:
        return f'{error}; use a new --workdir for a different config'
    shown = ', '.join(differences[:6]) or 'no key differs; the model code changed'
    more = f' and {len(differences) - 6} more' if len(differences) > 6 else ''
    return (
        f'workdir {str(workdir)!r} holds checkpoints of a run with a different config '
        f'({shown}{more}); use a new --workdir, or the same config to resume'
    )


def _flat(record: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if key == RESOLVED_RUNTIME_KEY and not prefix:
            continue
        if isinstance(value, dict):
            flat.update(_flat(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat
