"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

A checkpoint is `<workdir>/checkpoints/<step>/{state,data}`. Orbax writes each step to a
temporary folder and renames it when complete, so an interrupted write is never listed as a step.
Once a save has finished, process 0 seals it: `integrity.json` lists every file's size and
CRC-32. Restoring tries the newest step first and skips, with a warning, one whose files no
longer match its seal or that fails to load while unsealed (killed between the rename and the
seal); the skipped folder is moved to `corrupt-<step>-<time>` (kept for inspection, never
loaded) and the next older checkpoint is used. A sealed, intact checkpoint that fails to load
is not corruption (the config changed): that raises.
Restoring puts every array back on the mesh with the sharding of the freshly initialised state.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

INTEGRITY_FILE = 'integrity.json'


def file_digests(step_dir: Path) -> dict[str, list[int]]:
    """Relative path -> [size, CRC-32] of every file of a checkpoint step (the seal excluded)."""
    digests = {}
    for path in sorted(p for p in step_dir.rglob('*') if p.is_file()):
        relative = path.relative_to(step_dir).as_posix()
        if relative == INTEGRITY_FILE:
            continue
        crc = 0
        with path.open('rb') as f:
            while chunk := f.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
        digests[relative] = [path.stat().st_size, crc]
    return digests


def seal_problem(step_dir: Path) -> str | None:
    """Why a sealed checkpoint no longer matches its seal (None: intact). Raises
    FileNotFoundError when the step has no seal."""
    sealed = json.loads((step_dir / INTEGRITY_FILE).read_text())
    found = file_digests(step_dir)
    missing = sorted(set(sealed) - set(found))
    if missing:
        return f'files missing: {missing[:3]}'
    changed = sorted(name for name in sealed if sealed[name] != found[name])
    if changed:
        return f'files changed since the save (size or CRC-32): {changed[:3]}'
    return None


class Checkpointer:
    """Keeps the newest `keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: Path, *, keep: int):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={
                'state': ocp.StandardCheckpointHandler(),
                'data': grain.checkpoint.CheckpointHandler(),
            },
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts an (asynchronous) save; device arrays are copied before this returns, so the
        state may be donated to the next step right away."""
        if step in self._manager.all_steps():
            return
        self._seal_finished()
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=True,
        )

    def _seal_finished(self) -> None:
        """Waits for the save in flight, then seals every finished step not yet sealed."""
        self._manager.wait_until_finished()
        if jax.process_index() != 0:
            return
        for step in self._manager.all_steps():
            step_dir = self.directory / str(step)
            seal = step_dir / INTEGRITY_FILE
            if step_dir.is_dir() and not seal.exists():
                temporary = seal.with_suffix('.tmp')
                temporary.write_text(json.dumps(file_digests(step_dir)))
                os.replace(temporary, seal)  # atomic: a seal is complete or absent

    def _quarantine(self, step: int, reason: str) -> None:
        """Moves a corrupt step out of orbax's sight (kept on disk, never loaded again)."""
        target = self.directory / f'corrupt-{step}-{int(time.time())}'
        logging.warning(
            'checkpoint of step %d in %s is incomplete or corrupt (%s): skipped, '
            'moved to %s; resuming from the next older checkpoint',
            step,
            self.directory,
            reason,
            target.name,
        )
        if jax.process_index() == 0:
            os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'quarantined checkpoint {step}')
        self._manager.reload()

    def restore_latest(self, state_like: Any, data_iterator: Any) -> Any | None:
        """The newest intact checkpoint's state (on `state_like`'s shardings), with
        `data_iterator` moved to where it was. None when the run has no intact checkpoint."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        for step in sorted(self._manager.all_steps(), reverse=True):
            step_dir = self.directory / str(step)
            sealed = (step_dir / INTEGRITY_FILE).exists()
            problem = seal_problem(step_dir) if sealed else None
            if problem is None:
                try:
                    restored = self._manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract),
                            data=grain.checkpoint.CheckpointRestore(data_iterator),
                        ),
                    )
                except Exception as error:  # noqa: BLE001 - any failure of an unsealed step
                    if sealed:
                        raise ValueError(
                            f'checkpoint of step {step} in {self.directory} is intact but does '
                            f'not fit this run (was the config changed?): {error}'
                        ) from error
                    problem = f'unsealed and unreadable: {type(error).__name__}: {error}'
                else:
                    logging.info('Restored checkpoint of step %d from %s', step, self.directory)
                    return restored['state']
            self._quarantine(step, problem)
        return None

    def wait(self) -> None:
        self._seal_finished()

    def close(self) -> None:
        self._seal_finished()
        self._manager.close()


def load_checkpoint(directory: str | Path, step: int | None = None) -> dict[str, Any]:
    """A saved train state as nested dicts of arrays on this host's first device (no model or
    config needed, whatever mesh or host count wrote it): for analysis, export and tests.
    `step=None` takes the newest."""
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers={'state': ocp.StandardCheckpointHandler()},
    ) as manager:
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
