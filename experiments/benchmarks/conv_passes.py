"""What conv_benchmark.py times: a model's convolutions, found by tracing it, and each one's
passes (forward; backward: input and kernel gradients) in JAX and in PyTorch on the same operands,
grouped convolutions (feature_group_count) included.

Convolutions are dicts {input_shape (NHWC), kernel_shape (HWIO, I = input channels / groups),
strides, padding ((lo, hi) per axis), groups, count (per forward pass), reads_input (the first
one, whose input is the image: its backward pass is the kernel gradient alone)}.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.benchmarks.bench_common import MODELS, ModelSpec, model_spec

# Models measured here alone, convolution by convolution: no PyTorch twin runs their train step
# (train_step_benchmark.py). An NFNet-F0 (paper widths and depths, group width 128: the grouped
# 3x3s have 1, 2, 6 and 6 groups by stage) with the one-conv stem on 32x32 images.
CONV_MODELS: dict[str, ModelSpec] = {
    'nfnet_f0': ModelSpec(
        'nfnet_f0',
        dict(num_classes=10, stem='small', depths=(1, 2, 6, 3), widths=(256, 512, 1536, 1536)),
        32,
        (32, 32, 3),
        'image',
    ),
}
TINY_CONV_MODELS: dict[str, ModelSpec] = {
    'nfnet_f0': ModelSpec(
        'nfnet_f0',
        dict(num_classes=10, stem='small', depths=(1, 1), widths=(64, 128), group_width=16),
        4,
        (8, 8, 3),
        'image',
    ),
}


def image_models() -> list[str]:
    """The models whose convolutions can be measured."""
    return sorted(name for name, spec in {**MODELS, **CONV_MODELS}.items() if spec.kind == 'image')


def conv_model_spec(model: str, size: str = 'full') -> ModelSpec:
    """bench_common.model_spec, with CONV_MODELS; ValueError names a bad size, or a model that is
    not an image model, and the valid ones."""
    sizes = {'full': CONV_MODELS, 'tiny': TINY_CONV_MODELS}
    if size not in sizes:
        raise ValueError(f'unknown size {size!r}; valid: {sorted(sizes)}')
    if model in sizes[size]:
        return sizes[size][model]
    if model not in MODELS:
        raise ValueError(f'unknown model {model!r}; valid: {image_models()}')
    spec = model_spec(model, size)
    if spec.kind != 'image':
        raise ValueError(f'{model!r} is not an image model; valid: {image_models()}')
    return spec


def model_convolutions(spec: ModelSpec) -> list[dict[str, Any]]:
    """The distinct convolutions of `spec`'s forward pass in training mode (program order), as
    the module docstring says; channels-last, undilated ones only (ValueError names any other)."""
    import jax
    import jax.numpy as jnp

    import nets
    from nets.kernels import switch
    from nets.kernels.conv import channels_last_dimension_numbers
    from nets.tools.flops import sub_jaxprs

    model = nets.create(spec.net, **spec.fields, **spec.jax_fields)
    images = jnp.zeros((spec.batch_size, *spec.example_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    with switch.use(conv='xla'):  # lax convolutions, whose parameters it reads
        jaxpr = jax.make_jaxpr(
            lambda v, x: model.apply(
                v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}
            )
        )(variables, images).jaxpr
    found: dict[tuple, dict[str, Any]] = {}

    def walk(inner: Any) -> None:
        for eqn in inner.eqns:
            if eqn.primitive.name == 'conv_general_dilated':
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                p = eqn.params
                if (
                    p['dimension_numbers'] != channels_last_dimension_numbers(len(lhs))
                    or p['batch_group_count'] != 1
                    or any(d != 1 for d in (*p['lhs_dilation'], *p['rhs_dilation']))
                ):
                    raise ValueError(
                        f'convolution {lhs} * {rhs} with {p} is not a channels-last, '
                        'undilated one; only those are measured'
                    )
                key = (
                    tuple(lhs),
                    tuple(rhs),
                    tuple(p['window_strides']),
                    tuple(map(tuple, p['padding'])),
                    p['feature_group_count'],
                )
                entry = found.setdefault(
                    key,
                    dict(
                        input_shape=key[0],
                        kernel_shape=key[1],
                        strides=key[2],
                        padding=key[3],
                        groups=key[4],
                        count=0,
                        reads_input=not found,
                    ),
                )
                entry['count'] += 1
            for sub in sub_jaxprs(eqn):
                walk(sub)

    walk(jaxpr)
    if not found:
        raise ValueError(f'{spec.net} has no convolutions to measure')
    return list(found.values())


def output_shape(conv: dict[str, Any]) -> tuple[int, int, int, int]:
    """(N, H, W, C) of the convolution's output."""
    kh, kw, _, cout = conv['kernel_shape']
    batch, height, width, _ = conv['input_shape']
    (pt, pb), (pl, pr) = conv['padding']
    sh, sw = conv['strides']
    return (batch, (height + pt + pb - kh) // sh + 1, (width + pl + pr - kw) // sw + 1, cout)


def conv_flops(conv: dict[str, Any]) -> float:
    """Multiply-adds x 2 of the forward pass (the input and the kernel gradient each do the same
    products); each output channel sums over its group's input channels, the kernel's I."""
    kh, kw, cin_per_group, cout = conv['kernel_shape']
    batch, out_h, out_w, _ = output_shape(conv)
    return 2.0 * batch * out_h * out_w * kh * kw * cin_per_group * cout


def operands(conv: dict[str, Any], seed: int = 0) -> tuple[Any, Any, Any]:
    """Random float32 input (NHWC), kernel (HWIO) and output gradient (NHWC), as numpy."""
    rng = np.random.default_rng(seed)
    return tuple(
        rng.standard_normal(shape, dtype=np.float32)
        for shape in (conv['input_shape'], conv['kernel_shape'], output_shape(conv))
    )


JAX_BACKENDS = ('xla', 'onednn')


def jax_passes(
    conv: dict[str, Any], backend: str = 'xla', seed: int = 0
) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables running each pass once on `operands(conv, seed)` through
    nets.kernels.conv with `backend`'s kernels ('xla' or 'onednn', see
    nets/kernels/onednn_conv.py; compiled on the first call, waited for); each returns its
    result."""
    import jax

    from nets.kernels import onednn_conv, switch
    from nets.kernels.conv import conv_general_dilated

    if backend not in JAX_BACKENDS:
        raise ValueError(f'backend {backend!r}: valid backends are {", ".join(JAX_BACKENDS)}')
    if backend == 'onednn' and not onednn_conv.available():
        raise ValueError(
            'backend onednn: oneDNN convolutions are not enabled here '
            '(nets/kernels/onednn_conv.py says why)'
        )
    x, w, dy = (jax.device_put(a) for a in operands(conv, seed))

    def forward(x, w):
        # The backend is chosen while tracing, i.e. at the first call.
        with switch.use(conv=backend):
            return conv_general_dilated(
                x,
                w,
                conv['strides'],
                conv['padding'],
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                feature_group_count=conv.get('groups', 1),
            )

    forward_jit = jax.jit(forward)
    if conv['reads_input']:
        backward = jax.jit(lambda x, w, dy: jax.vjp(lambda w_: forward(x, w_), w)[1](dy))
    else:
        backward = jax.jit(lambda x, w, dy: jax.vjp(forward, x, w)[1](dy))
    return {
        'forward': lambda: jax.block_until_ready(forward_jit(x, w)),
        'backward': lambda: jax.block_until_ready(backward(x, w, dy)),
    }


class TorchPass:
    """One PyTorch pass: calling it runs the PyTorch call alone (what is timed); `.numpy()`
    returns its result in JAX's layout."""

    def __init__(self, call: Callable[[], Any], to_numpy: Callable[[Any], Any]):
        self.call, self.to_numpy = call, to_numpy

    def __call__(self) -> Any:
        return self.call()

    def numpy(self) -> Any:
        return self.to_numpy(self.call())


def torch_passes(conv: dict[str, Any], seed: int = 0) -> dict[str, TorchPass]:
    """The same passes in PyTorch on the same operands as channels-last tensors (torch.conv2d
    and aten.convolution_backward with `groups`: PyTorch's (O, I / groups, KH, KW) weights are
    JAX's HWIO kernel transposed, its output channels grouped as lax's), each returning its
    result in JAX's layout (NHWC, HWIO) as numpy. Asymmetric padding is applied to the input
    beforehand, outside the timed call (the input gradient is cropped back, untimed)."""
    import torch
    import torch.nn.functional as F

    (pt, pb), (pl, pr) = conv['padding']
    groups = conv.get('groups', 1)
    symmetric = pt == pb and pl == pr
    layout = torch.channels_last
    x, w, dy = operands(conv, seed)
    x = torch.from_numpy(x).permute(0, 3, 1, 2)
    if not symmetric:
        x = F.pad(x, (pl, pr, pt, pb))
    x = x.contiguous(memory_format=layout)
    w = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=layout)
    dy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=layout)
    stride, padding = list(conv['strides']), ([pt, pl] if symmetric else [0, 0])
    height, width = conv['input_shape'][1:3]

    def forward() -> Any:
        with torch.no_grad():
            return torch.conv2d(x, w, stride=stride, padding=padding, groups=groups)

    def backward() -> Any:
        mask = [not conv['reads_input'], True, False]
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, padding, [1, 1], False, [0, 0], groups, mask
        )

    def backward_numpy(grads: Any) -> tuple[Any, ...]:
        dw = grads[1].permute(2, 3, 1, 0).numpy()
        if conv['reads_input']:
            return (dw,)
        top, left = (0, 0) if symmetric else (pt, pl)
        dx = grads[0].permute(0, 2, 3, 1)[:, top : top + height, left : left + width].numpy()
        return dx, dw

    return {
        'forward': TorchPass(forward, lambda y: y.permute(0, 2, 3, 1).numpy()),
        'backward': TorchPass(backward, backward_numpy),
    }


def time_alternating(
    calls: Sequence[Callable[[], Any]], repeats: int, rounds: int = 2
) -> list[float]:
    """Median seconds of each call over `rounds` x `repeats` timed calls, in blocks: each call
    `repeats` times, then the next, for `rounds` rounds (a shared machine's load drift hits them
    alike). Blocks rather than call by call: the thread pools of XLA and PyTorch (OpenMP) keep
    spinning for a while after their work, which slowed the other framework's next call by up
    to 30%. Each block starts with one untimed call (compilation, caches, thread wake-up)."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, record in zip(calls, times):
            call()
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]
