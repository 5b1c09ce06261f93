"""The GPU benchmark's plan, workers and report, run on the CPU with toy models (no timing
assertions; the PyTorch worker skips when torch is not installed)."""

import importlib.util
import json

import pytest

from experiments.benchmarks import gpu_benchmark as gpu


def test_plan_puts_bfloat16_and_the_big_pair_first_and_compile_last():
    rows = gpu.plan_rows(
        ['resnet18', 'vit_b16'], ['float32', 'bfloat16'], ['bfloat16'], ['compile', 'eager']
    )
    assert rows['jax'] == [
        dict(model='resnet18', dtype='bfloat16'),
        dict(model='vit_b16', dtype='bfloat16'),
        dict(model='resnet18', dtype='float32'),
    ]
    assert [r['mode'] for r in rows['torch']] == ['eager'] * 3 + ['compile'] * 3
    with pytest.raises(ValueError, match="unknown model 'vgg'.*valid"):
        gpu.plan_rows(['vgg'], ['float32'], [], [])
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        gpu.plan_rows(['resnet18'], ['float16'], [], [])
    with pytest.raises(ValueError, match="unknown torch mode 'jit'"):
        gpu.plan_rows(['resnet18'], ['float32'], [], ['jit'])


def _run(framework, rows, budget_s=600.0):
    results = []
    plan = dict(rows=rows, steps=2, steps_per_call=2, budget_s=budget_s, device='cpu', size='tiny')
    gpu.run_worker(framework, plan, results.append)
    return results


def test_workers_and_report_on_toy_models():
    jax_results = _run(
        'jax', [dict(model='lstm_lm', dtype='bfloat16'), dict(model='vit_b16', dtype='float32')]
    )
    torch_results = []
    if importlib.util.find_spec('torch') is not None:
        torch_results = _run('torch', [dict(model='lstm_lm', dtype='bfloat16', mode='eager')])
    report = gpu.assemble(jax_results + torch_results, command='test')
    json.loads(json.dumps(report))  # plain data
    assert {(p['dtype'], p['framework']) for p in report['peak']} >= {
        ('float32', 'jax'),
        ('bfloat16', 'jax'),
    }
    lstm = next(r for r in report['rows'] if r['framework'] == 'jax' and r['model'] == 'lstm_lm')
    assert lstm['steps_per_call'] == 2 and lstm['step_flops'] > 0 and lstm['grad_accum_steps'] == 1
    # MFU against the peak of the row's own dtype.
    peak = report['roofline_tflops']['bfloat16'] * 1e12
    assert lstm['mfu'] == pytest.approx(lstm['model_flops'] / lstm['step_s'] / peak)
    if torch_results:
        twin = next(r for r in report['rows'] if r['framework'] == 'torch')
        assert twin['params'] == lstm['params'] and twin['device'] == 'cpu'
        assert lstm['vs_torch_eager'] == pytest.approx(
            lstm['examples_per_s'] / twin['examples_per_s']
        )
    table = gpu.markdown_report(report)
    assert '| lstm_lm | 4 | bfloat16 | jax |' in table
    assert '| vit_b16 | 4 | float32 | jax (auto attention) |' in table  # the project's default
    assert report['meta']['jax'] and report['meta']['measured_at']  # the workers' host record


def test_merged_runs_keep_each_row_s_measurement():
    skipped = dict(
        kind='row', framework='jax', model='lstm_lm', dtype='float32', error='skipped: ...'
    )
    measured = dict(
        kind='row', framework='jax', model='lstm_lm', dtype='float32', examples_per_s=10.0
    )
    failed_later = dict(measured, examples_per_s=None, error='OOM')
    peak = dict(kind='peak', dtype='float32', framework='jax', tflops=1.0)
    assert gpu.merge_results([peak, skipped, measured]) == [peak, measured]
    assert gpu.merge_results([measured, failed_later]) == [measured]
    assert gpu.merge_results([skipped]) == [skipped]


def test_recount_sets_the_cpu_count_the_rows_report():
    from experiments.benchmarks import bench_common
    from experiments.benchmarks import jax_rows as bench

    spec = bench_common.model_spec('lstm_lm', 'tiny')
    measured = bench.jax_train_step_row(spec, dtype='float32', devices=1, steps=1, warmup=0)
    gpu_counted = dict(
        kind='row',
        framework='jax',
        model='lstm_lm',
        dtype='bfloat16',
        step_flops=1.0,
        examples_per_s=1.0,
    )
    gpu.recount_flops([gpu_counted], size='tiny')
    # The float32 step's count is what a measured row reports; a bfloat16-only model is
    # counted in bfloat16 (the same products).
    assert gpu_counted['step_flops'] == bench.model_step_flops(spec, 'bfloat16').total
    assert bench.model_step_flops(spec, 'float32').total == measured['step_flops'] > 0
    assert gpu_counted['flops_counted_on'].startswith('cpu')


def test_a_spent_budget_skips_the_remaining_rows():
    results = _run('jax', [dict(model='lstm_lm', dtype='float32')], budget_s=-1.0)
    skipped = [r for r in results if r['kind'] == 'row']
    assert len(skipped) == 1 and skipped[0]['error'].startswith('skipped')
    assert '| lstm_lm | | float32 | jax | | skipped' in gpu.markdown_report(
        gpu.assemble(results, command='test')
    )
