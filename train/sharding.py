"""The device mesh and how arrays lie on it.

One mesh axis, `data`, over every device of every process: the batch is split along it and
parameters, batch statistics and optimiser state are replicated. The same code runs on one CPU,
8 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), a GPU or a TPU
slice; `jax.distributed.initialize()` (see train/main.py) makes the mesh span hosts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(global_batch_size: int, mesh: Mesh, what: str = 'batch_size') -> None:
    """A global batch must split evenly over devices and processes."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f'{what}={global_batch_size} does not divide over {devices} devices; '
                         f'use a multiple of {devices}')
    if global_batch_size % jax.process_count():
        raise ValueError(f'{what}={global_batch_size} does not divide over '
                         f'{jax.process_count()} processes')


def host_to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> one global jax.Array per key, sharded on `data`."""
    sharding = batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in host_batch.items()}


def fetch(tree: Any) -> Any:
    """Device values -> host numpy, also for arrays spread over several processes (every process
    gets the full value)."""
    def to_host(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(to_host, tree)
