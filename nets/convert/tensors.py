"""Reading a checkpoint's named tensors, and turning PyTorch layouts into Flax ones.

Readers need no framework: `.safetensors` is parsed here with numpy (an 8-byte header length,
a JSON table of names, dtypes and byte ranges, then the raw data), `.npz` is numpy's own; only
a pickled `.pth`/`.pt` state dict needs torch, imported when such a file is read.

`Tensors` hands out each tensor once by name and remembers which were taken, so a mapping that
leaves a tensor unread (a layer the target model lacks, a variant the mapping does not know)
fails naming the leftovers instead of converting part of a model silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ('.safetensors', '.npz', '.pth', '.pt', '.bin')

_SAFETENSORS_DTYPES = {
    'F64': np.float64,
    'F32': np.float32,
    'F16': np.float16,
    'I64': np.int64,
    'I32': np.int32,
    'I16': np.int16,
    'I8': np.int8,
    'U8': np.uint8,
    'BOOL': np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array of a .safetensors file (bfloat16 tensors come back as float32)."""
    raw = Path(path).read_bytes()
    header_size = int.from_bytes(raw[:8], 'little')
    header = json.loads(raw[8 : 8 + header_size])
    data = memoryview(raw)[8 + header_size :]
    tensors = {}
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        start, end = entry['data_offsets']
        dtype = entry['dtype']
        if dtype == 'BF16':  # the high half of a float32
            halves = np.frombuffer(data[start:end], np.uint16).astype(np.uint32) << 16
            array = halves.view(np.float32)
        elif dtype in _SAFETENSORS_DTYPES:
            array = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[dtype])
        else:
            raise ValueError(
                f'{path}: tensor {name!r} has dtype {dtype}; readable: '
                f'{sorted([*_SAFETENSORS_DTYPES, "BF16"])}'
            )
        tensors[name] = array.reshape(entry['shape']).copy()
    return tensors


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch  # an optional dependency: only pickled PyTorch files need it
    except ImportError as error:
        raise ValueError(
            f'{path} is a pickled PyTorch file and torch is not installed; save it as '
            '.safetensors (safetensors.torch.save_file(model.state_dict(), ...)) to convert '
            'it without torch'
        ) from error
    loaded = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model', 'model_state_dict'):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    return {
        name: value.detach().float().numpy() if value.is_floating_point() else value.numpy()
        for name, value in loaded.items()
        if hasattr(value, 'detach')
    }


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array of a checkpoint file, by its suffix (see `FORMATS`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no checkpoint file {str(path)!r}')
    suffix = path.suffix.lower()
    if suffix == '.safetensors':
        return read_safetensors(path)
    if suffix == '.npz':
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix in ('.pth', '.pt', '.bin'):
        return _read_torch(path)
    raise ValueError(f'unknown checkpoint format {suffix!r} of {path}; valid: {list(FORMATS)}')


class Tensors:
    """The tensors of one checkpoint, each taken once by name; `check_all_taken` names the rest.

    `ignore` are regular expressions of names that carry nothing the model needs (PyTorch's
    `num_batches_tracked`, index buffers the model recomputes).
    """

    def __init__(self, tensors: dict[str, np.ndarray], origin: str, ignore: Iterable[str] = ()):
        self._tensors = {name: np.asarray(value) for name, value in tensors.items()}
        self._origin = origin
        self._taken: set[str] = set()
        self._ignore = [re.compile(pattern) for pattern in ignore]

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def _get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            near = [n for n in self.names() if n.split('.')[0] == name.split('.')[0]][:5]
            raise ValueError(
                f'{self._origin} has no tensor {name!r}; names near it: {near or self.names()[:5]}'
            )
        return self._tensors[name]

    def take(self, name: str) -> np.ndarray:
        """The tensor `name` as float32, marked as used."""
        value = self._get(name)
        self._taken.add(name)
        return value.astype(np.float32)

    def count(self, pattern: str) -> int:
        """How many distinct values the first group of regex `pattern` takes over all names."""
        regex = re.compile(pattern)
        return len({m.group(1) for n in self._tensors if (m := regex.match(n))})

    def check_all_taken(self, what: str) -> None:
        """Raise a ValueError naming the tensors no mapping took (the model would lack them)."""
        left = [
            n
            for n in self.names()
            if n not in self._taken and not any(p.search(n) for p in self._ignore)
        ]
        if left:
            raise ValueError(
                f'{len(left)} tensor(s) of {self._origin} have no place in {what}: {left[:8]}'
            )


# ------------------------------------------------------------------------- PyTorch -> Flax layouts


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """(out, in, *window) PyTorch convolution weights -> (*window, in, out) Flax kernels."""
    return np.moveaxis(weight, (0, 1), (-1, -2))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """(out, in) nn.Linear weights -> (in, out) Dense kernels."""
    return weight.T


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """tree['a']['b']['c'] = value for path 'a/b/c', creating the dicts on the way."""
    *parents, leaf = path.split('/')
    for key in parents:
        tree = tree.setdefault(key, {})
    if leaf in tree:
        raise ValueError(f'two tensors map to {path!r}')
    tree[leaf] = value


class FlaxTree:
    """The params and batch_stats being built, written by Flax path ('stem/conv/kernel')."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.batch_stats: dict[str, Any] = {}

    def param(self, path: str, value: np.ndarray) -> None:
        set_path(self.params, path, np.asarray(value, np.float32))

    def dense(self, tensors: Tensors, torch_name: str, path: str, bias: bool = True) -> None:
        """nn.Linear `torch_name` into Dense `path`."""
        self.param(f'{path}/kernel', dense_kernel(tensors.take(f'{torch_name}.weight')))
        if bias:
            self.param(f'{path}/bias', tensors.take(f'{torch_name}.bias'))

    def conv(self, tensors: Tensors, torch_name: str, path: str) -> None:
        """nn.ConvNd `torch_name` into Conv `path` (its bias when the checkpoint has one)."""
        self.param(f'{path}/kernel', conv_kernel(tensors.take(f'{torch_name}.weight')))
        if f'{torch_name}.bias' in tensors:
            self.param(f'{path}/bias', tensors.take(f'{torch_name}.bias'))

    def layer_norm(self, tensors: Tensors, torch_name: str, path: str) -> None:
        """nn.LayerNorm `torch_name` (weight, bias) into LayerNorm `path` (scale, bias)."""
        self.param(f'{path}/scale', tensors.take(f'{torch_name}.weight'))
        self.param(f'{path}/bias', tensors.take(f'{torch_name}.bias'))

    def batch_norm(self, tensors: Tensors, torch_name: str, path: str) -> None:
        """nn.BatchNorm `torch_name` into BatchNorm `path`: affine parameters and statistics."""
        self.layer_norm(tensors, torch_name, path)
        set_path(self.batch_stats, f'{path}/mean', tensors.take(f'{torch_name}.running_mean'))
        set_path(self.batch_stats, f'{path}/var', tensors.take(f'{torch_name}.running_var'))

    def model_state(self) -> dict[str, Any]:
        return {'batch_stats': self.batch_stats} if self.batch_stats else {}
