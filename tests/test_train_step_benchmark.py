"""The train-step benchmark's bookkeeping (no timing assertions): rows carry what they should,
ratios and MFU come from the measured numbers, the PyTorch twins have the JAX models' parameter
counts. Toy sizes; PyTorch parts skip when torch is not installed."""

import dataclasses
import json

import jax.numpy as jnp
import pytest

import nets
from experiments.benchmarks import bench_common, conv_benchmark, run_noise
from experiments.benchmarks import train_step_benchmark as bench
from tests.test_conv_benchmark import synthetic_grouped_report
from train import host_cpu, runtime

STEP_KEYS = {
    'framework',
    'devices',
    'dtype',
    'params',
    'compile_s',
    'step_s',
    'examples_per_s',
    'first_call_s',
    'cpu_s',
    'step_flops',
    'peak_rss_mib',
}


def jax_params(spec: bench_common.ModelSpec) -> int:
    model = nets.create(spec.net, **spec.fields, **spec.jax_fields)
    dtype = jnp.float32 if spec.kind == 'image' else jnp.int32
    return nets.count_params(model, (1, *spec.example_shape), input_dtype=dtype)


def fake_rows():
    rows = [
        dict(
            model='m',
            dtype='float32',
            framework='jax',
            devices=1,
            step_s=2.0,
            examples_per_s=64.0,
            step_flops=4e11,
        ),
        dict(
            model='m',
            dtype='bfloat16',
            framework='jax',
            devices=2,
            step_s=4.0,
            examples_per_s=32.0,
            step_flops=5e11,
        ),
        dict(
            model='m',
            dtype='float32',
            framework='torch',
            mode='eager',
            step_s=4.0,
            examples_per_s=32.0,
        ),
        dict(
            model='m',
            dtype='bfloat16',
            framework='torch',
            mode='eager',
            step_s=1.0,
            examples_per_s=128.0,
        ),
        dict(model='m', dtype='float32', framework='torch', mode='compile', error='boom'),
    ]
    return bench_common.add_ratios(rows, {'float32': 1e12})


def test_ratios_and_mfu_come_from_the_measured_numbers():
    jax_f32, jax_bf16, torch_f32, torch_bf16, failed = fake_rows()
    assert jax_f32['mfu'] == pytest.approx(4e11 / 2.0 / 1e12)
    assert jax_bf16['mfu'] == pytest.approx(4e11 / 4.0 / 1e12)  # the float32 step's FLOPs
    assert torch_f32['mfu'] == pytest.approx(4e11 / 4.0 / 1e12)  # the JAX count of the model
    assert jax_f32['vs_torch_eager'] == pytest.approx(64.0 / 32.0)
    assert jax_bf16['vs_torch_eager'] == pytest.approx(32.0 / 128.0)
    assert jax_bf16['vs_torch_eager_float32'] == pytest.approx(32.0 / 32.0)
    assert jax_f32['vs_torch_compile'] is None  # the compile row failed
    assert 'mfu' not in failed and failed['error'] == 'boom'


def test_a_pytorch_worker_stopped_in_its_first_step_gives_a_bound(monkeypatch):
    marker = bench_common.FIRST_STEP_MARKER
    monkeypatch.setattr(bench_common.time, 'time', lambda: 1000.0)
    stopped = bench_common.stopped_row(f'built\n{marker}700.0\n', 600, batch_size=64)
    assert stopped['error'] == 'timed out after 600 s'
    assert stopped['step_s_at_least'] == 300.0 and stopped['examples_per_s_at_most'] == 64 / 300
    # Stopped before its first step, or a worker without one: no bound.
    assert set(bench_common.stopped_row(b'built\n', 600, 64)) == {'error'}
    assert set(bench_common.stopped_row(f'{marker}700.0', 600, 0)) == {'error'}
    jax_row = dict(
        model='m',
        dtype='bfloat16',
        framework='jax',
        devices=1,
        step_s=2.0,
        examples_per_s=32.0,
        params=5,
    )
    torch_row = dict(model='m', dtype='bfloat16', framework='torch', mode='eager', **stopped)
    jax_row, torch_row = bench_common.add_ratios([jax_row, torch_row], {'float32': 1e12})
    assert jax_row['vs_torch_eager'] is None
    assert jax_row['vs_torch_eager_at_least'] == pytest.approx(32.0 / (64 / 300))
    report = {
        'meta': dict(
            command='test',
            date='d',
            cpu_model='cpu',
            cores=2,
            memory_gib=1.0,
            jax='j',
            python='p',
            load_average='0',
        ),
        'peak': [dict(dtype='bfloat16', size=2048, gflops=100.0, torch_gflops=0.3, torch_size=512)],
        'rows': [jax_row, torch_row],
    }
    table = bench_common.markdown_report(report)
    assert '| > 150x |' in table and '< 0.21 (no step ended in 300 s) | > 300000 |' in table
    assert '| 0.3 (at 512) |' in table


def test_reach_names_the_slower_rows():
    rows = fake_rows()
    target = bench_common.reach(rows, vit_model='m')
    assert target['all_rows_at_least_torch_eager_float32']  # 2.0x and 1.0x
    assert target['best_vit_mfu'] == pytest.approx(0.2) and not target['vit_at_least_half_of_peak']
    rows[0]['vs_torch_eager_float32'] = 0.5
    target = bench_common.reach(rows, vit_model='m')
    assert not target['all_rows_at_least_torch_eager_float32']
    assert target['rows_slower_than_torch_eager_float32'] == ['m float32 1dev: 0.50x']


def tiny_plan(
    models: list[str],
    dtypes: tuple[str, ...] = ('float32',),
    devices: tuple[int, ...] = (1,),
    torch_modes: tuple[str, ...] = ('eager',),
    **options,
) -> list[dict]:
    """plan_jobs for toy models, 2 steps a row, no pipeline, unless `options` say otherwise."""
    settings = dict(steps=2, warmup=0, size='tiny', peak_size=64, pipeline=False) | options
    return bench.plan_jobs(models, list(dtypes), list(devices), list(torch_modes), **settings)


def test_plan_runs_each_model_s_rows_together_with_their_device_counts():
    jobs = bench.plan_jobs(
        ['lstm_lm', 'resnet18'],
        ['float32'],
        [1, 2],
        ['eager'],
        steps=2,
        warmup=0,
        size='tiny',
        peak_size=64,
        pipeline=True,
    )
    # Both families run with the trainer's allocator settings: PyTorch eager runs twice, with
    # glibc's defaults and under those settings.
    assert [j['job'] for j in jobs] == [
        'peak',
        'jax_step',
        'jax_step',
        'torch_step',
        'torch_step',
        'jax_step',
        'jax_step',
        'torch_step',
        'torch_step',
        'pipeline',
        'peak',
    ]
    assert [j.get('model') for j in jobs[1:5]] == ['lstm_lm'] * 4
    assert [j['mode'] for j in jobs[3:5]] == ['eager', 'eager+malloc']
    assert jobs[-2]['model'] == 'resnet18'  # the pipeline feeds an image model
    assert jobs[-1]['again'] and not jobs[0].get('again')
    env = bench.worker_env(jobs[2], '--xla_cpu_enable_fast_math=false')
    assert env['XLA_FLAGS'] == (
        '--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2'
    )
    assert 'device_count' not in bench.worker_env(jobs[1], '')['XLA_FLAGS']
    assert env['MALLOC_ARENA_MAX'] == '1'
    assert bench.worker_env(jobs[4], None)['MALLOC_MMAP_MAX_'] == '0'
    assert 'MALLOC_ARENA_MAX' not in bench.worker_env(jobs[3], None)
    untuned = tiny_plan(['vit_ti4'])
    assert [j.get('mode') for j in untuned if j['job'] == 'torch_step'] == ['eager']
    assert 'MALLOC_ARENA_MAX' not in bench.worker_env(untuned[1], None)
    with pytest.raises(ValueError, match='unknown model'):
        tiny_plan(['nope'], torch_modes=())


def test_jax_row_measures_the_project_step():
    spec = bench_common.model_spec('vit_ti4', 'tiny')
    row = bench.jax_train_step_row(spec, dtype='float32', devices=2, steps=2, warmup=0)
    assert STEP_KEYS <= set(row)
    assert row['params'] == jax_params(spec)
    assert row['examples_per_s'] == pytest.approx(spec.batch_size / row['step_s'])
    assert row['step_flops'] > 0 and row['uncorrected_loops'] == 0
    assert row['grad_accum_steps'] == 1  # 4 images per device: no smaller micro-batch


def test_jax_row_splits_a_vit_batch_as_the_trainer_does_on_the_cpu():
    # The micro-batch size follows this host's CPU (train.runtime): take what it chose here.
    micro_batch, _ = runtime.micro_batch_choice(host_cpu.this_cpu(), 'vit')
    if not micro_batch:
        pytest.skip('this host trains ViTs in whole batches')
    spec = dataclasses.replace(
        bench_common.model_spec('vit_ti4', 'tiny'), batch_size=2 * micro_batch
    )
    whole = bench.jax_train_step_row(
        spec, dtype='float32', devices=1, steps=1, warmup=0, micro_batches=False
    )
    split = bench.jax_train_step_row(spec, dtype='float32', devices=1, steps=1, warmup=0)
    assert (whole['grad_accum_steps'], split['grad_accum_steps']) == (1, 2)
    assert split['step_flops'] == whole['step_flops']  # the model's FLOPs, counted whole


def test_report_of_an_in_process_run(tmp_path):
    """The whole driver on the toy LSTM with 1 and 2 devices, the peak and the pipeline,
    jobs run in this process (the tests' 8 simulated devices) instead of subprocesses."""
    jobs = bench.plan_jobs(
        ['lstm_lm'],
        ['float32'],
        [1, 2],
        [],
        steps=2,
        warmup=0,
        size='tiny',
        peak_size=64,
        pipeline=True,
    )
    report = bench.run_benchmark(
        jobs, bench.run_worker, command='test', xla_flags='', log=lambda _: None
    )
    json.loads(json.dumps(report))  # the JSON written is plain data
    assert {r['dtype'] for r in report['peak']} == {'float32'} and report['peak'][0]['gflops'] > 0
    one, two = report['rows']
    assert (one['devices'], two['devices']) == (1, 2)
    lstm = bench_common.model_spec('lstm_lm', 'tiny')
    assert one['params'] == two['params'] == jax_params(lstm)
    # Counted once, on the 1-device row (a scan: the loop correction adds the iterations XLA
    # counted once); the 2-device row's MFU uses the same count.
    assert one['step_flops'] > 0 and 'step_flops' not in two
    assert one['model_flops'] == two['model_flops'] == one['step_flops']
    peak = max(report['peak'][0]['gflops'], report['peak_at_end'][0]['gflops']) * 1e9
    assert one['mfu'] == pytest.approx(one['step_flops'] / one['step_s'] / peak)
    assert one['vs_torch_eager'] is None  # no PyTorch rows asked for
    assert [r['stage'] for r in report['pipeline']][0].startswith('grain loader')
    assert all(r['examples_per_s'] > 0 for r in report['pipeline'])
    assert not report['reach']['all_rows_at_least_torch_eager_float32']  # nothing to compare
    assert report['peak_at_end'][0]['gflops'] > 0 and set(report['peak_drift']) == {'float32'}
    table = bench_common.markdown_report(report)
    assert table.count('| lstm_lm | float32 | jax |') == 2 and 'NOT reached' in table


def test_a_run_whose_peak_moved_is_flagged():
    start = [
        {'dtype': 'float32', 'gflops': 200.0, 'size': 64},
        {'dtype': 'bfloat16', 'gflops': 350.0, 'size': 64},
    ]
    end = [{'dtype': 'float32', 'gflops': 196.0}, {'dtype': 'bfloat16', 'gflops': 120.0}]
    drift = run_noise.peak_drift(start, end)
    assert drift == pytest.approx({'float32': -0.02, 'bfloat16': 120 / 350 - 1})
    jobs = [dict(job='peak'), dict(job='peak', again=True)]
    peaks = iter([start, end])
    report = bench.run_benchmark(
        jobs, lambda job: next(peaks), command='test', xla_flags='', log=lambda _: None
    )
    flagged = [note for note in report['notes'] if 'speed moved' in note]
    assert len(flagged) == 1 and '-66% (bfloat16)' in flagged[0] and 'float32' not in flagged[0]
    assert '| bfloat16 | ' in bench_common.markdown_report(report)


def test_the_page_ends_with_the_grouped_convolutions_whose_json_lies_beside_it(tmp_path):
    jobs = [dict(job='peak'), dict(job='peak', again=True)]
    peaks = iter(
        [
            [{'dtype': 'float32', 'gflops': 400.0, 'size': 64}],
            [{'dtype': 'float32', 'gflops': 420.4}],
        ]
    )
    report = bench.run_benchmark(
        jobs, lambda job: next(peaks), command='test', xla_flags='', log=lambda _: None
    )
    out = tmp_path / 'benchmarks.json'
    assert bench.grouped_conv_report(str(out)) is None and bench.grouped_conv_report(None) is None
    assert bench.report_markdown(report) == bench_common.markdown_report(report)
    grouped = synthetic_grouped_report()
    (tmp_path / bench.GROUPED_CONV_JSON).write_text(json.dumps(grouped))
    found = bench.grouped_conv_report(str(out))
    assert found == json.loads(json.dumps(grouped))
    bench_common.write_report(report, bench.report_markdown(report, found), str(out))
    section = conv_benchmark.grouped_summary_markdown(
        found,
        rows_page='conv_benchmark_grouped.md',
        peak_elsewhere='420 in the train-step run above',  # the higher of its two peaks
    )
    assert out.with_suffix('.md').read_text() == (
        bench_common.markdown_report(report) + '\n' + section
    )
    (tmp_path / bench.GROUPED_CONV_JSON).write_text(json.dumps({**grouped, 'convs': 'all'}))
    with pytest.raises(ValueError, match='conv_benchmark_grouped.json: not a report of'):
        bench.grouped_conv_report(str(out))


def test_torch_twins_match_the_jax_parameter_counts():
    pytest.importorskip('torch')
    from experiments.benchmarks import torch_models

    for model in bench_common.MODELS:
        spec = bench_common.model_spec(model)
        assert torch_models.trainable_params(torch_models.build_twin(spec)) == jax_params(spec)


def test_torch_row_on_a_toy_model():
    pytest.importorskip('torch')
    from experiments.benchmarks import torch_models

    spec = bench_common.model_spec('lstm_lm', 'tiny')
    row = torch_models.torch_train_step_row(spec, dtype='bfloat16', mode='eager', steps=2, warmup=0)
    assert row['params'] == jax_params(spec) and row['compile_s'] is None
    assert row['examples_per_s'] == pytest.approx(spec.batch_size / row['step_s'])


def test_benchmark_measures_the_trainer_s_cpu_flags():
    """The JAX workers run with what train.main adds on the CPU for their model family and dtype
    (train.runtime), unless --xla_flags overrides it for every row."""
    from train.runtime import cpu_xla_flags

    vit = {'job': 'jax_step', 'model': 'vit_ti4', 'dtype': 'float32', 'devices': 1}
    lstm = {'job': 'jax_step', 'model': 'lstm_lm', 'dtype': 'float32', 'devices': 2}
    # This machine's preset: the flags differ by CPU (tests/test_runtime_host.py checks them).
    (preset,) = cpu_xla_flags('language_model', 'float32')
    assert bench.job_xla_flags(vit) == ' '.join(cpu_xla_flags('vit', 'float32'))
    assert bench.job_xla_flags(lstm) == preset
    assert bench.job_xla_flags({**vit, 'dtype': 'bfloat16'}) == bench.job_xla_flags(lstm)
    assert (
        bench.job_xla_flags(vit, '--xla_cpu_use_thunk_runtime=true')
        == '--xla_cpu_use_thunk_runtime=true'
    )
    assert bench.worker_env(lstm, None)['XLA_FLAGS'].split() == [
        preset,
        '--xla_force_host_platform_device_count=2',
    ]
    assert (
        bench.job_xla_flags(
            {'job': 'torch_step', 'model': 'vit_ti4', 'dtype': 'float32', 'mode': 'eager'}
        )
        == ''
    )


def test_rounds_alternate_the_order_and_count_flops_once():
    jobs = tiny_plan(['lstm_lm'], rounds=3)
    rows = [(j['job'], j.get('mode'), j.get('round')) for j in jobs[1:-1]]
    jax_row, eager, malloc = (
        ('jax_step', None),
        ('torch_step', 'eager'),
        ('torch_step', 'eager+malloc'),
    )
    assert rows == [
        (*jax_row, 0), (*eager, 0), (*malloc, 0),
        (*malloc, 1), (*eager, 1), (*jax_row, 1),
        (*jax_row, 2), (*eager, 2), (*malloc, 2),
    ]  # fmt: skip
    assert [j['count_flops'] for j in jobs[1:-1] if j['job'] == 'jax_step'] == [True, False, False]
    assert all('round' not in j for j in tiny_plan(['lstm_lm']))


def test_fastest_round_stands_for_the_row():
    def row(framework, step_s, **extra):
        return dict(model='m', dtype='float32', framework=framework, step_s=step_s, **extra)

    rows = [
        row('jax', 2.0, devices=1, step_flops=10.0, uncorrected_loops=0),
        row('torch', 1.5, mode='eager'),
        row('torch', 1.2, mode='eager'),
        row('jax', 1.8, devices=1),
        row('jax', None, devices=2, error='timed out'),
        row('jax', 1.9, devices=2),
    ]
    jax1, eager, jax2 = run_noise.fastest_rounds(rows)
    assert (jax1['step_s'], jax1['step_flops'], jax1['round_step_s']) == (1.8, 10.0, [2.0, 1.8])
    assert (eager['step_s'], eager['round_step_s']) == (1.2, [1.5, 1.2])
    assert (jax2['step_s'], jax2['round_step_s']) == (1.9, [None, 1.9])
    assert 'error' not in jax2
    note = run_noise.rounds_note([jax1, eager, jax2])
    assert 'm float32 jax 1 dev: 2000 / 1800' in note and 'failed / 1900' in note
    single = [row('jax', 1.0, devices=1)]
    assert run_noise.fastest_rounds(single) == single and run_noise.rounds_note(single) is None
