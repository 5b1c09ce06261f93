"""The device mesh and how arrays lie on it.

One mesh axis, `data`, over every device of every process: the batch is split along it. By
default parameters, batch statistics and optimiser state are replicated; `config.param_sharding`
rules shard chosen parameters (and their optimiser statistics and EMA) over the same axis, FSDP
style: each device keeps 1/N of them and XLA gathers them for the layer that uses them. The same
code runs on one CPU,
8 simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`), a GPU or a TPU
slice; `jax.distributed.initialize()` (see train/main.py) makes the mesh span hosts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
        raise ValueError(
            f'{what}={global_batch_size} does not divide over {devices} devices; '
            f'use a multiple of {devices}'
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f'{what}={global_batch_size} does not divide over {jax.process_count()} processes'
        )


def host_to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> one global jax.Array per key, sharded on `data`."""
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in host_batch.items()
    }


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


def param_path(key_path: Sequence[Any]) -> str:
    """'Dense_0/kernel' for a parameter's key path: the dict keys only, so an optimiser
    statistic (`[0].mu['Dense_0']['kernel']`) has the path of its parameter."""
    return '/'.join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def fsdp_spec(shape: Sequence[int], num_devices: int, min_size: int) -> PartitionSpec:
    """The largest dimension that splits evenly over the devices goes on the data axis; small
    or indivisible arrays stay replicated."""
    size = int(np.prod(shape)) if len(shape) else 1
    if num_devices == 1 or size < min_size:
        return PartitionSpec()
    candidates = [d for d in range(len(shape)) if shape[d] % num_devices == 0]
    if not candidates:
        return PartitionSpec()
    dim = max(candidates, key=lambda d: (shape[d], -d))
    return PartitionSpec(*([None] * dim + [DATA_AXIS]))


def parameter_specs(
    params: Any, rules: Sequence[Sequence[str]], num_devices: int, min_size: int
) -> dict[str, PartitionSpec]:
    """Parameter path -> PartitionSpec, from (regex, strategy) rules; the first rule whose regex
    matches the whole path decides, unmatched parameters are replicated."""
    compiled = [(re.compile(pattern), strategy) for pattern, strategy in rules]
    specs = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = param_path(key_path)
        spec = PartitionSpec()
        for pattern, strategy in compiled:
            if pattern.fullmatch(path):
                if strategy == 'fsdp':
                    spec = fsdp_spec(leaf.shape, num_devices, min_size)
                break
        specs[path] = spec
    return specs


def state_shardings(
    state_shapes: Any, mesh: Mesh, rules: Sequence[Sequence[str]] = (), min_size: int = 0
) -> Any:
    """NamedShardings for a train state (or any tree holding parameters): a leaf gets its
    parameter's spec when its dict-key path and shape are a parameter's (parameters, optimiser
    moments, accumulated gradients, the EMA); everything else is replicated."""
    if not rules:
        return jax.tree.map(lambda _: replicated(mesh), state_shapes)
    params = state_shapes.params
    specs = parameter_specs(params, rules, mesh.devices.size, min_size)
    shapes = {
        param_path(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }

    def sharding(key_path, leaf):
        path = param_path(key_path)
        if path in specs and tuple(getattr(leaf, 'shape', ())) == shapes[path]:
            return NamedSharding(mesh, specs[path])
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(sharding, state_shapes)
