"""The XLA CPU flags measured fastest, per model family and compute dtype, applied by
`train.main` on CPU-only hosts and measured by experiments/benchmarks/train_step_benchmark.py
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
  instructions at ~2x Eigen's rate, see nets/mixed_precision.py).

Other jaxlib releases get no flags until they are measured: an unknown flag makes XLA abort at
start, and experimental flags come and go.
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


def cpu_xla_flags(family: str | None = None, dtype: str = 'float32') -> list[str]:
    """The XLA flags measured fastest for a model of `family` computing in `dtype` on the CPU
    (the defaults for an unknown or unmeasured family)."""
    fusion = YNN_FUSION_BY_FAMILY_AND_DTYPE.get((family, dtype), DEFAULT_YNN_FUSION)
    return [f'{YNN_FUSION_FLAG}={fusion}']


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
