"""The convolutions of a ConvNet's train step, JAX against PyTorch, pass by pass: what limits
the ResNet-18 row of train_step_benchmark.py on the CPU.

Command:
  python -m experiments.benchmarks.conv_benchmark [--model=resnet18] [--size=full|tiny]
      [--repeats=4] [--out=docs/conv_benchmark.json]
Finds every convolution of the model's forward pass by tracing it (the benchmark's ModelSpec, so
ResNet-18 with the CIFAR stem, batch 128, 32x32x3), measures each distinct one once and counts
how often the step runs it. For each, in one process, alternating block by block:
  * JAX with XLA's convolution kernels and JAX with oneDNN's (nets/kernels/onednn_conv.py, the CPU
    default where it builds): the forward convolution and its backward pass (input and kernel
    gradients), each jitted alone through nets.kernels.conv (what the models run), under the XLA
    flags the trainer ships for the family (train/runtime.py);
  * PyTorch (`pip install -e '.[benchmark]'`): aten.convolution and aten.convolution_backward on
    channels-last tensors (oneDNN), the kernels its eager train step runs.
The first convolution reads the image, so its backward pass is the kernel gradient alone, as in
a train step. Reported: ms and GFLOP/s per pass, the float32 matmul peak of both for scale, and
the sum over the step (count x time): the seconds a train step spends in convolutions in each.

Hardware and time: a 2-core x86-64 CPU (AVX-512); about a minute.
Expected: ResNet-18's convolutions take as long with oneDNN's kernels in JAX as in PyTorch and
longer with XLA's, the gap largest on the 32x32x64 layers; the measured run is
docs/conv_benchmark.md, its reading in docs/speed.md.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from experiments.benchmarks.bench_common import MODELS, machine, model_spec, version, write_report
from train import cli

PASSES = ('forward', 'backward')
JAX_BACKENDS = ('xla', 'onednn')
FRAMEWORKS = (*JAX_BACKENDS, 'torch')
LABELS = {'xla': 'JAX XLA', 'onednn': 'JAX oneDNN', 'torch': 'PyTorch'}


def define_flags() -> None:
    flags.DEFINE_string('model', 'resnet18', 'Image model of bench_common.MODELS.')
    flags.DEFINE_enum(
        'size', 'full', ['full', 'tiny'], "'tiny': toy model and batch (a smoke test)."
    )
    flags.DEFINE_integer(
        'repeats', 4, 'Timed calls per pass, framework and round (2 rounds; median).', lower_bound=1
    )
    flags.DEFINE_string(
        'out',
        'docs/conv_benchmark.json',
        'JSON results; the markdown table goes beside it with the suffix .md (empty: print only).',
    )


def model_convolutions(spec: Any) -> list[dict[str, Any]]:
    """The distinct convolutions of `spec`'s forward pass in training mode (program order), each
    {input_shape, kernel_shape, strides, padding, count, reads_input}; channels-last, ungrouped
    and undilated ones only (ValueError names any other)."""
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
                numbers = channels_last_dimension_numbers(len(lhs))
                if (
                    p['dimension_numbers'] != numbers
                    or p['feature_group_count'] != 1
                    or any(d != 1 for d in (*p['lhs_dilation'], *p['rhs_dilation']))
                ):
                    raise ValueError(
                        f'convolution {lhs} * {rhs} with {p} is not a channels-last, '
                        'ungrouped, undilated one; only those are measured'
                    )
                key = (
                    tuple(lhs),
                    tuple(rhs),
                    tuple(p['window_strides']),
                    tuple(map(tuple, p['padding'])),
                )
                entry = found.setdefault(
                    key,
                    dict(
                        input_shape=key[0],
                        kernel_shape=key[1],
                        strides=key[2],
                        padding=key[3],
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
    products)."""
    kh, kw, cin, cout = conv['kernel_shape']
    batch, out_h, out_w, _ = output_shape(conv)
    return 2.0 * batch * out_h * out_w * kh * kw * cin * cout


def operands(conv: dict[str, Any], seed: int = 0) -> tuple[Any, Any, Any]:
    """Random float32 input (NHWC), kernel (HWIO) and output gradient (NHWC), as numpy."""
    rng = np.random.default_rng(seed)
    return tuple(
        rng.standard_normal(shape, dtype=np.float32)
        for shape in (conv['input_shape'], conv['kernel_shape'], output_shape(conv))
    )


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
                x, w, conv['strides'], conv['padding'], dimension_numbers=('NHWC', 'HWIO', 'NHWC')
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
    """The same passes in PyTorch on the same operands as channels-last tensors, each returning
    its result in JAX's layout (NHWC, HWIO) as numpy. Asymmetric padding is applied to the input
    beforehand, outside the timed call (the input gradient is cropped back, untimed)."""
    import torch
    import torch.nn.functional as F

    (pt, pb), (pl, pr) = conv['padding']
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
            return torch.conv2d(x, w, stride=stride, padding=padding)

    def backward() -> Any:
        mask = [not conv['reads_input'], True, False]
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, mask
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


def measure(
    convs: list[dict[str, Any]], repeats: int, frameworks: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per convolution and pass: each framework's median seconds (`<framework>_s`) and
    GFLOP/s; `frameworks` from FRAMEWORKS ('xla' and 'onednn': JAX with that backend)."""
    rows = []
    for conv in convs:
        calls = {
            name: (torch_passes(conv) if name == 'torch' else jax_passes(conv, name))
            for name in frameworks
        }
        for name in PASSES:
            # The backward pass: input and kernel gradients, each the forward's products.
            flops = conv_flops(conv) * (2 if name == 'backward' and not conv['reads_input'] else 1)
            seconds = time_alternating([calls[f][name] for f in frameworks], repeats)
            row = {
                'input_shape': list(conv['input_shape']),
                'kernel_shape': list(conv['kernel_shape']),
                'strides': list(conv['strides']),
                'count': conv['count'],
                'pass': name,
                'gflop': flops / 1e9,
            }
            for framework, t in zip(frameworks, seconds):
                row.update({f'{framework}_s': t, f'{framework}_gflops': flops / t / 1e9})
            rows.append(row)
            print(row, flush=True)
    return rows


def step_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seconds a train step spends in convolutions (count x time), per framework and pass, and
    PyTorch's total over each JAX backend's (`torch_over_<backend>`; over 1: JAX faster)."""
    totals: dict[str, Any] = {}
    for framework in FRAMEWORKS:
        if not rows or any(f'{framework}_s' not in row for row in rows):
            continue
        by_pass = {
            name: sum(r['count'] * r[f'{framework}_s'] for r in rows if r['pass'] == name)
            for name in PASSES
        }
        totals[framework] = {
            'total_s': sum(by_pass.values()),
            **{f'{k}_s': v for k, v in by_pass.items()},
        }
    for backend in JAX_BACKENDS:
        if 'torch' in totals and backend in totals:
            totals[f'torch_over_{backend}'] = (
                totals['torch']['total_s'] / totals[backend]['total_s']
            )
    return totals


def markdown(report: dict[str, Any]) -> str:
    present = [f for f in FRAMEWORKS if f in report['step_totals']]
    peaks = report['peak_gflops']
    lines = [
        f"# Convolutions of {report['model']}'s train step: JAX against PyTorch",
        '',
        f'Generated by `{report["command"]}` on {report["date"]}.',
        '',
        f'Machine: {report["machine"]["cpu_model"]}, {report["machine"]["cores"]} cores; '
        f'jax {report["versions"]["jax"]}, torch {report["versions"]["torch"]}; XLA flags '
        f'`{report["xla_flags"]}`. Float32 matmul peak ({report["peak_size"]}): JAX '
        f'{peaks["jax"]:.0f} GFLOP/s, PyTorch '
        + (f'{peaks["torch"]:.0f}' if peaks.get('torch') else '–')
        + ' GFLOP/s.',
        '',
        "Columns: JAX with XLA's convolution kernels (`xla`), JAX with oneDNN's "
        '(`onednn`, nets/kernels/onednn_conv.py, the CPU default where it builds), PyTorch '
        '(oneDNN, channels-last).',
        '',
        '| input (NHWC) | kernel (HWIO) | stride | per step | pass | '
        + ' | '.join(f'{LABELS[f]} ms | {LABELS[f]} GFLOP/s' for f in present)
        + ' |',
        '|' + '---|' * (5 + 2 * len(present)),
    ]
    for r in report['rows']:
        cells = ' | '.join(f'{r[f + "_s"] * 1e3:.1f} | {r[f + "_gflops"]:.0f}' for f in present)
        lines.append(
            f'| {"x".join(map(str, r["input_shape"]))} | '
            f'{"x".join(map(str, r["kernel_shape"]))} | {r["strides"][0]} | '
            f'{r["count"]} | {r["pass"]} | {cells} |'
        )
    totals = report['step_totals']
    lines += [
        '',
        '## Per train step (count x time)',
        '',
        '| framework | convolutions s | forward s | backward s |',
        '|---|---|---|---|',
    ]
    for framework in present:
        t = totals[framework]
        lines.append(
            f'| {LABELS[framework]} | {t["total_s"]:.3f} | {t["forward_s"]:.3f} | '
            f'{t["backward_s"]:.3f} |'
        )
    ratios = [
        f'{LABELS[b]} {totals[f"torch_over_{b}"]:.2f}x'
        for b in JAX_BACKENDS
        if f'torch_over_{b}' in totals
    ]
    if ratios:
        lines += [
            '',
            "PyTorch / JAX time over the step's convolutions: "
            + ', '.join(ratios)
            + ' (over 1: JAX faster).',
        ]
    return '\n'.join(lines) + '\n'


def run(model: str, size: str, repeats: int) -> dict[str, Any]:
    """The whole measurement; XLA flags must be configured before JAX starts (main does)."""
    import os

    import jax

    from experiments.benchmarks.jax_rows import jax_peak_row

    with_torch = version('torch') is not None
    spec = model_spec(model, size)
    if spec.kind != 'image':
        images = sorted(name for name, other in MODELS.items() if other.kind == 'image')
        raise ValueError(f'{model!r} is not an image model; valid: {images}')
    convs = model_convolutions(spec)
    peak_size = 2048 if size == 'full' else 256
    peaks = {'jax': jax_peak_row(peak_size, ['float32'])[0]['gflops'], 'torch': None}
    if with_torch:
        from experiments.benchmarks.torch_models import torch_matmul_gflops

        peaks['torch'] = torch_matmul_gflops(peak_size, 'float32', repeats=5)
    from nets.kernels import onednn_conv

    frameworks = (
        ['xla']
        + (['onednn'] if onednn_conv.available() else [])
        + (['torch'] if with_torch else [])
    )
    rows = measure(convs, repeats, frameworks)
    return {
        'model': model,
        'size': size,
        'batch_size': spec.batch_size,
        'command': f'python -m experiments.benchmarks.conv_benchmark --model={model} '
        f'--size={size} --repeats={repeats}',
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': machine(),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'versions': {
            'jax': jax.__version__,
            'torch': version('torch'),
            'python': platform.python_version(),
        },
        'peak_size': peak_size,
        'peak_gflops': peaks,
        'rows': rows,
        'step_totals': step_totals(rows),
    }


def main(argv: Sequence[str]) -> None:
    del argv
    from train import runtime
    from train.config import default_config, model_config

    FLAGS = flags.FLAGS
    try:
        spec = model_spec(FLAGS.model, FLAGS.size)
        # The XLA flags the trainer ships for the model, set before JAX starts its CPU backend.
        config = default_config()
        config.model = model_config(spec.net, **spec.fields)
        runtime.apply(runtime.resolve(config, runtime.host_facts()), starting_process=True)
        report = run(FLAGS.model, FLAGS.size, FLAGS.repeats)
    except ValueError as error:  # a bad --model: the message names it and the valid ones
        raise app.UsageError(str(error)) from None
    write_report(report, markdown(report), FLAGS.out or None)


if __name__ == '__main__':
    define_flags()
    cli.run(main)
