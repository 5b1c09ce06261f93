"""Hardware choices in one room: what the run executes on and with which kernels, resolved from
`config.runtime`, applied once, and recorded in the run's config.json and summary.json.

    host = host_facts(config, processes=1)     # reads the machine; changes nothing
    runtime = resolve(config, host)            # pure: the choices and why each was made
    runtime = apply(runtime, starting_process=True)   # the only code that changes the process
    record(runtime)                            # + versions, device kind and count, for the run

`config.runtime` (validated like every key; 'auto' takes the choice measured fastest for the
model family and dtype on this kind of host, docs/speed.md):
  cpu_devices       XLA CPU devices to split the host into (data parallel over cores)
  xla_flags         'auto' | 'none': the XLA CPU flags measured per (family, dtype)
  conv_backend      'auto' | 'onednn' | 'xla': CPU convolution kernels (nets.kernels.switch)
  attention         'auto' | 'plain' | 'xla' | 'cudnn': attention kernels (nets.kernels.switch)
  malloc            'auto' | 'default' | 'heap': glibc allocator settings ('heap' keeps freed
                    memory in one heap, so XLA's per-step buffers stop costing page faults)
  micro_batch_size  -1 'auto' | 0 whole batches | k examples per device per micro-batch (the
                    same update, computed in pieces whose activations stay in the caches)

Measured choices apply only on a CPU-only host and only with the jaxlib release they were
measured on (`MEASURED_JAXLIB`): an unknown XLA flag aborts XLA at start, and experimental
flags come and go. GPUs and TPUs take none of them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform as platform_lib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

import nets
from nets.kernels import switch
from train.tasks import task_class

CPU_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
XLA_FLAG_CHOICES = ('auto', 'none')
MALLOC_CHOICES = ('auto', 'default', 'heap')
MEASURED_JAXLIB = ('0.10.',)

# Convolutions off YNNPACK for every model (XLA's own convolutions are faster on these shapes);
# float32 ViTs also take dot products off it.
DEFAULT_YNN_FUSION = '-individual_convolution'
YNN_FUSION_BY_FAMILY_AND_DTYPE = {
    ('vit', 'float32'): '-individual_convolution,-individual_dot,-dot',
}
# glibc malloc: one arena, no mmap for large blocks, never trim the heap (64 GiB threshold).
MALLOC_ENV = {
    'MALLOC_ARENA_MAX': '1',
    'MALLOC_MMAP_MAX_': '0',
    'MALLOC_TRIM_THRESHOLD_': str(64 << 30),
}
MALLOC_ENV_FAMILIES = ('resnet', 'language_model')
# Families whose small convolutions ran faster on XLA's kernels than on oneDNN's.
CONV_BACKEND_BY_FAMILY = {'cnn': 'xla'}
# Examples per device in a micro-batch, for families whose loss sums over independent examples.
MICRO_BATCH_BY_FAMILY = {'vit': 16}


def default_block() -> ml_collections.ConfigDict:
    """The `config.runtime` block with its defaults."""
    block = ml_collections.ConfigDict()
    block.cpu_devices = 1
    block.xla_flags = 'auto'
    block.conv_backend = 'auto'
    block.attention = 'auto'
    block.malloc = 'auto'
    block.micro_batch_size = -1
    return block


def check_block(block: Mapping[str, Any]) -> None:
    """Raises ValueError naming a bad `config.runtime` value and the valid choices."""
    for key, valid in (
        ('xla_flags', XLA_FLAG_CHOICES),
        ('conv_backend', switch.CONV_BACKENDS),
        ('attention', switch.ATTENTION_BACKENDS),
        ('malloc', MALLOC_CHOICES),
    ):
        if block[key] not in valid:
            raise ValueError(
                f'config.runtime.{key}={block[key]!r} is not valid; choose one of {list(valid)}'
            )
    if block['cpu_devices'] < 1:
        raise ValueError(f'config.runtime.cpu_devices must be >= 1, got {block["cpu_devices"]}')
    if block['micro_batch_size'] < -1:
        raise ValueError(
            'config.runtime.micro_batch_size must be -1 (auto), 0 (whole batches) '
            f'or a size > 0, got {block["micro_batch_size"]}'
        )


@dataclasses.dataclass(frozen=True)
class Host:
    """What `resolve` needs to know about the machine and the process (gathered by
    `host_facts`; tests build it by hand)."""

    platform: str  # 'cpu', 'gpu' or 'tpu': where JAX will compute
    jaxlib_version: str
    libc: str  # 'glibc' where glibc's allocator variables apply
    xla_flags: str  # XLA_FLAGS as the process found it
    environ_malloc: Mapping[str, str]  # MALLOC_* variables the user set
    processes: int = 1


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The resolved choices of one run and why each was made."""

    platform: str
    family: str | None
    dtype: str
    cpu_devices: int  # CPU devices per process (1 on GPU/TPU hosts: not used)
    devices: int  # data-parallel devices the choices assume
    xla_flags: tuple[str, ...]  # flags this run adds to XLA_FLAGS
    conv_backend: str  # 'onednn' | 'xla'
    conv_backend_required: bool  # set by the config: an error, not a fallback, if unavailable
    attention: str
    malloc_env: tuple[tuple[str, str], ...]
    grad_accum_steps: int  # micro-batches per step
    reasons: tuple[tuple[str, str], ...]  # (choice, why)

    def reason(self, choice: str) -> str:
        return dict(self.reasons).get(choice, '')


def detect_platform() -> str:
    """Where JAX will compute, without starting it: JAX_PLATFORMS when set, else 'tpu'/'gpu'
    when such a plugin is installed, else 'cpu'."""
    wanted = os.environ.get('JAX_PLATFORMS', '').strip().lower()
    if wanted:
        first = wanted.split(',')[0]
        return {'cuda': 'gpu', 'rocm': 'gpu'}.get(first, first)
    names = {
        (dist.metadata['Name'] or '').lower().replace('_', '-')
        for dist in importlib.metadata.distributions()
    }
    if any(name.startswith('libtpu') for name in names):
        return 'tpu'
    if any(name.startswith(('jax-cuda', 'jax-rocm')) for name in names):
        return 'gpu'
    return 'cpu'


def host_facts(processes: int = 1, platform: str | None = None) -> Host:
    """Reads the machine and the environment (changes nothing)."""
    from jaxlib.version import __version__ as jaxlib_version  # starts no backend

    return Host(
        platform=platform or detect_platform(),
        jaxlib_version=jaxlib_version,
        libc=platform_lib.libc_ver()[0],
        xla_flags=os.environ.get('XLA_FLAGS', ''),
        environ_malloc={k: os.environ[k] for k in MALLOC_ENV if k in os.environ},
        processes=processes,
    )


def cpu_xla_flags(family: str | None = None, dtype: str = 'float32') -> list[str]:
    """The XLA CPU flags measured fastest for a model of `family` computing in `dtype`."""
    fusion = YNN_FUSION_BY_FAMILY_AND_DTYPE.get((family, dtype), DEFAULT_YNN_FUSION)
    return [f'{YNN_FUSION_FLAG}={fusion}']


def cpu_grad_accum_steps(
    family: str | None, batch_size: int, devices: int, micro_batch_size: int = -1
) -> int:
    """Micro-batches per step at a global `batch_size` over `devices`: per-device batch /
    micro-batch size (`micro_batch_size`, or with -1 the family's measured size) when that
    divides into more than one, else 1 (whole batches)."""
    micro = MICRO_BATCH_BY_FAMILY.get(family) if micro_batch_size == -1 else micro_batch_size
    if not micro or devices < 1 or batch_size % devices:
        return 1
    per_device = batch_size // devices
    return per_device // micro if per_device % micro == 0 and per_device > micro else 1


def cpu_malloc_env(family: str | None) -> dict[str, str]:
    """The allocator variables measured fastest for `family` (MALLOC_ENV, or nothing)."""
    return dict(MALLOC_ENV) if family in MALLOC_ENV_FAMILIES else {}


def _cpu_device_count(host: Host, requested: int) -> int:
    match = re.search(rf'{CPU_DEVICE_COUNT_FLAG}=(\d+)', host.xla_flags)
    return int(match.group(1)) if match else requested


def resolve(config: ml_collections.ConfigDict, host: Host) -> Runtime:
    """The run's hardware choices from `config.runtime` on `host`; pure (reads nothing else)."""
    block = config.runtime
    name = config.model.name
    family = nets.model_family(name) if name in nets.list_models() else None
    dtype = str(config.dtype)
    on_cpu = host.platform == 'cpu'
    measured = on_cpu and host.jaxlib_version.startswith(MEASURED_JAXLIB)
    reasons: dict[str, str] = {}
    why_not = (
        f'not a CPU run ({host.platform})'
        if not on_cpu
        else f'jaxlib {host.jaxlib_version} not measured (measured: {MEASURED_JAXLIB})'
    )

    cpu_devices = _cpu_device_count(host, block.cpu_devices) if on_cpu else 1
    if on_cpu and CPU_DEVICE_COUNT_FLAG in host.xla_flags:
        reasons['cpu_devices'] = 'XLA_FLAGS sets the device count'
    flags: list[str] = []
    if on_cpu and cpu_devices > 1 and CPU_DEVICE_COUNT_FLAG not in host.xla_flags:
        flags.append(f'{CPU_DEVICE_COUNT_FLAG}={cpu_devices}')
    if block.xla_flags == 'none':
        reasons['xla_flags'] = 'config.runtime.xla_flags=none'
    elif measured:
        own = [f for f in cpu_xla_flags(family, dtype) if f.split('=')[0] not in host.xla_flags]
        flags += own
        reasons['xla_flags'] = (
            f'measured fastest for ({family}, {dtype})' if own else 'XLA_FLAGS already sets them'
        )
    else:
        reasons['xla_flags'] = f'none: {why_not}'

    conv = block.conv_backend
    if not on_cpu:
        conv, reasons['conv_backend'] = 'xla', f"XLA's on {host.platform}"
    elif conv == 'auto':
        conv = CONV_BACKEND_BY_FAMILY.get(family, 'onednn')
        reasons['conv_backend'] = (
            f'{conv}: measured faster for family {family}'
            if family in CONV_BACKEND_BY_FAMILY
            else "onednn: faster than XLA's on the CPU where it builds"
        )
    else:
        reasons['conv_backend'] = f'config.runtime.conv_backend={conv}'
    reasons['attention'] = (
        f'config.runtime.attention={block.attention}'
        if block.attention != 'auto'
        else 'auto: cuDNN where it applies on a GPU, else plain'
    )

    malloc: dict[str, str] = {}
    if block.malloc == 'default':
        reasons['malloc'] = "config.runtime.malloc='default'"
    elif not (on_cpu and host.libc == 'glibc'):
        reasons['malloc'] = "glibc's defaults: not a glibc CPU host"
    elif block.malloc == 'heap' or (block.malloc == 'auto' and measured):
        wanted = MALLOC_ENV if block.malloc == 'heap' else cpu_malloc_env(family)
        malloc = {k: host.environ_malloc.get(k, v) for k, v in wanted.items()}
        reasons['malloc'] = (
            "config.runtime.malloc='heap'"
            if block.malloc == 'heap'
            else f'measured faster for family {family}'
            if wanted
            else f"glibc's defaults: not measured faster for family {family}"
        )
        kept = {k: v for k, v in host.environ_malloc.items() if wanted.get(k, v) != v}
        if kept:
            reasons['malloc'] += f'; the values the environment sets are kept: {kept}'
    else:
        reasons['malloc'] = f"glibc's defaults: {why_not}"

    devices = cpu_devices * host.processes
    accum = int(config.grad_accum_steps)
    if accum > 1:
        reasons['grad_accum_steps'] = f'config.grad_accum_steps={accum}'
    elif block.micro_batch_size == 0:
        reasons['grad_accum_steps'] = 'config.runtime.micro_batch_size=0: whole batches'
    elif not _can_accumulate(config):
        reasons['grad_accum_steps'] = 'whole batches: the task does not accumulate gradients'
    elif block.micro_batch_size > 0 or (measured and family in MICRO_BATCH_BY_FAMILY):
        accum = cpu_grad_accum_steps(
            family, int(config.batch_size), devices, block.micro_batch_size
        )
        micro_batch_size = (
            block.micro_batch_size if block.micro_batch_size > 0 else MICRO_BATCH_BY_FAMILY[family]
        )
        reasons['grad_accum_steps'] = (
            f'micro-batches of {micro_batch_size} examples per device over {devices} device(s)'
        )
    else:
        reasons['grad_accum_steps'] = 'whole batches'
    return Runtime(
        platform=host.platform,
        family=family,
        dtype=dtype,
        cpu_devices=cpu_devices,
        devices=devices,
        xla_flags=tuple(flags),
        conv_backend=conv,
        conv_backend_required=on_cpu and block.conv_backend == 'onednn',
        attention=block.attention,
        malloc_env=tuple(sorted(malloc.items())),
        grad_accum_steps=accum,
        reasons=tuple(sorted(reasons.items())),
    )


def _can_accumulate(config: ml_collections.ConfigDict) -> bool:
    return task_class(config.task).accumulates_gradients(config)


def apply(
    runtime: Runtime, *, starting_process: bool, restart_command: Sequence[str] | None = None
) -> Runtime:
    """Puts `runtime` in force and returns what is in force. The only code that touches
    os.environ or re-executes the process.

    `starting_process`: JAX has not started yet (train.main), so XLA flags can still be set and
    the kernel switch is set for the process; in a process where JAX may have started (a test,
    a sweep), XLA flags are left out (the record says so) and the switch is left to the loop,
    which sets it for the run only.
    `restart_command`: where allocator variables are missing, set them and replace this process
    by this command (os.execv), since glibc reads them only at start-up.
    """
    reasons = dict(runtime.reasons)
    flags = runtime.xla_flags
    if flags and starting_process:
        os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), *flags]).strip()
    elif flags:
        reasons['xla_flags'] = f'not applied (JAX may have started in this process): {flags}'
        flags = ()
    malloc = dict(runtime.malloc_env)
    missing = {k: v for k, v in malloc.items() if os.environ.get(k) != v}
    if missing and restart_command:
        os.environ.update(missing)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(restart_command[0], list(restart_command))
    if missing:
        reasons['malloc'] += ' (not in force: train.main sets them when it starts the process)'
        malloc = {}
    conv = runtime.conv_backend
    if runtime.platform == 'cpu' and conv == 'onednn':
        from nets.kernels import onednn_conv

        problem = onednn_conv.unavailable_reason()  # builds it now, not while tracing
        if problem is not None:
            if runtime.conv_backend_required:
                raise onednn_conv.OnednnUnavailable(
                    f"config.runtime.conv_backend='onednn', but: {problem}"
                )
            conv = 'xla'
            reasons['conv_backend'] = f'xla: oneDNN unavailable ({problem.splitlines()[0]})'
    if starting_process:  # a caller's process keeps its switch: the loop sets it per run
        switch.set_kernels(conv=conv, attention=runtime.attention)
    return dataclasses.replace(
        runtime,
        xla_flags=flags,
        conv_backend=conv,
        malloc_env=tuple(sorted(malloc.items())),
        reasons=tuple(sorted(reasons.items())),
    )


def record(runtime: Runtime) -> dict[str, Any]:
    """The runtime as the run's config.json and summary.json keep it: every choice with its
    reason, the library versions, and the devices JAX found."""
    import jax

    devices = jax.devices()
    return {
        'platform': runtime.platform,
        'device_kind': devices[0].device_kind,
        'device_count': jax.device_count(),
        'process_count': jax.process_count(),
        'cpu_devices_per_process': runtime.cpu_devices if runtime.platform == 'cpu' else None,
        'xla_flags_added': list(runtime.xla_flags),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'conv_backend': runtime.conv_backend,
        'attention': runtime.attention,
        'malloc_env': dict(runtime.malloc_env),
        'grad_accum_steps': runtime.grad_accum_steps,
        'reasons': dict(runtime.reasons),
        'jax': jax.__version__,
        'jaxlib': importlib.metadata.version('jaxlib'),
        'python': platform_lib.python_version(),
        'cpu': cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the machine type."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform_lib.processor() or platform_lib.machine()
