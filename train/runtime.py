"""Hardware choices in one room: what the run executes on and with which kernels, resolved from
`config.runtime` and the host's properties, applied once, and recorded in the run's config.json
and summary.json.

    host = host_cpu.host_facts(processes=1)    # reads the machine (CPU included); changes nothing
    runtime = resolve(config, host)            # pure: the choices and why each was made
    runtime = apply(runtime, starting_process=True)   # the only code that changes the process
    record(runtime)                            # + versions, CPU, device kind and count, for the run

`config.runtime` (validated like every key; 'auto' chooses from the host's properties):
  cpu_devices       XLA CPU devices to split the host into (data parallel over cores)
  xla_flags         'auto' | 'none': an XLA CPU flag preset chosen for the CPU
  conv_backend      'auto' | 'onednn' | 'xla': CPU convolution kernels (nets.kernels.switch)
  matmul_backend    'auto' | 'onednn' | 'xla': CPU kernels of large bfloat16 products
                    (nets.kernels.switch; float32 products stay XLA's)
  attention         'auto' | 'plain' | 'xla' | 'cudnn': attention kernels (nets.kernels.switch)
  malloc            'auto' | 'default' | 'heap': glibc allocator settings ('heap' keeps freed
                    memory in one heap, so XLA's per-step buffers stop costing page faults)
  micro_batch_size  -1 'auto' | 0 whole batches | k examples per device per micro-batch (the
                    same update, computed in pieces whose activations stay in the caches)

How 'auto' chooses on a CPU (`train.host_cpu.Cpu`: vendor, model, instruction-set flags, cores,
L2/L3 sizes): on the measured class (`MEASURED_CPU_CLASS`: AMD, AVX512-BF16, no AMX) the
per-family tables below; elsewhere rules from its properties (`xla_flag_preset`,
`conv_backend_choice`, `matmul_backend_choice`, `malloc_choice`, `micro_batch_choice`), each
returning (value, reason) naming the property that decided (`required_xla_flags` too). XLA flags,
allocator settings and micro-batches apply only with the jaxlib release they were measured on
(`MEASURED_JAXLIB`): an unknown XLA flag aborts XLA at start, and experimental flags come and
go. GPUs and TPUs take none of them.
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
from train.host_cpu import Cpu, Host, this_cpu
from train.tasks import task_class

CPU_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
XLA_FLAG_CHOICES = ('auto', 'none')
MALLOC_CHOICES = ('auto', 'default', 'heap')
MEASURED_JAXLIB = ('0.10.',)
MEASURED_CPU_CLASS = 'AMD Zen (avx512_bf16, no AMX)'
# Where the per-family YNNPACK extras measured faster as well (docs/speed.md, the AVX2-only EPYC).
AVX2_MEASURED_CLASS = 'AMD Zen (avx2, no AVX-512)'

# Convolutions off YNNPACK for every model (XLA's own convolutions are faster on these shapes);
# float32 ViTs on the measured class also take dot products off it.
DEFAULT_YNN_FUSION = '-individual_convolution'
YNN_FUSION_BY_FAMILY_AND_DTYPE = {
    ('vit', 'float32'): '-individual_convolution,-individual_dot,-dot',
}
# YNNPACK's reduce fusions segfault on x86-64 CPUs without AVX-512 under jaxlib 0.10 (in their
# transpose; docs/speed.md): there reductions stay XLA's, whatever else the preset says.
CRASHING_YNN_FUSIONS = ('reduce',)
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
# What the measured micro-batch had of L2 per device (2 cores x 1 MiB, one device); elsewhere
# the size scales with the L2 of the cores one device runs on, as a power of two in this range.
MEASURED_L2_BYTES_PER_DEVICE = 2 << 20
MICRO_BATCH_RANGE = (4, 64)


def default_block() -> ml_collections.ConfigDict:
    """The `config.runtime` block with its defaults."""
    block = ml_collections.ConfigDict()
    block.cpu_devices = 1
    block.xla_flags = 'auto'
    block.conv_backend = 'auto'
    block.matmul_backend = 'auto'
    block.attention = 'auto'
    block.malloc = 'auto'
    block.micro_batch_size = -1
    return block


def check_block(block: Mapping[str, Any]) -> None:
    """Raises ValueError naming a bad `config.runtime` value and the valid choices."""
    for key, valid in (
        ('xla_flags', XLA_FLAG_CHOICES),
        ('conv_backend', switch.CONV_BACKENDS),
        ('matmul_backend', switch.MATMUL_BACKENDS),
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
    matmul_backend: str  # 'onednn' | 'xla'
    matmul_backend_required: bool
    malloc_env: tuple[tuple[str, str], ...]
    grad_accum_steps: int  # micro-batches per step
    reasons: tuple[tuple[str, str], ...]  # (choice, why)
    cpu: Cpu = Cpu()  # the CPU the choices were made for

    def reason(self, choice: str) -> str:
        return dict(self.reasons).get(choice, '')


# --- From the CPU's properties to each choice: pure, each (value, reason) -----------------------

Choice = tuple[Any, str]
MEASURED = f'measured on {MEASURED_CPU_CLASS}'


def in_measured_class(cpu: Cpu) -> bool:
    """Whether `cpu` has the properties of the CPUs the per-family tables were measured on."""
    return cpu.vendor == 'AuthenticAMD' and cpu.has('avx512_bf16') and not cpu.has('amx_bf16')


def class_mismatch(cpu: Cpu) -> str:
    """The property that puts `cpu` outside MEASURED_CPU_CLASS ('' for a CPU inside it)."""
    if not cpu.x86_64:
        return f'{cpu.arch or "unknown architecture"}, not x86-64'
    if cpu.has('amx_bf16'):
        return 'AMX-BF16 present'
    if not cpu.has('avx512_bf16'):
        return 'no AVX512-BF16'
    if cpu.vendor != 'AuthenticAMD':
        return f'{cpu.vendor or "unknown vendor"}, not AMD'
    return ''


def _unmeasured(cpu: Cpu) -> str:
    return f'{class_mismatch(cpu)}, not the measured {MEASURED_CPU_CLASS}'


def in_avx2_measured_class(cpu: Cpu) -> bool:
    """Whether `cpu` is of AVX2_MEASURED_CLASS."""
    return cpu.vendor == 'AuthenticAMD' and cpu.has('avx2') and not cpu.has('avx512f')


def crashing_ynn_fusions(cpu: Cpu) -> tuple[str, ...]:
    """The YNNPACK fusions that crash on `cpu`: CRASHING_YNN_FUSIONS on x86-64 without AVX-512."""
    return CRASHING_YNN_FUSIONS if cpu.x86_64 and not cpu.has('avx512f') else ()


def required_xla_flags(cpu: Cpu) -> list[str]:
    """The XLA flags without which programs crash on `cpu` (the presets include them)."""
    off = crashing_ynn_fusions(cpu)
    return [f'{YNN_FUSION_FLAG}=' + ','.join(f'-{fusion}' for fusion in off)] if off else []


def xla_flag_preset(cpu: Cpu, family: str | None, dtype: str) -> Choice:
    """The XLA CPU flags for a `family` model computing in `dtype` on `cpu`."""
    if in_measured_class(cpu):
        fusion = YNN_FUSION_BY_FAMILY_AND_DTYPE.get((family, dtype), DEFAULT_YNN_FUSION)
        return [f'{YNN_FUSION_FLAG}={fusion}'], (
            f'{MEASURED}: YNNPACK fusions {fusion} fastest for ({family}, {dtype})'
            if (family, dtype) in YNN_FUSION_BY_FAMILY_AND_DTYPE
            else f'{MEASURED}: convolutions off YNNPACK ({fusion}), the default preset'
        )
    if cpu.x86_64:
        off = crashing_ynn_fusions(cpu)
        extra = in_avx2_measured_class(cpu) and (family, dtype) in YNN_FUSION_BY_FAMILY_AND_DTYPE
        base = YNN_FUSION_BY_FAMILY_AND_DTYPE[(family, dtype)] if extra else DEFAULT_YNN_FUSION
        fusion = ','.join([base, *(f'-{f}' for f in off)])
        why = (
            f'measured on {AVX2_MEASURED_CLASS} too: YNNPACK fusions {fusion} fastest for '
            f'({family}, {dtype})'
            if extra
            else f'{_unmeasured(cpu)}: the x86-64 preset, convolutions off YNNPACK; the '
            'per-family extras only on the measured classes'
        )
        if off:
            why += f'; {", ".join(off)} fusions off YNNPACK too (they crash without AVX-512)'
        return [f'{YNN_FUSION_FLAG}={fusion}'], why
    return [], f"{_unmeasured(cpu)}: XLA's default fusions (the presets are x86-64 measurements)"


def conv_backend_choice(cpu: Cpu, family: str | None, dtype: str) -> Choice:
    """'onednn' or 'xla': the CPU convolution kernels for a `family` model in `dtype`."""
    if not cpu.x86_64:
        return 'xla', f"{class_mismatch(cpu)}: the oneDNN wheel is x86-64 only; XLA's kernels"
    if in_measured_class(cpu) and family in CONV_BACKEND_BY_FAMILY:
        backend = CONV_BACKEND_BY_FAMILY[family]
        return backend, f'{MEASURED}: {backend} faster for family {family} (small convolutions)'
    if dtype == 'bfloat16':
        if cpu.has('amx_bf16'):
            return 'onednn', 'AMX-BF16 present: oneDNN bfloat16 convolutions (XLA upcasts them)'
        if cpu.has('avx512_bf16'):
            return 'onednn', 'AVX512-BF16 present: oneDNN bfloat16 convolutions (XLA upcasts them)'
        if cpu.has('avx512f'):
            return 'onednn', (
                'no AVX512-BF16, AVX-512 present: oneDNN emulates bfloat16 at float32 speed '
                '(XLA upcasts too)'
            )
        return 'xla', "no AVX-512 or AMX: oneDNN has no fast bfloat16 convolutions here; XLA's"
    if in_measured_class(cpu):
        return 'onednn', f"{MEASURED}: oneDNN faster than XLA's"
    isa = 'AVX-512 present' if cpu.has('avx512f') else 'AVX2 present' if cpu.has('avx2') else 'x86'
    kept = (
        f"; family {family}'s {CONV_BACKEND_BY_FAMILY[family]} was measured on the measured class"
        ' only'
        if family in CONV_BACKEND_BY_FAMILY
        else ''
    )
    return 'onednn', f"{isa}: oneDNN's JIT float32 convolutions (PyTorch's CPU kernels){kept}"


def matmul_backend_choice(cpu: Cpu, dtype: str, devices: int = 1) -> Choice:
    """'onednn' or 'xla': the kernels of a `dtype` model's large products (bfloat16 ones of at
    least 1 GFLOP, nets/kernels/onednn_matmul.py) with `devices` data-parallel CPU devices."""
    if not cpu.x86_64:
        return 'xla', f"{class_mismatch(cpu)}: the oneDNN wheel is x86-64 only; XLA's products"
    if dtype != 'bfloat16':
        return 'xla', f"{dtype}: XLA's products (oneDNN's measured no faster in float32)"
    if devices > 1:
        return 'xla', (
            f"{devices} devices: XLA's products (oneDNN's have no partitioning rule, so a "
            'mesh would gather their operands)'
        )
    if cpu.has('amx_bf16'):
        return 'onednn', "AMX-BF16 present: oneDNN's bfloat16 products (its AMX kernels)"
    if cpu.has('avx512_bf16'):
        return 'onednn', (
            "AVX512-BF16 present: oneDNN's bfloat16 products, faster than XLA's from 1 GFLOP"
        )
    return 'xla', "no AVX512-BF16 or AMX: bfloat16 products run at float32's rate either way"


def malloc_choice(cpu: Cpu, family: str | None) -> Choice:
    """The glibc allocator variables for a `family` model (MALLOC_ENV, or {})."""
    if family not in MALLOC_ENV_FAMILIES:
        return {}, f"glibc's defaults: not measured faster for family {family}"
    if in_measured_class(cpu):
        return dict(MALLOC_ENV), f'{MEASURED}: faster for family {family}'
    return dict(MALLOC_ENV), (
        f'{_unmeasured(cpu)}: kept for family {family}: the page faults they remove come from '
        "glibc returning XLA's per-step buffers, not from the CPU"
    )


def micro_batch_choice(cpu: Cpu, family: str | None, devices: int = 1) -> Choice:
    """Examples per device in a micro-batch (0: whole batches) for a `family` model with
    `devices` CPU devices in this process: the measured size on the measured class, elsewhere
    that size scaled by the L2 per device (the cores' L2 shared among the devices)."""
    if family not in MICRO_BATCH_BY_FAMILY:
        return 0, f'whole batches: micro-batches not measured faster for family {family}'
    measured = MICRO_BATCH_BY_FAMILY[family]
    if in_measured_class(cpu):
        return measured, f'{MEASURED}: micro-batches of {measured} examples per device'
    if not (cpu.l2_cache_bytes and cpu.physical_cores):
        return 0, f'{_unmeasured(cpu)}; L2 size or core count unknown: whole batches'
    devices = max(1, devices)
    per_device = cpu.physical_cores * cpu.l2_cache_bytes / devices
    scaled = int(measured * per_device / MEASURED_L2_BYTES_PER_DEVICE)
    low, high = MICRO_BATCH_RANGE
    size = min(high, max(low, 1 << max(0, scaled.bit_length() - 1)))
    return size, (
        f'{_unmeasured(cpu)}: {cpu.physical_cores} core(s) x {cpu.l2_cache_bytes >> 10} KiB L2 '
        f'over {devices} device(s): micro-batches of {size} examples (scaled from {measured} at '
        f'{MEASURED_L2_BYTES_PER_DEVICE >> 20} MiB per device where measured; a power of two in '
        f'{low}..{high})'
    )


def bfloat16_product_path(cpu: Cpu) -> Choice:
    """How the CPU runs bfloat16 products (nets/kernels/mixed_precision.py always asks for
    float32 accumulation; this records what that costs here)."""
    if not cpu.x86_64:
        return 'xla', f"{class_mismatch(cpu)}: XLA's own bfloat16 product path"
    if cpu.has('avx512_bf16'):
        return 'native', (
            'AVX512-BF16 present: bfloat16 products on its dot-product instructions, '
            'accumulating in float32'
        )
    return 'upcast', 'no AVX512-BF16: bfloat16 products upcast to float32 (float32 speed)'


def cpu_choices(
    family: str | None, dtype: str = 'float32', devices: int = 1, cpu: Cpu | None = None
) -> dict[str, Choice]:
    """Every 'auto' CPU choice for a `family` model in `dtype` on `cpu` (None: this machine's)
    with `devices` CPU devices, as (value, reason): what a benchmark row runs with."""
    cpu = cpu or this_cpu()
    choices = {
        'xla_flags': xla_flag_preset(cpu, family, dtype),
        'conv_backend': conv_backend_choice(cpu, family, dtype),
        'matmul_backend': matmul_backend_choice(cpu, dtype, devices),
        'malloc': malloc_choice(cpu, family),
        'micro_batch_size': micro_batch_choice(cpu, family, devices),
    }
    if dtype == 'bfloat16':
        choices['bfloat16_products'] = bfloat16_product_path(cpu)
    return choices


def cpu_xla_flags(
    family: str | None = None, dtype: str = 'float32', cpu: Cpu | None = None
) -> list[str]:
    """The XLA CPU flags for a `family` model in `dtype` on `cpu` (None: this machine's CPU)."""
    return xla_flag_preset(cpu or this_cpu(), family, dtype)[0]


def cpu_grad_accum_steps(
    family: str | None,
    batch_size: int,
    devices: int,
    micro_batch_size: int = -1,
    cpu: Cpu | None = None,
) -> int:
    """Micro-batches per step at a global `batch_size` over `devices` (of one process): the
    per-device batch / the micro-batch size (`micro_batch_size`, or with -1 the size chosen for
    `family` on `cpu`, None: this machine's) when that divides into more than one, else 1."""
    micro = (
        micro_batch_choice(cpu or this_cpu(), family, devices)[0]
        if micro_batch_size == -1
        else micro_batch_size
    )
    if not micro or devices < 1 or batch_size % devices:
        return 1
    per_device = batch_size // devices
    return per_device // micro if per_device % micro == 0 and per_device > micro else 1


def cpu_malloc_env(family: str | None, cpu: Cpu | None = None) -> dict[str, str]:
    """The allocator variables for `family` on `cpu` (None: this machine's): MALLOC_ENV or {}."""
    return malloc_choice(cpu or this_cpu(), family)[0]


def _cpu_device_count(host: Host, requested: int) -> int:
    match = re.search(rf'{CPU_DEVICE_COUNT_FLAG}=(\d+)', host.xla_flags)
    return int(match.group(1)) if match else requested


def resolve(config: ml_collections.ConfigDict, host: Host) -> Runtime:
    """The run's hardware choices from `config.runtime` on `host` (its CPU's properties
    included); pure (reads nothing else)."""
    block = config.runtime
    name = config.model.name
    family = nets.model_family(name) if name in nets.list_models() else None
    dtype = str(config.dtype)
    cpu = host.cpu
    on_cpu = host.platform == 'cpu'
    tuned = on_cpu and host.jaxlib_version.startswith(MEASURED_JAXLIB)
    reasons: dict[str, str] = {}
    why_not = (
        f'not a CPU run ({host.platform})'
        if not on_cpu
        else f'jaxlib {host.jaxlib_version} not measured (measured: {MEASURED_JAXLIB})'
    )

    cpu_devices = _cpu_device_count(host, block.cpu_devices) if on_cpu else 1
    if on_cpu and CPU_DEVICE_COUNT_FLAG in host.xla_flags:
        reasons['cpu_devices'] = 'XLA_FLAGS sets the device count'
    elif on_cpu and cpu.logical_cores and cpu_devices > cpu.logical_cores:
        reasons['cpu_devices'] = (
            f'config.runtime.cpu_devices={cpu_devices} on {cpu.logical_cores} logical core(s): '
            'the devices take turns on the cores'
        )
    flags: list[str] = []
    if on_cpu and cpu_devices > 1 and CPU_DEVICE_COUNT_FLAG not in host.xla_flags:
        flags.append(f'{CPU_DEVICE_COUNT_FLAG}={cpu_devices}')
    if block.xla_flags == 'none':
        required = [f for f in required_xla_flags(cpu) if f.split('=')[0] not in host.xla_flags]
        flags += required if tuned else []
        kept = f' (kept, or programs crash here: {required})' if tuned and required else ''
        reasons['xla_flags'] = f'config.runtime.xla_flags=none{kept}'
    elif tuned:
        preset, why = xla_flag_preset(cpu, family, dtype)
        own = [f for f in preset if f.split('=')[0] not in host.xla_flags]
        flags += own
        reasons['xla_flags'] = 'XLA_FLAGS already sets them' if preset and not own else why
    else:
        reasons['xla_flags'] = f'none: {why_not}'

    conv = block.conv_backend
    if not on_cpu:
        conv, reasons['conv_backend'] = 'xla', f"XLA's on {host.platform}"
    elif conv == 'auto':
        conv, reasons['conv_backend'] = conv_backend_choice(cpu, family, dtype)
    else:
        reasons['conv_backend'] = f'config.runtime.conv_backend={conv}'
    matmul = block.matmul_backend
    if not on_cpu:
        matmul, reasons['matmul_backend'] = 'xla', f"XLA's on {host.platform}"
    elif matmul == 'auto':
        matmul, reasons['matmul_backend'] = matmul_backend_choice(
            cpu, dtype, cpu_devices * host.processes
        )
    else:
        reasons['matmul_backend'] = f'config.runtime.matmul_backend={matmul}'
    if on_cpu and dtype == 'bfloat16':
        reasons['bfloat16_products'] = bfloat16_product_path(cpu)[1]
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
    elif block.malloc == 'heap' or (block.malloc == 'auto' and tuned):
        wanted, reasons['malloc'] = (
            (MALLOC_ENV, "config.runtime.malloc='heap'")
            if block.malloc == 'heap'
            else malloc_choice(cpu, family)
        )
        malloc = {k: host.environ_malloc.get(k, v) for k, v in wanted.items()}
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
    elif block.micro_batch_size > 0 or tuned:
        micro, why = (
            (block.micro_batch_size, f'config.runtime.micro_batch_size={block.micro_batch_size}')
            if block.micro_batch_size > 0
            else micro_batch_choice(cpu, family, cpu_devices)
        )
        accum = cpu_grad_accum_steps(family, int(config.batch_size), devices, micro)
        reasons['grad_accum_steps'] = (
            f'{why}; {accum} per step over {devices} device(s)'
            if accum > 1
            else f'{why}; whole batches: {config.batch_size} over {devices} device(s) does not '
            'split into them'
            if micro
            else why
        )
    else:
        reasons['grad_accum_steps'] = f'whole batches: {why_not}'
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
        matmul_backend=matmul,
        matmul_backend_required=on_cpu and block.matmul_backend == 'onednn',
        malloc_env=tuple(sorted(malloc.items())),
        grad_accum_steps=accum,
        reasons=tuple(sorted(reasons.items())),
        cpu=cpu,
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
    backends = {'conv_backend': runtime.conv_backend, 'matmul_backend': runtime.matmul_backend}
    required = {
        'conv_backend': runtime.conv_backend_required,
        'matmul_backend': runtime.matmul_backend_required,
    }
    on_onednn = [k for k, b in backends.items() if runtime.platform == 'cpu' and b == 'onednn']
    if on_onednn:
        from nets.kernels import onednn_conv

        problem = onednn_conv.unavailable_reason()  # builds it now, not while tracing
        for key in on_onednn if problem is not None else ():
            if required[key]:
                raise onednn_conv.OnednnUnavailable(
                    f"config.runtime.{key}='onednn', but: {problem}"
                )
            backends[key] = 'xla'
            reasons[key] = f'xla: oneDNN unavailable ({problem.splitlines()[0]})'
    applied = dataclasses.replace(
        runtime,
        xla_flags=flags,
        **backends,
        malloc_env=tuple(sorted(malloc.items())),
        reasons=tuple(sorted(reasons.items())),
    )
    if starting_process:  # a caller's process keeps its switch: the loop sets it per run
        switch.set_kernels(**kernels(applied))
    return applied


def kernels(runtime: Runtime) -> dict[str, str]:
    """The kernel switch's settings for a run (`nets.kernels.switch.use(**kernels(runtime))`)."""
    return dict(
        conv=runtime.conv_backend, attention=runtime.attention, matmul=runtime.matmul_backend
    )


def record(runtime: Runtime) -> dict[str, Any]:
    """The runtime as the run's config.json and summary.json keep it: every choice with its
    reason, the CPU's model and properties (and whether the choices' measurements were made on
    its class), the library versions, and the devices JAX found."""
    import jax

    devices = jax.devices()
    cpu = runtime.cpu if runtime.cpu != Cpu() else this_cpu()
    return {
        'platform': runtime.platform,
        'device_kind': devices[0].device_kind,
        'device_count': jax.device_count(),
        'process_count': jax.process_count(),
        'cpu_devices_per_process': runtime.cpu_devices if runtime.platform == 'cpu' else None,
        'xla_flags_added': list(runtime.xla_flags),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'conv_backend': runtime.conv_backend,
        'matmul_backend': runtime.matmul_backend,
        'attention': runtime.attention,
        'malloc_env': dict(runtime.malloc_env),
        'grad_accum_steps': runtime.grad_accum_steps,
        'reasons': dict(runtime.reasons),
        'jax': jax.__version__,
        'jaxlib': importlib.metadata.version('jaxlib'),
        'python': platform_lib.python_version(),
        'cpu': cpu.model,
        'cpu_properties': cpu.properties(),
        'cpu_class': (
            f'{MEASURED_CPU_CLASS}: the measured tables apply'
            if in_measured_class(cpu)
            else f'{class_mismatch(cpu)}: not {MEASURED_CPU_CLASS}; rules from its properties'
        ),
    }
