"""Checkpoints with orbax: the train state, the data iterator's position and the open window of
train metrics, saved together; every step sealed as soon as it is written.

A checkpoint is `<workdir>/checkpoints/<step>/{state,data,window}`. Orbax writes each step to a
temporary folder and renames it when complete (on GCS, which cannot rename, it writes the step's
folder directly and marks it complete with `commit_success.txt`), so an interrupted write is
never listed as a step. The moment a save is finalised, process 0 seals it: `integrity.json`
lists every file's size and CRC-32, written so that it is complete or absent (train/storage.py).
Only sealed steps are trusted: restoring tries the newest step first and moves aside, with a
warning, one that has no seal (the process died between the save and the seal), a seal
that cannot be read, or files that no longer match their seal; such a folder becomes
`corrupt-<step>-<time>` (kept for inspection, never loaded) and the next older step is used.
A sealed, intact step that fails to load is not corruption (the config changed): that raises
`CheckpointMismatch`.
Restoring puts every array back on the mesh with the sharding of the freshly initialised state.
"""

from __future__ import annotations

import json
import logging as std_logging
import time
import zlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from train.storage import Path, as_path, files_under, is_remote, move_folder, write_whole

INTEGRITY_FILE = 'integrity.json'
WINDOW_ITEM = 'window'
# Suffix of the folder orbax writes a step into before renaming it to the step number.
_ORBAX_TEMPORARY = '.orbax-checkpoint-tmp'


class CheckpointMismatch(ValueError):
    """An intact checkpoint that does not fit this run's state (the config changed)."""


# Orbax's bookkeeping, rewritten as it commits a step (after the seal): not sealed; the step
# metadata is checked to be readable JSON instead.
_COMMIT_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt')


def file_digests(step_dir: Path) -> dict[str, list[int]]:
    """Relative path -> [size, CRC-32] of every file of a checkpoint step (the seal and orbax's
    commit bookkeeping excluded)."""
    digests = {}
    for path in sorted(files_under(step_dir)):
        relative = path.relative_to(step_dir).as_posix()
        if relative in (*_COMMIT_FILES, INTEGRITY_FILE) or relative.startswith(
            f'{INTEGRITY_FILE}.'
        ):
            continue
        crc = size = 0
        with path.open('rb') as f:
            while chunk := f.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
        digests[relative] = [size, crc]
    return digests


def seal_problem(step_dir: Path) -> str | None:
    """Why a step cannot be trusted (None: sealed and intact): no seal, a seal that cannot be
    read, or files that differ from it."""
    seal = step_dir / INTEGRITY_FILE
    if not seal.exists():
        return 'not sealed: the run stopped between writing it and sealing it'
    try:
        sealed = json.loads(seal.read_text())
        if not isinstance(sealed, dict):
            raise ValueError('not a JSON object')
    except (ValueError, OSError) as error:
        return f'its seal {INTEGRITY_FILE} is damaged ({error})'
    metadata = step_dir / _COMMIT_FILES[0]
    if metadata.exists():
        try:
            json.loads(metadata.read_text())
        except (ValueError, OSError) as error:
            return f'its {metadata.name} is damaged ({error})'
    found = file_digests(step_dir)
    missing = sorted(set(sealed) - set(found))
    if missing:
        return f'files missing: {missing[:3]}'
    changed = sorted(name for name in sealed if sealed[name] != found[name])
    if changed:
        return f'files changed since the save (size or CRC-32): {changed[:3]}'
    return None


class _QuietOrbax:
    """Silences orbax's own error log lines while a restore is tried (its failure is reported
    once, summarised, by the caller)."""

    def __enter__(self):
        self._logger = std_logging.getLogger('absl')
        self._level = self._logger.level
        self._logger.setLevel(std_logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


class Checkpointer:
    """Keeps the newest `keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: Path, *, keep: int):
        self.directory = as_path(directory)
        self._saving_step: int | None = None  # the step whose save is in flight
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_unsealed),
            ),
            item_handlers={
                'state': ocp.StandardCheckpointHandler(),
                'data': grain.checkpoint.CheckpointHandler(),
                WINDOW_ITEM: ocp.JsonCheckpointHandler(),
            },
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def sealed_steps(self) -> list[int]:
        """Steps whose seal is present (not verified), oldest first."""
        return sorted(
            int(d.name)
            for d in self.directory.iterdir()
            if d.name.isdigit() and (d / INTEGRITY_FILE).exists()
        )

    def save(
        self, step: int, state: Any, data_iterator: Any, window: dict[str, Any] | None = None
    ) -> None:
        """Starts an (asynchronous) save of the state, the data position and the open metrics
        `window`; device arrays are copied before this returns, so the state may be donated to
        the next step right away. The step is sealed as soon as orbax finalises it."""
        if step in self._manager.all_steps():
            return
        # The previous save is sealed as it finishes: orbax would wait for it anyway.
        self._manager.wait_until_finished()
        self._saving_step = step
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                **{WINDOW_ITEM: ocp.args.JsonSave(window or {})},
            ),
            force=True,
        )

    def _seal_unsealed(self) -> None:
        """Seals every complete step that has no seal yet (process 0). Orbax calls this when a
        save is finalised, just before it renames the step's temporary folder to its final
        name, so the step appears already sealed; `wait` and `close` call it too. On GCS a step's
        folder has its final name while it is written: there it is finalised once committed, or
        when it is the step whose save is being finalised."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return
        remote = is_remote(self.directory)
        for step_dir in self.directory.iterdir():
            step_name = step_dir.name.split('.', 1)[0]
            if remote:
                finalised = step_dir.name.isdigit() and (
                    int(step_name) == self._saving_step or (step_dir / _COMMIT_FILES[1]).exists()
                )
            else:
                finalised = step_dir.name.isdigit() or step_dir.name.startswith(
                    f'{step_name}{_ORBAX_TEMPORARY}'
                )
            seal = step_dir / INTEGRITY_FILE
            if not (step_name.isdigit() and finalised and step_dir.is_dir()) or seal.exists():
                continue
            try:
                write_whole(seal, json.dumps(file_digests(step_dir)))
            except FileNotFoundError:  # a step orbax is renaming or deleting (max_to_keep)
                continue

    def _quarantine(self, step: int, reason: str) -> None:
        """Moves an untrusted step out of orbax's sight (kept on disk, never loaded again)."""
        target = self.directory / f'corrupt-{step}-{int(time.time())}'
        logging.warning(
            'checkpoint of step %d in %s cannot be trusted (%s): skipped, moved to %s; '
            'resuming from the next older checkpoint',
            step,
            self.directory,
            reason,
            target.name,
        )
        if jax.process_count() > 1:  # every process has looked at it before it moves
            multihost_utils.sync_global_devices(f'checked checkpoint {step}')
        if jax.process_index() == 0:
            move_folder(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'quarantined checkpoint {step}')
        self._manager.reload()

    def restore_latest(
        self, state_like: Any, data_iterator: Any
    ) -> tuple[Any, dict[str, Any]] | None:
        """(state on `state_like`'s shardings, saved metrics window) of the newest trusted
        checkpoint, with `data_iterator` moved to where it was; None when there is none."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        for step in sorted(self._manager.all_steps(), reverse=True):
            step_dir = self.directory / str(step)
            problem = seal_problem(step_dir)
            if problem is not None:
                self._quarantine(step, problem)
                continue
            items = {
                'state': ocp.args.StandardRestore(abstract),
                'data': grain.checkpoint.CheckpointRestore(data_iterator),
            }
            if (step_dir / WINDOW_ITEM).exists():
                items[WINDOW_ITEM] = ocp.args.JsonRestore()
            try:
                with _QuietOrbax():
                    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as error:  # noqa: BLE001 - a sealed, intact step that does not fit
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
                raise CheckpointMismatch(
                    f'checkpoint of step {step} in {self.directory} is intact but does not fit '
                    f'this run: {type(error).__name__}: {first_line[:300]}'
                ) from error
            logging.info('Restored checkpoint of step %d from %s', step, self.directory)
            window = restored[WINDOW_ITEM] if WINDOW_ITEM in items else {}
            return restored['state'], dict(window or {})
        return None

    def wait(self) -> None:
        """Waits for the save in flight (and seals it)."""
        self._manager.wait_until_finished()
        self._seal_unsealed()

    def close(self) -> None:
        self.wait()
        self._manager.close()


CHECKPOINTS_DIR = 'checkpoints'  # a workdir's folder of steps (a converted model's too)


def find_checkpoints(path: str | Path) -> Path:
    """The folder of numbered checkpoint steps that `path` names: a run's workdir or a folder
    written by `python -m nets.convert` (both hold checkpoints/), or such a folder itself."""
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f'{str(path)!r} does not exist')
    if (path / CHECKPOINTS_DIR).is_dir():
        path = path / CHECKPOINTS_DIR
    if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
        return path
    raise FileNotFoundError(
        f'no checkpoints in {str(path)!r}: give a training workdir (with {CHECKPOINTS_DIR}/), '
        'its checkpoints folder or a folder written by python -m nets.convert'
    )


def load_checkpoint(directory: str | Path, step: int | None = None) -> dict[str, Any]:
    """A saved train state as nested dicts of arrays on this host's first device (no model or
    config needed, whatever mesh or host count wrote it): for analysis, export and tests.
    `step=None` takes the newest."""
    directory = as_path(directory)
    # Only the state is read: orbax's notes about the other items (data, window) are noise here.
    with (
        _QuietOrbax(),
        ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={'state': ocp.StandardCheckpointHandler()},
        ) as manager,
    ):
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {directory}')
        # Target every array at one local device: the saved shardings may name devices of
        # another mesh or of other processes.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step)['state'],
        )
        return manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )['state']
