"""The convolution benchmark's bookkeeping (no timing assertions): it finds a model's
convolutions with their counts and groups, counts their FLOPs, its PyTorch passes compute what
JAX's do (grouped convolutions too), and the report sums the step. Toy sizes; PyTorch parts skip
when torch is not installed."""

import importlib.util
import json

import numpy as np
import pytest

from experiments.benchmarks import bench_common, conv_passes
from experiments.benchmarks import conv_benchmark as bench


def tiny_resnet_convolutions():
    return bench.model_convolutions(bench_common.model_spec('resnet18', 'tiny'))


def test_finds_every_convolution_of_the_tiny_resnet_once_with_its_count():
    convs = tiny_resnet_convolutions()
    # Tiny ResNet-18: stem 3->8 at 8x8; stage 0: two 8->8 convs; stage 1: 8->16 stride 2,
    # 16->16, and the 1x1 stride-2 projection.
    kernels = [tuple(c['kernel_shape']) for c in convs]
    assert kernels == [(3, 3, 3, 8), (3, 3, 8, 8), (3, 3, 8, 16), (3, 3, 16, 16), (1, 1, 8, 16)]
    assert [c['count'] for c in convs] == [1, 2, 1, 1, 1]
    assert [c['reads_input'] for c in convs] == [True, False, False, False, False]
    assert tuple(convs[0]['input_shape']) == (8, 8, 8, 3)
    assert tuple(convs[2]['strides']) == (2, 2)


def test_conv_flops_counts_the_output_positions():
    conv = dict(
        input_shape=(2, 8, 8, 3),
        kernel_shape=(3, 3, 3, 4),
        strides=(2, 2),
        padding=((0, 1), (0, 1)),
    )
    assert bench.conv_flops(conv) == 2.0 * 2 * 4 * 4 * 9 * 3 * 4


def test_rejects_a_model_without_images():
    with pytest.raises(
        ValueError, match="'lstm_lm' is not an image model; valid: \\['nfnet_f0', 'resnet18'"
    ):
        bench.run('lstm_lm', 'tiny', 1)
    with pytest.raises(ValueError, match="unknown model 'nfnet'; valid: \\['nfnet_f0'"):
        bench.run('nfnet', 'tiny', 1)
    with pytest.raises(ValueError, match="'resnet18' has no grouped convolutions"):
        bench.run('resnet18', 'tiny', 1, 'grouped')


def tiny_nfnet_grouped_convolutions():
    convs = conv_passes.model_convolutions(conv_passes.conv_model_spec('nfnet_f0', 'tiny'))
    return [c for c in convs if c['groups'] > 1]


def test_finds_the_grouped_convolutions_of_the_tiny_nfnet_with_their_groups():
    # Tiny NFNet: widths (64, 128), bottleneck 0.5, group width 16: stage 0's 3x3s have 2 groups
    # of 16 channels at 8x8 (conv1 and conv1b alike), stage 1's 4 groups, the first strided.
    convs = tiny_nfnet_grouped_convolutions()
    assert [(c['groups'], tuple(c['kernel_shape']), c['count']) for c in convs] == [
        (2, (3, 3, 16, 32), 2),
        (4, (3, 3, 16, 64), 1),
        (4, (3, 3, 16, 64), 1),
    ]
    assert [tuple(c['strides']) for c in convs] == [(1, 1), (2, 2), (1, 1)]
    # Each output channel sums over its group's 16 input channels.
    assert bench.conv_flops(convs[0]) == 2.0 * 4 * 8 * 8 * 9 * 16 * 32


def _backends():
    from nets.kernels import onednn_conv

    return ['xla'] + (['onednn'] if onednn_conv.available() else [])


@pytest.mark.parametrize('strides,groups', [((1, 1), 1), ((2, 2), 1), ((1, 1), 2), ((2, 2), 4)])
def test_every_framework_computes_the_same_passes(strides, groups):
    """JAX with each convolution backend, and PyTorch where installed."""
    candidates = tiny_resnet_convolutions() if groups == 1 else tiny_nfnet_grouped_convolutions()
    conv = next(
        c
        for c in candidates
        if tuple(c['strides']) == strides
        and c.get('groups', 1) == groups
        and c['kernel_shape'][0] == 3
        and not c['reads_input']
    )
    reference = bench.jax_passes(conv, 'xla')
    expected_y, (expected_dx, expected_dw) = reference['forward'](), reference['backward']()
    others = {backend: bench.jax_passes(conv, backend) for backend in _backends()[1:]}
    for calls in others.values():
        np.testing.assert_allclose(np.asarray(calls['forward']()), expected_y, rtol=1e-4, atol=1e-4)
        dx, dw = calls['backward']()
        np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(dw), expected_dw, rtol=1e-4, atol=1e-4)
    if importlib.util.find_spec('torch') is None:
        return
    torch_calls = bench.torch_passes(conv)
    np.testing.assert_allclose(
        torch_calls['forward'].numpy(), np.asarray(expected_y), rtol=1e-4, atol=1e-4
    )
    torch_dx, torch_dw = torch_calls['backward'].numpy()
    np.testing.assert_allclose(torch_dx, np.asarray(expected_dx), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_dw, np.asarray(expected_dw), rtol=1e-4, atol=1e-4)


def test_jax_passes_reject_an_unknown_backend():
    conv = tiny_resnet_convolutions()[1]
    with pytest.raises(ValueError, match="backend 'cudnn': valid backends are xla, onednn"):
        bench.jax_passes(conv, 'cudnn')


def test_report_sums_the_step_and_writes_json_and_markdown(tmp_path):
    """With or without torch installed (without it the rows are JAX's alone)."""
    with_torch = importlib.util.find_spec('torch') is not None
    report = bench.run('resnet18', 'tiny', 1)
    rows = report['rows']
    assert {r['pass'] for r in rows} == set(bench.PASSES)
    # The stem reads the image: its backward pass is the kernel gradient alone (half the FLOPs).
    stem = [r for r in rows if r['kernel_shape'][2] == 3]
    assert stem[1]['gflop'] == pytest.approx(stem[0]['gflop'])
    other = [r for r in rows if r['kernel_shape'][2] != 3]
    assert other[1]['gflop'] == pytest.approx(2 * other[0]['gflop'])
    totals = report['step_totals']
    for backend in _backends():
        expected = sum(r['count'] * r[f'{backend}_s'] for r in rows)
        assert totals[backend]['total_s'] == pytest.approx(expected)
        assert (f'torch_over_{backend}' in totals) == with_torch
        if with_torch:
            assert totals[f'torch_over_{backend}'] == pytest.approx(
                totals['torch']['total_s'] / totals[backend]['total_s']
            )
    assert ('torch' in totals) == with_torch and all(('torch_s' in r) == with_torch for r in rows)
    out = tmp_path / 'conv.json'
    bench_common.write_report(report, bench.markdown(report), str(out))
    table = out.with_suffix('.md').read_text()
    assert 'Per train step' in table and '| JAX XLA |' in table
    assert json.loads(out.read_text())['step_totals'] == totals


def test_grouped_report_of_the_tiny_nfnet(tmp_path):
    report = bench.run('nfnet_f0', 'tiny', 1, 'grouped')
    assert report['convs'] == 'grouped' and report['rows']
    assert all(r['groups'] > 1 for r in report['rows'])
    assert {r['groups'] for r in report['rows']} == {2, 4}
    table = bench.markdown(report)
    assert '# Grouped convolutions of nfnet_f0' in table and '| groups |' in table
    assert 'Load average (1, 5, 15 min) before:' in table
    if 'torch' in report['step_totals']:
        totals = report['step_totals']
        for backend in _backends():
            for name in bench.PASSES:
                assert totals[f'torch_over_{backend}_{name}'] == pytest.approx(
                    totals['torch'][f'{name}_s'] / totals[backend][f'{name}_s']
                )


# (input (NHWC), kernel (HWIO), groups, stride, count, pass, seconds of xla, onednn, torch)
SYNTHETIC_ROWS = [
    ((2, 8, 8, 32), (3, 3, 16, 32), 2, 1, 2, 'forward', 0.02, 0.01, 0.008),
    ((2, 8, 8, 32), (3, 3, 16, 32), 2, 1, 2, 'backward', 0.4, 0.03, 0.025),
    ((2, 8, 8, 64), (3, 3, 16, 64), 4, 2, 1, 'forward', 0.01, 0.005, 0.005),
    ((2, 8, 8, 64), (3, 3, 16, 64), 4, 2, 1, 'backward', 0.2, 0.012, 0.015),
]


def synthetic_grouped_report() -> dict:
    """A --convs=grouped report as conv_benchmark.run returns it, with made-up times (0.1 GFLOP
    per forward pass, 0.2 per backward); the step's totals from bench.step_totals."""
    rows = []
    for shape, kernel, groups, stride, count, name, *seconds in SYNTHETIC_ROWS:
        gflop = 0.1 if name == 'forward' else 0.2
        row = dict(
            input_shape=list(shape),
            kernel_shape=list(kernel),
            strides=[stride, stride],
            groups=groups,
            count=count,
            gflop=gflop,
        )
        row['pass'] = name
        for framework, t in zip(('xla', 'onednn', 'torch'), seconds):
            row.update({f'{framework}_s': t, f'{framework}_gflops': gflop / t})
        rows.append(row)
    return {
        'model': 'toy_net',
        'size': 'tiny',
        'convs': 'grouped',
        'batch_size': 2,
        'command': 'python -m experiments.benchmarks.conv_benchmark --convs=grouped',
        'date': '2030-01-02T03:04:05+00:00',
        'machine': {
            'cpu_model': 'Toy CPU',
            'cpu_summary': 'Toy CPU (x86_64; avx2; 2 cores)',
            'cores': 2,
            'load_average': '2.5, 2.0, 1.5',
        },
        'load_average_after': '3.5, 2.5, 2.0',
        'xla_flags': '--toy_flag',
        'versions': {'jax': '9.9', 'torch': '8.8', 'python': '3.11'},
        'peak_size': 256,
        'peak_gflops': {'jax': 123.4, 'torch': 99.0},
        'rows': rows,
        'step_totals': bench.step_totals(rows),
    }


def test_grouped_summary_from_a_report():
    report = synthetic_grouped_report()
    section = bench.grouped_summary_markdown(
        report, rows_page='toy.md', peak_elsewhere='450 in the train-step run above'
    )
    assert section.startswith('## Grouped convolutions (toy_net): JAX against PyTorch\n')
    assert f'`{report["command"]}`, 2030-01-02T03:04:05+00:00' in section
    assert 'Machine: Toy CPU (x86_64; avx2; 2 cores); jax 9.9, torch 8.8' in section
    assert 'its 2 distinct grouped convolutions (2 and 4 groups of 16 input channels)' in section
    assert 'every row in [`toy.md`](toy.md)' in section
    assert 'before the run: 2.5, 2.0, 1.5; after it: 3.5, 2.5, 2.0' in section
    assert 'read 123 GFLOP/s (450 in the train-step run above)' in section
    # JAX time / PyTorch time of the step's passes (count x time): oneDNN forward
    # 2 x 0.01 + 0.005 = 0.025 s against 2 x 0.008 + 0.005 = 0.021 s, and so on.
    assert (
        f'| {bench.BACKEND_NOTES["onednn"]} | 1.19x (0.0250 vs 0.0210 s) | '
        '1.11x (0.0720 vs 0.0650 s) | 1.13x (0.0970 vs 0.0860 s) |'
    ) in section
    assert (
        f'| {bench.BACKEND_NOTES["xla"]} | 2.38x (0.0500 vs 0.0210 s) | '
        '15.4x (1.00 vs 0.0650 s) | 12.2x (1.05 vs 0.0860 s) |'
    ) in section
    # Per layer: oneDNN forward 1.25x and 1.00x of PyTorch's time, backward 1.20x and 0.80x.
    assert (
        "with oneDNN's kernels 1.00-1.25x forward (10-20 GFLOP/s), 0.80-1.20x backward" in section
    )
    assert (
        "with XLA's kernels 2.00-2.50x forward (5.0-10 GFLOP/s), 13.3-16.0x backward "
        '(0.5-1.0 GFLOP/s)'
    ) in section
    assert section.endswith('PyTorch: 12-20 GFLOP/s forward, 8.0-13 GFLOP/s backward.\n')
    assert set(bench.BACKEND_NOTES) == set(bench.JAX_BACKENDS)


def test_grouped_summary_without_pytorch_and_of_another_set():
    report = synthetic_grouped_report()
    rows = [{k: v for k, v in r.items() if not k.startswith('torch_')} for r in report['rows']]
    without = {**report, 'rows': rows, 'step_totals': bench.step_totals(rows)}
    section = bench.grouped_summary_markdown(without)
    assert 'every row in the table at the top of this page' in section
    assert section.endswith(
        'PyTorch was not measured in this run (torch not installed): no ratios.\n'
    )
    with pytest.raises(ValueError, match="convs 'all': the summary is of a --convs=grouped run"):
        bench.grouped_summary_markdown({**report, 'convs': 'all'})


def test_grouped_page_ends_with_the_summary():
    report = synthetic_grouped_report()
    page = bench.markdown(report)
    assert page.startswith('# Grouped convolutions of toy_net')
    assert page.endswith('\n\n' + bench.grouped_summary_markdown(report))
    assert 'JAX time / PyTorch time' not in bench.markdown({**report, 'convs': 'all'})
