"""train.runtime: hardware choices resolved from config.runtime on a described host (pure),
applied in one place, and recorded in the run's summary."""

import os
import platform
import subprocess
import sys

import pytest

from nets.kernels import switch
from train import runtime
from train.config import ConfigError, default_config, model_config, validate
from train.host_cpu import Cpu
from train.runtime import Host, resolve

# The CPU the tables were measured on (2 vCPUs of an AMD EPYC Zen 4): the measured choices apply.
ZEN4 = Cpu(
    arch='x86_64',
    vendor='AuthenticAMD',
    model='AMD EPYC 9R14',
    flags=frozenset({'avx2', 'avx512f', 'avx512_bf16'}),
    physical_cores=2,
    logical_cores=2,
    l2_cache_bytes=1 << 20,
    l3_cache_bytes=32 << 20,
)


def _config(model: str = 'resnet18', **fields):
    config = default_config()
    config.model = model_config(model)
    config.update(fields)
    return config


def _host(platform_name: str = 'cpu', jaxlib: str = '0.10.2', **fields) -> Host:
    values = dict(
        platform=platform_name,
        jaxlib_version=jaxlib,
        libc='glibc',
        xla_flags='',
        environ_malloc={},
        processes=1,
        cpu=ZEN4,
    )
    values.update(fields)
    return Host(**values)


def test_xla_flags_per_family_and_dtype():
    default = [f'{runtime.YNN_FUSION_FLAG}={runtime.DEFAULT_YNN_FUSION}']
    assert runtime.cpu_xla_flags(cpu=ZEN4) == default
    assert runtime.cpu_xla_flags('resnet', 'float32', ZEN4) == default
    assert runtime.cpu_xla_flags('vit', 'bfloat16', ZEN4) == default
    vit = runtime.cpu_xla_flags('vit', 'float32', ZEN4)
    assert vit != default and '-individual_dot' in vit[0]
    assert resolve(_config('vit_ti16'), _host()).xla_flags == tuple(vit)
    assert resolve(_config('vit_ti16', dtype='bfloat16'), _host()).xla_flags == tuple(default)


def test_measured_choices_only_on_a_measured_cpu_host():
    for host in (_host('gpu'), _host('tpu'), _host(jaxlib='0.11.0')):
        chosen = resolve(_config('vit_ti16', batch_size=256), host)
        assert chosen.xla_flags == () and chosen.malloc_env == () and chosen.grad_accum_steps == 1
    assert resolve(_config(), _host('gpu')).conv_backend == 'xla'
    off = _config('vit_ti16')
    off.runtime.xla_flags = 'none'
    assert resolve(off, _host()).xla_flags == ()


def test_a_flag_the_user_sets_wins():
    host = _host(xla_flags=f'{runtime.YNN_FUSION_FLAG}=-dot')
    chosen = resolve(_config('vit_ti16'), host)
    assert chosen.xla_flags == () and 'already' in chosen.reason('xla_flags')


def test_cpu_devices_from_the_config_or_the_user_s_xla_flags():
    config = _config()
    config.runtime.cpu_devices = 4
    chosen = resolve(config, _host())
    assert chosen.cpu_devices == 4 and f'{runtime.CPU_DEVICE_COUNT_FLAG}=4' in chosen.xla_flags
    chosen = resolve(config, _host(xla_flags=f'{runtime.CPU_DEVICE_COUNT_FLAG}=8'))
    assert chosen.cpu_devices == 8 and not any('device_count' in f for f in chosen.xla_flags)


def test_conv_backend_per_family_unless_the_config_chooses():
    assert resolve(_config('resnet18'), _host()).conv_backend == 'onednn'
    chosen = resolve(_config('cnn'), _host())
    assert chosen.conv_backend == 'xla' and 'measured' in chosen.reason('conv_backend')
    config = _config('cnn')
    config.runtime.conv_backend = 'onednn'
    chosen = resolve(config, _host())
    assert chosen.conv_backend == 'onednn' and chosen.conv_backend_required


def test_a_run_s_kernel_switch_settings_are_its_resolved_backends():
    config = _config('resnet18', dtype='bfloat16')
    config.runtime.matmul_backend = 'xla'
    config.runtime.attention = 'plain'
    chosen = resolve(config, _host())
    assert runtime.kernels(chosen) == dict(conv='onednn', attention='plain', matmul='xla')
    with switch.use(**runtime.kernels(chosen)):  # the settings the switch takes
        assert switch.matmul_backend() == 'xla' and switch.conv_backend() == 'onednn'


def test_micro_batches_per_family_batch_and_devices():
    micro = runtime.MICRO_BATCH_BY_FAMILY['vit']
    assert runtime.cpu_grad_accum_steps('vit', 8 * micro, 1, cpu=ZEN4) == 8
    assert runtime.cpu_grad_accum_steps('vit', 8 * micro, 2, cpu=ZEN4) == 4  # per device
    assert runtime.cpu_grad_accum_steps('vit', micro, 1, cpu=ZEN4) == 1  # one micro-batch
    assert runtime.cpu_grad_accum_steps('vit', 8 * micro + 2, 1, cpu=ZEN4) == 1  # would not split
    assert runtime.cpu_grad_accum_steps('resnet', 1024, 1, cpu=ZEN4) == 1  # batch norm: never
    assert runtime.cpu_grad_accum_steps('resnet', 1024, 1, micro_batch_size=256) == 4
    assert resolve(_config('vit_ti16', batch_size=4 * micro), _host()).grad_accum_steps == 4
    kept = _config('vit_ti16', batch_size=4 * micro, grad_accum_steps=2)  # the user's value
    assert resolve(kept, _host()).grad_accum_steps == 2
    whole = _config('vit_ti16', batch_size=4 * micro)
    whole.runtime.micro_batch_size = 0
    assert resolve(whole, _host()).grad_accum_steps == 1
    gan = _config('dcgan', task='gan', batch_size=4 * micro)
    gan.runtime.micro_batch_size = micro
    assert resolve(gan, _host()).grad_accum_steps == 1  # its own two-network step


def test_allocator_settings_for_measured_families_keep_the_user_s_values():
    assert runtime.cpu_malloc_env('resnet', ZEN4) == runtime.MALLOC_ENV
    assert runtime.cpu_malloc_env('vit', ZEN4) == {} and runtime.cpu_malloc_env(None, ZEN4) == {}
    assert dict(resolve(_config('resnet18'), _host()).malloc_env) == runtime.MALLOC_ENV
    assert resolve(_config('vit_ti16'), _host()).malloc_env == ()
    chosen = resolve(_config('resnet18'), _host(environ_malloc={'MALLOC_ARENA_MAX': '4'}))
    assert dict(chosen.malloc_env)['MALLOC_ARENA_MAX'] == '4'
    assert 'kept' in chosen.reason('malloc')
    assert resolve(_config('resnet18'), _host(libc='musl')).malloc_env == ()


def test_bad_runtime_values_name_the_choices():
    for key, value, choices in (
        ('conv_backend', 'mkl', 'onednn'),
        ('matmul_backend', 'mkl', 'onednn'),
        ('xla_flags', 'fast', 'auto'),
        ('malloc', 'jemalloc', 'heap'),
        ('attention', 'flash', 'cudnn'),
    ):
        config = _config()
        config.runtime[key] = value
        with pytest.raises(ConfigError, match=choices):
            validate(config)
    config = _config()
    config.runtime.cpu_devices = 0
    with pytest.raises(ConfigError, match='cpu_devices'):
        validate(config)


def test_apply_sets_flags_before_jax_starts_and_records_what_it_could_not(monkeypatch):
    monkeypatch.setattr(os, 'environ', os.environ.copy())  # what it sets must not outlive the test
    monkeypatch.delenv('XLA_FLAGS', raising=False)
    previous = switch.current()
    try:
        config = _config('cnn')
        applied = runtime.apply(resolve(config, _host()), starting_process=True)
        assert os.environ['XLA_FLAGS'] == ' '.join(applied.xla_flags)
        assert switch.conv_backend() == 'xla'
        monkeypatch.delenv('XLA_FLAGS')
        late = runtime.apply(resolve(config, _host()), starting_process=False)
        assert late.xla_flags == () and 'not applied' in late.reason('xla_flags')
        assert 'XLA_FLAGS' not in os.environ
    finally:
        switch.set_kernels(conv=previous.conv, attention=previous.attention)


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_apply_restarts_once_when_allocator_settings_are_missing(monkeypatch):
    monkeypatch.setattr(os, 'environ', os.environ.copy())
    calls = []
    monkeypatch.setattr(os, 'execv', lambda path, argv: calls.append(argv))
    for name in runtime.MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    previous = switch.current()
    try:
        chosen = resolve(_config('resnet18'), _host())
        runtime.apply(chosen, starting_process=True, restart_command=['python', 'x'])
        assert calls == [['python', 'x']]
        assert all(os.environ[k] == v for k, v in runtime.MALLOC_ENV.items())
        again = runtime.apply(chosen, starting_process=True, restart_command=['python', 'x'])
        assert len(calls) == 1 and dict(again.malloc_env) == runtime.MALLOC_ENV  # in force now
    finally:
        switch.set_kernels(conv=previous.conv, attention=previous.attention)


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_restarted_process_runs_the_same_command_with_the_settings():
    env = {k: v for k, v in os.environ.items() if k not in runtime.MALLOC_ENV}
    env['JAX_PLATFORMS'] = 'cpu'
    script = (
        'import os, sys; from train import runtime; '
        'from tests.test_runtime import _config, _host; '
        "print('start', os.environ.get('MALLOC_MMAP_MAX_'), sys.argv[1:], flush=True); "
        "chosen = runtime.resolve(_config('resnet18'), _host()); "
        'runtime.apply(chosen, starting_process=True, '
        "restart_command=[sys.executable, *sys.orig_argv[1:]]); print('running')"
    )
    out = subprocess.run(
        [sys.executable, '-c', script, 'arg'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out == ["start None ['arg']", "start 0 ['arg']", 'running']
