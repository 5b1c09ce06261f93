"""The one switch for backend-specific kernels: which convolution, matrix-product and attention
implementations code traced from now on uses.

Models never read the environment or the config for this; they ask here, while tracing:

    from nets.kernels import switch
    with switch.use(conv='xla'):          # e.g. to count FLOPs with XLA's convolutions
        jaxpr = jax.make_jaxpr(step)(...)

The trainer sets it once per run from the resolved runtime (`train.runtime.apply`), which also
builds the oneDNN library before anything is traced, so tracing never runs a compiler there.

Choices:
  conv       'auto'   oneDNN's kernels for 2-D float32/bfloat16 convolutions, grouped ones
                      included, on the CPU where the library builds
                      (nets/kernels/onednn_conv.py), XLA's elsewhere; bfloat16 only where
                      the CPU has oneDNN's bfloat16 kernels (AVX-512 and up), with 'onednn' too
             'onednn' oneDNN's on the CPU; an error where the library cannot be built
             'xla'    XLA's own convolutions everywhere
  matmul     'auto'   oneDNN's kernels for the large bfloat16 products without batch axes
                      (nets.kernels.mixed_precision's, at least onednn_matmul.MIN_FLOPS: dense
                      layers, the fused LSTM's gradients; nets/kernels/onednn_matmul.py) on the
                      CPU backend with one device in the process, where the library builds;
                      XLA's elsewhere
             'onednn' oneDNN's on the CPU; an error where the library cannot be built
             'xla'    XLA's own products everywhere
  attention  'auto'   cuDNN's fused attention on a GPU in half precision where it applies,
                      the plain softmax(QK^T)V elsewhere (nets/layers/attention.py)
             'plain' | 'xla' | 'cudnn'   that implementation (a model's own `attention` field,
                      when not 'auto', wins over the switch)

The choice is read while tracing, and JAX reuses the trace of a function object it has traced
before: trace a new function (a new lambda, a new `make_train_step`) after changing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

CONV_BACKENDS = ('auto', 'onednn', 'xla')
MATMUL_BACKENDS = ('auto', 'onednn', 'xla')
ATTENTION_BACKENDS = ('auto', 'plain', 'xla', 'cudnn')


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    """The kernels code traced now uses."""

    conv: str = 'auto'
    attention: str = 'auto'
    matmul: str = 'auto'

    def __post_init__(self) -> None:
        for name, value, valid in (
            ('conv', self.conv, CONV_BACKENDS),
            ('matmul', self.matmul, MATMUL_BACKENDS),
            ('attention', self.attention, ATTENTION_BACKENDS),
        ):
            if value not in valid:
                raise ValueError(
                    f'{name} kernel {value!r} is not valid; choose one of {list(valid)}'
                )


_current = KernelChoice()


def current() -> KernelChoice:
    """The kernel choice in force."""
    return _current


def conv_backend() -> str:
    return _current.conv


def attention_backend() -> str:
    return _current.attention


def matmul_backend() -> str:
    return _current.matmul


def set_kernels(
    *, conv: str | None = None, attention: str | None = None, matmul: str | None = None
) -> KernelChoice:
    """Sets the choice for the rest of the process (None keeps a setting); returns the previous
    one."""
    global _current
    previous = _current
    changes = (('conv', conv), ('attention', attention), ('matmul', matmul))
    _current = dataclasses.replace(_current, **{k: v for k, v in changes if v is not None})
    return previous


@contextlib.contextmanager
def use(
    *, conv: str | None = None, attention: str | None = None, matmul: str | None = None
) -> Iterator[KernelChoice]:
    """Within this context, code traced uses these kernels (None keeps a setting)."""
    global _current
    previous = set_kernels(conv=conv, attention=attention, matmul=matmul)
    try:
        yield _current
    finally:
        _current = previous
