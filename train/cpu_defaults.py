"""The XLA CPU flags and micro-batch sizes measured fastest, per model family and compute dtype,
applied by `train.main` on CPU-only hosts and measured by experiments/benchmarks/train_step_benchmark.py
(one table serves both, so the benchmark measures what the trainer ships).

XLA's CPU backend hands fusions of some ops to the YNNPACK library; the experimental flag
`--xla_cpu_experimental_ynn_fusion_type` takes ops off (`-kind`) or on. Measured on the 2-core
AVX-512 machine (jax 0.10.2, train steps of experiments/benchmarks, docs/benchmarks.md):

- convolutions off YNNPACK, for every model: ResNet-18 step -24% CPU time (XLA's own
  convolutions run at 110-190 GFLOP/s, YNNPACK's at 50-70 on these shapes), ViT-Ti/4 -5%
  (its patch embedding), LSTM and the quickstart CNN unchanged;
- dot products off YNNPACK too, for float32 ViTs: ViT-Ti/4 step -8 to -10% (Eigen's float32
  products are faster on its skinny (8320 x 192) x (192 x 192) shapes and their gradients);
  not for the LSTM (+45%: its per-time-step products are faster in YNNPACK), ResNet-18
  (unchanged), nor any bfloat16 model (YNNPACK multiplies bfloat16 with the chip's AVX512-BF16
  instructions at ~2x Eigen's rate, see nets/mixed_precision.py). Measured on whole batches;
  with the micro-batches below both cost the same (ViT-Ti/4 float32 2.516 vs 2.515 s on
  YNNPACK, 4 alternating rounds, 2026-11-27; on the faster host the VM moved to that morning,
  1.225 vs 1.219 s, 3 rounds), so the flag stays.

Micro-batches (`config.grad_accum_steps`) of the size measured fastest, for families whose loss
sums over independent examples (no batch norm, so the averaged gradient is the full batch's):
ViTs in micro-batches of 16 examples per device. The step is the same computation in smaller
pieces, and the pieces' activations (a 16-image ViT-Ti/4 layer's are 0.8 MB, a 128-image one's
6.4 MB, the MLP's 4x that) stay in the caches between the layer norms, GELUs and softmaxes that
read them: on this VM main memory gives only ~6 GB/s. ViT-Ti/4, batch 128, interleaved A/B
(medians of 6-8 steps): float32 one device 3.3-3.7 -> 2.2-2.4 s (micro-batches of 32: 2.3-2.5 s),
two devices 2.8 -> 2.2 s, bfloat16 2.7 -> 1.9 s; the same split in PyTorch eager: 2.7 -> 2.5 s.
Not the LSTM (0.52 -> 0.54 s with two) nor the batch-norm ConvNets (their statistics would be a
micro-batch's).

Other jaxlib releases get no flags until they are measured: an unknown flag makes XLA abort at
start, and experimental flags come and go.

glibc's allocator settings (environment variables read when a process starts; `train.main`
restarts itself once with them, the benchmark's workers start with them): for families where
they measured faster, MALLOC_ENV keeps freed memory in one heap instead of returning it to the
kernel. XLA's CPU runtime allocates a step's buffers afresh at every step; by default glibc maps
large ones with mmap and unmaps them when freed, so every step the kernel hands out (and zeroes)
hundreds of MB of new pages again: ~230,000 page faults per ResNet-18 step. With MALLOC_ENV a
step faults ~1,500 times. 2026-11-27, alternating runs: ResNet-18 step 1.28-1.30 -> 1.10-1.14 s
(oneDNN convolutions), LSTM 0.27-0.31 -> 0.23 s; the ViT got slower (1.25 -> 1.45 s with one
arena; unchanged without the arena limit), so it keeps glibc's defaults. PyTorch gains as much
under the same settings (ResNet-18 eager 1.33 -> 1.04 s, LSTM 0.29 -> 0.20 s): the benchmark
reports that row too.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_FUSION_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
DEFAULT_YNN_FUSION = '-individual_convolution'
# (model family, compute dtype) -> ops off YNNPACK, where a measurement beat the default.
YNN_FUSION_BY_FAMILY_AND_DTYPE = {
    ('vit', 'float32'): '-individual_convolution,-individual_dot,-dot',
}
MEASURED_JAXLIB = ('0.10.',)
# glibc malloc: one arena, no mmap for large blocks, never trim the heap (64 GiB threshold).
MALLOC_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
              'MALLOC_TRIM_THRESHOLD_': str(64 << 30)}
# model family -> CPU convolution backend (nets/onednn_conv.py), where XLA's measured faster
# than oneDNN's (the default): the quickstart CNN's small convolutions (28x28, 1 -> 16 -> 32
# channels), step 40.3-41.7 ms with XLA's against 41.2-46.9 ms with oneDNN's (3 alternating
# rounds, 2026-11-27); ResNet-18 1.70 -> 1.26-1.30 s and ViT-Ti/4 1.30 -> 1.20 s with oneDNN's.
CONV_BACKEND_BY_FAMILY = {'cnn': 'xla'}
MALLOC_ENV_FAMILIES = ('resnet', 'language_model')  # measured: ResNet-18, the LSTM LM
# model family -> examples per device in a micro-batch, where a measurement beat whole batches.
MICRO_BATCH_BY_FAMILY = {'vit': 16}


def cpu_xla_flags(family: str | None = None, dtype: str = 'float32') -> list[str]:
    """The XLA flags measured fastest for a model of `family` computing in `dtype` on the CPU
    (the defaults for an unknown or unmeasured family)."""
    fusion = YNN_FUSION_BY_FAMILY_AND_DTYPE.get((family, dtype), DEFAULT_YNN_FUSION)
    return [f'{YNN_FUSION_FLAG}={fusion}']


def cpu_grad_accum_steps(family: str | None, batch_size: int, devices: int) -> int:
    """The micro-batches per step measured fastest for `family` at a global `batch_size` over
    `devices` CPU devices: per-device batch / MICRO_BATCH_BY_FAMILY[family] when that divides
    into more than one, else 1 (whole batches)."""
    micro = MICRO_BATCH_BY_FAMILY.get(family)
    if micro is None or devices < 1 or batch_size % devices:
        return 1
    per_device = batch_size // devices
    return per_device // micro if per_device % micro == 0 and per_device > micro else 1


def trains_on_cpu() -> bool:
    """Whether JAX will train on the CPU: JAX_PLATFORMS=cpu, or no GPU/TPU plugin installed
    (accelerator plugins parse XLA_FLAGS with their own XLA build, which may not know a CPU
    flag)."""
    if os.environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
        return True
    names = {(dist.metadata['Name'] or '').lower().replace('_', '-')
             for dist in importlib.metadata.distributions()}
    return not any(name.startswith(('jax-cuda', 'jax-rocm', 'libtpu')) for name in names)


def configure_cpu_xla_flags(enabled: bool = True, family: str | None = None,
                            dtype: str = 'float32') -> list[str]:
    """On a CPU-only host with a measured jaxlib, adds `cpu_xla_flags(family, dtype)` to
    XLA_FLAGS (call it before JAX initialises its backends); returns the flags added. A flag
    already in XLA_FLAGS is left as the user set it."""
    from jaxlib.version import __version__ as jaxlib_version  # no backend initialised
    if not (enabled and jaxlib_version.startswith(MEASURED_JAXLIB) and trains_on_cpu()):
        return []
    flags_now = os.environ.get('XLA_FLAGS', '')
    added = [flag for flag in cpu_xla_flags(family, dtype)
             if flag.split('=')[0] not in flags_now]
    if added:
        os.environ['XLA_FLAGS'] = ' '.join([flags_now, *added]).strip()
    return added


def configure_cpu_micro_batches(config, enabled: bool = True, family: str | None = None) -> int:
    """On the CPU backend, sets `config.grad_accum_steps` to `cpu_grad_accum_steps` when the
    config leaves it at 1 and its task averages over independent examples (not the GAN's own
    step, not streamed recurrent state); returns the micro-batches per step now configured.
    Call it once JAX's devices are known (after `jax.distributed.initialize`)."""
    import jax
    from jaxlib.version import __version__ as jaxlib_version
    from train.config import can_accumulate_gradients
    steps = int(config.grad_accum_steps)
    if not (enabled and steps == 1 and jaxlib_version.startswith(MEASURED_JAXLIB)
            and jax.default_backend() == 'cpu' and can_accumulate_gradients(config)):
        return steps
    config.grad_accum_steps = cpu_grad_accum_steps(family, int(config.batch_size),
                                                   jax.device_count())
    return int(config.grad_accum_steps)


def cpu_malloc_env(family: str | None) -> dict[str, str]:
    """The allocator environment measured fastest for `family` on the CPU (MALLOC_ENV where
    measured faster, else nothing)."""
    return dict(MALLOC_ENV) if family in MALLOC_ENV_FAMILIES else {}


def restart_with_cpu_malloc_env(enabled: bool, family: str | None,
                                command: list[str] | None = None) -> None:
    """On a CPU-only glibc host with a measured jaxlib, when `cpu_malloc_env(family)` names a
    variable the environment does not set, adds them and replaces this process by `command`
    (default: this process's own command line) with os.execv; otherwise returns. Variables the
    user set are kept, so the restarted process returns here at once. Call it first thing."""
    import platform
    import sys
    from jaxlib.version import __version__ as jaxlib_version
    missing = {name: value for name, value in cpu_malloc_env(family).items()
               if name not in os.environ}
    if not (enabled and missing and platform.libc_ver()[0] == 'glibc'
            and jaxlib_version.startswith(MEASURED_JAXLIB) and trains_on_cpu()):
        return
    os.environ.update(missing)
    command = command or [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def configure_cpu_conv_backend(enabled: bool, family: str | None) -> str | None:
    """Sets DEEPNETS_CPU_CONV to CONV_BACKEND_BY_FAMILY[family] when the family has an entry and
    the user has not set the variable; returns the value set (None: nothing set)."""
    from nets.onednn_conv import BACKEND_ENV
    backend = CONV_BACKEND_BY_FAMILY.get(family)
    if not enabled or backend is None or os.environ.get(BACKEND_ENV):
        return None
    os.environ[BACKEND_ENV] = backend
    return backend
