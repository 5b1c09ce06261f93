"""2-D convolutions on oneDNN for JAX's CPU backend: the kernels PyTorch's CPU convolutions run.

XLA's CPU backend runs convolutions on Eigen's kernels (or YNNPACK's), which are slower than
oneDNN's on a ConvNet's layers (experiments/benchmarks/conv_benchmark.py times each pass;
docs/speed.md). This module
compiles nets/kernels/native/onednn_conv.cc (three XLA FFI handlers: forward pass, input gradient,
kernel gradient) and onednn_matmul.cc (matrix products, for nets/kernels/onednn_matmul.py) into
one library, against the oneDNN wheel (`onednn-cpu-gomp`, a dependency on x86-64 Linux) and
jaxlib's FFI headers, once per source/jaxlib version, into a cache directory, and gives
`conv2d`, a differentiable channels-last 2-D convolution whose passes call those handlers.

`nets.kernels.conv` sends 2-D float32/bfloat16 convolutions here on the CPU, grouped ones
(feature_group_count) included, when the kernel switch (`nets.kernels.switch`: conv 'auto' or
'onednn') asks for them and `available()`, bfloat16 ones where this CPU has oneDNN's bfloat16
kernels (`runnable_dtypes`: AVX-512 and up); elsewhere (GPU, TPU, other ranks and dtypes, dilated
kernels) convolutions stay XLA's. `available()` builds the library on first use (a few seconds
with g++); the trainer calls it before tracing (`train.runtime.apply`). XLA's FLOP count sees
custom calls as free, so FLOP counts (`nets.tools.flops`) trace with XLA's convolutions.

Data parallel meshes: each pass is a `custom_partitioning` op that runs on every device's share
of the batch (the kernel gradient then sums the shares with a psum), with oneDNN's OpenMP
threads split between the devices of this process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from nets.kernels import switch

SOURCES = tuple(
    Path(__file__).parent / 'native' / f for f in ('onednn_conv.cc', 'onednn_matmul.cc')
)
CACHE_ENV = 'DEEPNETS_CACHE'
DTYPES = (jnp.float32, jnp.bfloat16)
TARGETS = {
    'forward': 'OnednnConvForward',
    'input_gradient': 'OnednnConvInputGradient',
    'kernel_gradient': 'OnednnConvKernelGradient',
}
MATMUL_TARGET = 'OnednnMatmul'


class OnednnUnavailable(RuntimeError):
    """oneDNN convolutions cannot be built or loaded here (the message says why and what to do)."""


def onednn_prefix() -> Path:
    """The installation prefix holding oneDNN's headers (include/oneapi/dnnl) and library (lib):
    $ONEDNN_ROOT, else this Python's prefix, where the onednn-cpu-gomp wheels install them."""
    candidates = [Path(os.environ['ONEDNN_ROOT'])] if os.environ.get('ONEDNN_ROOT') else []
    candidates += [Path(sys.prefix), Path(sys.base_prefix)]
    for prefix in candidates:
        if (prefix / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp').is_file() and any(
            (prefix / 'lib').glob('libdnnl.so*')
        ):
            return prefix
    raise OnednnUnavailable(
        f'oneDNN headers and library not found under {", ".join(map(str, candidates))}: '
        "pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 (the project's "
        'dependencies on x86-64 Linux) or set ONEDNN_ROOT'
    )


def _compiler() -> str:
    for name in filter(None, (os.environ.get('CXX'), 'g++', 'c++', 'clang++')):
        path = shutil.which(name)
        if path:
            return path
    raise OnednnUnavailable('no C++ compiler found (install g++ or set CXX)')


def build_command(output: Path) -> list[str]:
    """The compiler command that builds the FFI library into `output`."""
    prefix = onednn_prefix()
    lib = prefix / 'lib'
    return [
        _compiler(),
        '-O2',
        '-std=c++17',
        '-shared',
        '-fPIC',
        '-fopenmp',
        f'-I{jax.ffi.include_dir()}',
        f'-I{prefix / "include"}',
        *map(str, SOURCES),
        '-o',
        str(output),
        f'-L{lib}',
        '-ldnnl',
        f'-Wl,-rpath,{lib}',
    ]


def library_path() -> Path:
    """Where the built library lies: the cache directory ($DEEPNETS_CACHE, else
    ~/.cache/deepnets) under a name keyed by the source, the command and jaxlib's version."""
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'deepnets')
    key = hashlib.sha256(b''.join(source.read_bytes() for source in SOURCES))
    key.update(' '.join(build_command(Path('out.so'))).encode())
    key.update(importlib.metadata.version('jaxlib').encode())
    return cache / f'onednn-{key.hexdigest()[:16]}.so'


def build() -> Path:
    """Compiles nets/kernels/native/*.cc unless the cache holds the library already (a few
    seconds); returns the library's path. Raises OnednnUnavailable with the compiler's message."""
    path = library_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders never see a half-written file.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        tmp = Path(scratch) / path.name
        result = subprocess.run(build_command(tmp), capture_output=True, text=True, timeout=600)
        if result.returncode:
            names = ', '.join(source.name for source in SOURCES)
            raise OnednnUnavailable(f'building {names} failed:\n{result.stderr[-4000:]}')
        os.replace(tmp, path)
    return path


@functools.cache
def _open() -> tuple[object | None, str | None]:
    """Builds, loads and registers the FFI handlers once: (the library, None), or (None, why
    not)."""
    if sys.platform != 'linux':
        return None, f'oneDNN convolutions are built for Linux only (this is {sys.platform})'
    try:
        import ctypes

        library = ctypes.cdll.LoadLibrary(str(build()))
    except (OnednnUnavailable, OSError, subprocess.TimeoutExpired) as error:
        return None, str(error)
    for target in (*TARGETS.values(), MATMUL_TARGET):
        jax.ffi.register_ffi_target(
            target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu'
        )
    return library, None


def _load() -> str | None:
    """Builds and registers the FFI handlers once; None on success, else why not."""
    return _open()[1]


@functools.cache
def runnable_dtypes() -> tuple[jnp.dtype, ...]:
    """The dtypes oneDNN's kernels run in on this CPU (builds the library on first call; () where
    it cannot be loaded): float32 everywhere, bfloat16 where oneDNN has kernels for it (AVX-512
    and up; it refuses to create them on AVX2-only CPUs, where XLA keeps bfloat16 work)."""
    library, problem = _open()
    if problem is not None:
        return ()
    if library.DeepnetsOnednnRunsBfloat16():
        return tuple(jnp.dtype(d) for d in DTYPES)
    return (jnp.dtype(jnp.float32),)


def unavailable_reason() -> str | None:
    """Builds and loads the library once (cached); None where oneDNN convolutions can run, else
    why not."""
    return _load()


def available() -> bool:
    """Whether oneDNN convolutions can run here (builds the library on first call)."""
    return _load() is None


def use_for_trace(dtype: jnp.dtype | None = None) -> bool:
    """Whether a CPU convolution (in `dtype`) traced now runs on oneDNN, as the kernel switch
    says: 'xla' no; 'onednn' yes (OnednnUnavailable where it cannot); 'auto' where available,
    with a warning once where not. A dtype this CPU's oneDNN has no kernels for
    (`runnable_dtypes`) stays on XLA's either way."""
    backend = switch.conv_backend()
    if backend == 'xla':
        return False
    problem = _load()
    if problem is None:
        return dtype is None or runs(dtype, backend)
    if backend == 'onednn':
        raise OnednnUnavailable(f"the conv kernel switch asks for 'onednn', but: {problem}")
    _warn_once(problem)
    return False


def runs(dtype: jnp.dtype, backend: str) -> bool:
    """Whether oneDNN runs `dtype` here; where the switch asked for 'onednn' and it does not,
    says so once."""
    if jnp.dtype(dtype) in runnable_dtypes():
        return True
    if backend == 'onednn':
        _warn_dtype_once(jnp.dtype(dtype).name)
    return False


@functools.cache
def _warn_dtype_once(dtype: str) -> None:
    # Products and convolutions alike: the switch asked for oneDNN, XLA's kernels run instead.
    logging.warning(
        "oneDNN has no %s kernels on this CPU (AVX-512 and up): XLA's run that work instead",
        dtype,
    )


@functools.cache
def _warn_once(problem: str) -> None:
    logging.warning(
        "CPU convolutions run on XLA's kernels (slower: see "
        "nets/kernels/onednn_conv.py; config.runtime.conv_backend='xla' silences "
        'this): %s',
        problem,
    )


def supports(x: jax.Array, w: jax.Array, rhs_dilation: Sequence[int], groups: int = 1) -> bool:
    """Whether `conv2d` computes this convolution: 2-D, undilated kernel, `groups` groups of
    the input and output channels, both operands float32 or both bfloat16."""
    return (
        x.ndim == 4
        and w.ndim == 4
        and all(d == 1 for d in rhs_dilation)
        and groups >= 1
        and x.shape[-1] == w.shape[2] * groups
        and w.shape[3] % groups == 0
        and x.dtype == w.dtype
        and any(x.dtype == d for d in DTYPES)
    )


# --- The three passes, each partitioned over a data-parallel mesh -----------------------------


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _ffi(
    target: str,
    result: jax.ShapeDtypeStruct,
    a: jax.Array,
    b: jax.Array,
    strides: tuple[int, ...],
    padding: tuple[tuple[int, int], ...],
    groups: int,
    threads: int,
):
    return jax.ffi.ffi_call(TARGETS[target], result)(
        a,
        b,
        strides=np.asarray(strides, np.int64),
        padding_lo=np.asarray([lo for lo, _ in padding], np.int64),
        padding_hi=np.asarray([hi for _, hi in padding], np.int64),
        groups=np.int64(groups),
        threads=np.int64(threads),
    )


def _batch_axes(sharding) -> str | tuple[str, ...] | None:
    """The mesh axes an operand's leading (batch) axis is split over, or None."""
    if isinstance(sharding, NamedSharding) and len(sharding.spec):
        return sharding.spec[0]
    return None


def _local_devices(mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _output_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
    spatial = [
        (x_shape[1 + d] + lo + hi - w_shape[d]) // strides[d] + 1
        for d, (lo, hi) in enumerate(padding)
    ]
    return (x_shape[0], *spatial, w_shape[3])


def _make_pass(target: str, rule: str, reduces_batch: bool):
    """A custom_partitioning op (a, b, result_shape, strides, padding, groups) -> result running
    `target` on each device's share of the batch; `reduces_batch`: the result sums over the
    batch (kernel gradient), so the shares' results are added with a psum."""

    def single(a, b, result_shape, strides, padding, groups):
        result = jax.ShapeDtypeStruct(result_shape, a.dtype)
        return _ffi(target, result, a, b, strides, padding, groups, cores())

    op = custom_partitioning(single, static_argnums=(2, 3, 4, 5))

    def shardings(mesh, arg_shapes):
        batch = _batch_axes(arg_shapes[0].sharding)
        sharded = NamedSharding(mesh, PartitionSpec(batch, None, None, None))
        replicated = NamedSharding(mesh, PartitionSpec())
        args = (sharded, sharded if reduces_batch else replicated)
        return batch, args, replicated if reduces_batch else sharded

    def infer(result_shape, strides, padding, groups, mesh, arg_shapes, shape):
        return shardings(mesh, arg_shapes)[2]

    def partition(result_shape, strides, padding, groups, mesh, arg_shapes, shape):
        batch, arg_shardings, result_sharding = shardings(mesh, arg_shapes)
        threads = max(1, cores() // max(1, _local_devices(mesh)))
        shards = (
            1
            if batch is None
            else math.prod(
                mesh.shape[axis] for axis in ((batch,) if isinstance(batch, str) else batch)
            )
        )
        local_shape = (
            result_shape if reduces_batch else (result_shape[0] // shards, *result_shape[1:])
        )

        def lower(a, b):
            result = jax.ShapeDtypeStruct(local_shape, a.dtype)
            out = _ffi(target, result, a, b, strides, padding, groups, threads)
            if reduces_batch and batch is not None:
                out = jax.lax.psum(out, batch)
            return out

        return mesh, lower, result_sharding, arg_shardings

    op.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        propagate_user_sharding=None,
        sharding_rule=rule,
    )
    return op


# Factors: n batch, (h, w) input positions, (p, q) output positions, (i, j) kernel taps,
# c input channels, d the kernel's (c / groups), o output channels.
_forward = _make_pass('forward', 'n h w c, i j d o -> n p q o', reduces_batch=False)
_input_gradient = _make_pass('input_gradient', 'n p q o, i j d o -> n h w c', reduces_batch=False)
_kernel_gradient = _make_pass('kernel_gradient', 'n h w c, n p q o -> i j d o', reduces_batch=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    groups: int = 1,
) -> jax.Array:
    """Channels-last 2-D convolution on oneDNN: x (N, H, W, C), w (KH, KW, C / groups, O), both
    float32 or both bfloat16 -> (N, OH, OW, O); `padding` ((lo, hi), (lo, hi)) and `groups`
    (output channel o in group o // (O / groups)) as lax's padding and feature_group_count. Needs
    `available()` (the FFI handlers registered)."""
    shape = _output_shape(x.shape, w.shape, strides, padding)
    return _forward(x, w, shape, strides, padding, groups)


def _conv2d_fwd(x, w, strides, padding, groups):
    return conv2d(x, w, strides, padding, groups), (x, w)


def _conv2d_bwd(strides, padding, groups, residuals, dy):
    x, w = residuals
    dy = dy.astype(x.dtype)
    return (
        _input_gradient(dy, w, x.shape, strides, padding, groups),
        _kernel_gradient(x, dy, w.shape, strides, padding, groups),
    )


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
