"""The host's properties that the runtime's choices depend on, read without starting JAX
(standard library and jaxlib's version only, so benchmark drivers that must not import JAX can
read them too).

    cpu = this_cpu()        # /proc/cpuinfo and /sys/devices/system/cpu/cpu0/cache, read once
    cpu.has('avx512_bf16'), cpu.l2_cache_bytes, describe(cpu)
    host = host_facts()     # + the platform JAX will use, jaxlib, libc, XLA_FLAGS, MALLOC_*

Where those files do not exist (macOS, Windows, a restricted container) the properties are
unknown (empty flags, None sizes) and the choices that need them say so. `train/runtime.py`
turns these properties into choices; tests build `Cpu` by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from platform import libc_ver

# The instruction-set flags (as /proc/cpuinfo names them) that some choice depends on.
CPU_FLAGS = (
    'avx2',
    'avx512f',
    'avx512_bf16',
    'avx512_fp16',
    'amx_bf16',
    'amx_tile',
    'amx_int8',
)
X86_ARCHES = ('x86_64', 'amd64', 'x64')
CPUINFO = Path('/proc/cpuinfo')
CACHE_DIR = Path('/sys/devices/system/cpu/cpu0/cache')


@dataclasses.dataclass(frozen=True)
class Cpu:
    """The host CPU: what `read_cpu` found (None and empty where it could not tell)."""

    arch: str = ''  # platform.machine(), lower case: 'x86_64', 'aarch64', ...
    vendor: str = ''  # x86 vendor_id: 'AuthenticAMD', 'GenuineIntel'; '' elsewhere
    model: str = ''  # the model name, e.g. 'AMD EPYC 9654 96-Core Processor'
    flags: frozenset[str] = frozenset()  # the CPU_FLAGS it has
    physical_cores: int | None = None
    logical_cores: int | None = None
    l2_cache_bytes: int | None = None  # one core's L2
    l3_cache_bytes: int | None = None  # one L3 (shared by several cores)

    @property
    def x86_64(self) -> bool:
        return self.arch in X86_ARCHES

    def has(self, flag: str) -> bool:
        if flag not in CPU_FLAGS:
            raise ValueError(f'CPU flag {flag!r} is not tracked; choose one of {list(CPU_FLAGS)}')
        return flag in self.flags

    def properties(self) -> dict[str, object]:
        """The properties as plain data (a run's record)."""
        fields = dataclasses.asdict(self)
        fields['flags'] = [flag for flag in CPU_FLAGS if flag in self.flags]
        return fields


def parse_cpuinfo(text: str, arch: str) -> Cpu:
    """A `Cpu` from the text of /proc/cpuinfo (caches not included: `parse_cache_size`)."""
    vendor = model = ''
    flags: set[str] = set()
    logical = 0
    cores: set[tuple[str, str]] = set()
    physical_id = ''
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(':'))
        if key == 'processor':
            logical += 1
        elif key == 'vendor_id' and not vendor:
            vendor = value
        elif key in ('model name', 'Model', 'Hardware') and not model:
            model = value
        elif key in ('flags', 'Features') and not flags:
            flags = set(value.split()) & set(CPU_FLAGS)
        elif key == 'physical id':
            physical_id = value
        elif key == 'core id':
            cores.add((physical_id, value))
    return Cpu(
        arch=arch.lower(),
        vendor=vendor,
        model=model,
        flags=frozenset(flags),
        physical_cores=len(cores) or logical or None,
        logical_cores=logical or None,
    )


def parse_cache_size(text: str) -> int | None:
    """Bytes of a sysfs cache size ('1024K', '32M', '512'); None when unreadable."""
    match = re.fullmatch(r'\s*(\d+)\s*([KMG]?)B?\s*', text, re.IGNORECASE)
    if not match:
        return None
    scale = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}[match.group(2).upper()]
    return int(match.group(1)) * scale


def cache_sizes(cache_dir: Path = CACHE_DIR) -> dict[int, int]:
    """{level: bytes} of the data/unified caches of one CPU (sysfs index*/); {} elsewhere."""
    sizes: dict[int, int] = {}
    for index in sorted(cache_dir.glob('index*')):
        try:
            level = int((index / 'level').read_text())
            kind = (index / 'type').read_text().strip()
            size = parse_cache_size((index / 'size').read_text())
        except (OSError, ValueError):
            continue
        if kind in ('Data', 'Unified') and size:
            sizes[level] = size
    return sizes


def read_cpu(cpuinfo: Path = CPUINFO, cache_dir: Path = CACHE_DIR) -> Cpu:
    """This machine's CPU, read from `cpuinfo` and `cache_dir` (changes nothing)."""
    arch = platform.machine()
    try:
        cpu = parse_cpuinfo(cpuinfo.read_text(errors='replace'), arch)
    except OSError:
        cpu = Cpu(arch=arch.lower())
    sizes = cache_sizes(cache_dir)
    return dataclasses.replace(
        cpu,
        model=cpu.model or platform.processor() or arch,
        logical_cores=cpu.logical_cores or os.cpu_count(),
        l2_cache_bytes=sizes.get(2),
        l3_cache_bytes=sizes.get(3),
    )


@functools.cache
def this_cpu() -> Cpu:
    """This machine's CPU (read once per process)."""
    return read_cpu()


def _size(size: int | None) -> str:
    if size is None:
        return '?'
    return f'{size >> 20} MiB' if size >= 1 << 20 and not size % (1 << 20) else f'{size >> 10} KiB'


def describe(cpu: Cpu, flags: Iterable[str] = CPU_FLAGS) -> str:
    """One line: model, vendor, the tracked flags it has, cores and caches."""
    present = [flag for flag in flags if flag in cpu.flags]
    return (
        f'{cpu.model or "unknown CPU"} ({cpu.arch or "?"}, {cpu.vendor or "vendor ?"}; '
        f'{", ".join(present) or "none of " + "/".join(CPU_FLAGS)}; '
        f'{cpu.physical_cores or "?"} cores, {cpu.logical_cores or "?"} threads; '
        f'L2 {_size(cpu.l2_cache_bytes)}, L3 {_size(cpu.l3_cache_bytes)})'
    )


# --- The host as the runtime sees it: platform, jaxlib, libc, environment, CPU --------------


@dataclasses.dataclass(frozen=True)
class Host:
    """What `resolve` needs to know about the machine and the process (gathered by
    `host_facts`; tests build it by hand)."""

    platform: str  # 'cpu', 'gpu' or 'tpu': where JAX will compute
    jaxlib_version: str
    libc: str  # 'glibc' where glibc's allocator variables apply
    xla_flags: str  # XLA_FLAGS as the process found it
    environ_malloc: Mapping[str, str]  # the MALLOC_* variables of the environment
    processes: int = 1
    cpu: Cpu = Cpu()  # the host CPU's properties (unknown by default)


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
    """Reads the machine (its CPU: `this_cpu`) and the environment (changes nothing)."""
    from jaxlib.version import __version__ as jaxlib_version  # starts no backend

    return Host(
        platform=platform or detect_platform(),
        jaxlib_version=jaxlib_version,
        libc=libc_ver()[0],
        xla_flags=os.environ.get('XLA_FLAGS', ''),
        environ_malloc={k: v for k, v in os.environ.items() if k.startswith('MALLOC_')},
        processes=processes,
        cpu=this_cpu(),
    )
