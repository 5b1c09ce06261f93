"""Checkpoints with orbax: the train state and the data iterator's position, saved together.

A checkpoint is `<workdir>/checkpoints/<step>/{state,data}`. Orbax writes each step to a
temporary folder and renames it when complete, so an interrupted write is never listed as a step.
Restoring puts every array back on the mesh with the sharding of the freshly initialised state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Keeps the newest `keep` checkpoints of a run under `directory`."""

    def __init__(self, directory: Path, *, keep: int):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={'state': ocp.StandardCheckpointHandler(),
                           'data': grain.checkpoint.CheckpointHandler()})

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Starts an (asynchronous) save; device arrays are copied before this returns, so the
        state may be donated to the next step right away."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

    def restore_latest(self, state_like: Any, data_iterator: Any) -> Any | None:
        """The newest checkpoint's state (on `state_like`'s shardings), with `data_iterator`
        moved to where it was. None when the run has no checkpoint yet."""
        step = self._manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        logging.info('Restored checkpoint of step %d from %s', step, self.directory)
        return restored['state']

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_checkpoint(directory: str | Path, step: int | None = None) -> dict[str, Any]:
    """A saved train state as nested dicts of arrays on this host's first device (no model or
    config needed, whatever mesh or host count wrote it): for analysis, export and tests.
    `step=None` takes the newest."""
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={'state': ocp.StandardCheckpointHandler()}) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {directory}')
        # Target every array at one local device: the saved shardings may name devices of
        # another mesh or of other processes.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              manager.item_metadata(step)['state'])
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))['state']
