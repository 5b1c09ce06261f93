"""train.cpu_defaults: the XLA CPU flags the trainer adds, per model family and dtype."""

import pytest

from train import cpu_defaults
from train.cpu_defaults import YNN_FUSION_FLAG, configure_cpu_xla_flags, cpu_xla_flags


def test_flags_per_family_and_dtype():
    default = [f'{YNN_FUSION_FLAG}={cpu_defaults.DEFAULT_YNN_FUSION}']
    assert cpu_xla_flags() == cpu_xla_flags('resnet', 'float32') == default
    assert cpu_xla_flags('vit', 'bfloat16') == cpu_xla_flags('rnn', 'float32') == default
    vit = cpu_xla_flags('vit', 'float32')
    assert vit != default and '-individual_dot' in vit[0] and '-individual_convolution' in vit[0]
    for (family, dtype), fusion in cpu_defaults.YNN_FUSION_BY_FAMILY_AND_DTYPE.items():
        assert cpu_xla_flags(family, dtype) == [f'{YNN_FUSION_FLAG}={fusion}']


@pytest.fixture
def cpu_host(monkeypatch):
    monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
    monkeypatch.delenv('XLA_FLAGS', raising=False)
    monkeypatch.setattr('jaxlib.version.__version__', '0.10.2')
    return monkeypatch


def test_configure_adds_the_family_s_flags_once(cpu_host):
    import os
    assert configure_cpu_xla_flags(True, family='vit', dtype='float32') == \
        cpu_xla_flags('vit', 'float32')
    assert os.environ['XLA_FLAGS'] == cpu_xla_flags('vit', 'float32')[0]
    assert configure_cpu_xla_flags(True, family='resnet') == []  # the user's (first) value stays
    assert os.environ['XLA_FLAGS'] == cpu_xla_flags('vit', 'float32')[0]


def test_configure_adds_nothing_when_off_or_unmeasured(cpu_host):
    import os
    assert configure_cpu_xla_flags(False) == [] and 'XLA_FLAGS' not in os.environ
    cpu_host.setattr('jaxlib.version.__version__', '0.11.0')
    assert configure_cpu_xla_flags(True) == [] and 'XLA_FLAGS' not in os.environ


def test_micro_batches_per_family_batch_and_devices():
    micro = cpu_defaults.MICRO_BATCH_BY_FAMILY['vit']
    assert cpu_defaults.cpu_grad_accum_steps('vit', 8 * micro, 1) == 8
    assert cpu_defaults.cpu_grad_accum_steps('vit', 8 * micro, 2) == 4  # per device
    assert cpu_defaults.cpu_grad_accum_steps('vit', micro, 1) == 1  # already one micro-batch
    assert cpu_defaults.cpu_grad_accum_steps('vit', 8 * micro + 2, 1) == 1  # would not split
    assert cpu_defaults.cpu_grad_accum_steps('resnet', 1024, 1) == 1  # batch norm: never
    assert cpu_defaults.cpu_grad_accum_steps(None, 1024, 1) == 1


def _config(model: str, **fields):
    from train.config import default_config, model_config
    config = default_config()
    config.model = model_config(model)
    config.update(fields)
    return config


def test_configure_micro_batches_only_where_measured_and_asked(cpu_host):
    import jax
    micro = cpu_defaults.MICRO_BATCH_BY_FAMILY['vit']
    batch = 4 * micro * jax.device_count()
    config = _config('vit_ti16', batch_size=batch)
    assert cpu_defaults.configure_cpu_micro_batches(config, True, 'vit') == 4
    assert config.grad_accum_steps == 4
    kept = _config('vit_ti16', batch_size=batch, grad_accum_steps=2)  # the user's value stays
    assert cpu_defaults.configure_cpu_micro_batches(kept, True, 'vit') == 2
    off = _config('vit_ti16', batch_size=batch)
    assert cpu_defaults.configure_cpu_micro_batches(off, False, 'vit') == 1
    assert off.grad_accum_steps == 1
    cnn = _config('resnet18', batch_size=batch)
    assert cpu_defaults.configure_cpu_micro_batches(cnn, True, 'resnet') == 1
    cpu_host.setattr('jaxlib.version.__version__', '0.11.0')
    assert cpu_defaults.configure_cpu_micro_batches(_config('vit_ti16', batch_size=batch),
                                                    True, 'vit') == 1


def test_malloc_settings_only_for_measured_families():
    assert cpu_defaults.cpu_malloc_env('resnet') == cpu_defaults.MALLOC_ENV
    assert cpu_defaults.cpu_malloc_env('language_model') == cpu_defaults.MALLOC_ENV
    assert cpu_defaults.cpu_malloc_env('vit') == {}  # measured slower with them
    assert cpu_defaults.cpu_malloc_env(None) == {}


def test_restart_replaces_the_process_only_when_a_setting_is_missing(cpu_host):
    import os
    import platform
    if platform.libc_ver()[0] != 'glibc':
        pytest.skip('glibc only')
    cpu_host.setattr(os, 'environ', os.environ.copy())  # what it sets must not outlive the test
    calls = []
    cpu_host.setattr(os, 'execv', lambda path, argv: calls.append(argv))
    for name in cpu_defaults.MALLOC_ENV:
        cpu_host.delenv(name, raising=False)
    cpu_defaults.restart_with_cpu_malloc_env(True, 'vit', ['python', 'x'])
    cpu_defaults.restart_with_cpu_malloc_env(False, 'resnet', ['python', 'x'])
    assert calls == [] and 'MALLOC_ARENA_MAX' not in os.environ
    cpu_host.setenv('MALLOC_ARENA_MAX', '4')  # the user's value stays
    cpu_defaults.restart_with_cpu_malloc_env(True, 'resnet', ['python', 'x'])
    assert calls == [['python', 'x']]
    assert os.environ['MALLOC_ARENA_MAX'] == '4' and os.environ['MALLOC_MMAP_MAX_'] == '0'
    cpu_defaults.restart_with_cpu_malloc_env(True, 'resnet', ['python', 'x'])
    assert len(calls) == 1  # everything set now: no second restart


def test_restarted_process_runs_the_same_command_with_the_settings(tmp_path):
    import os
    import platform
    import subprocess
    import sys
    if platform.libc_ver()[0] != 'glibc':
        pytest.skip('glibc only')
    env = {k: v for k, v in os.environ.items() if k not in cpu_defaults.MALLOC_ENV}
    env['JAX_PLATFORMS'] = 'cpu'
    script = ("import os, sys; from train.cpu_defaults import restart_with_cpu_malloc_env; "
              "print('start', os.environ.get('MALLOC_MMAP_MAX_'), sys.argv[1:], flush=True); "
              "restart_with_cpu_malloc_env(True, 'resnet'); print('running')")
    out = subprocess.run([sys.executable, '-c', script, 'arg'], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out == ["start None ['arg']", "start 0 ['arg']", 'running']


def test_conv_backend_per_family_unless_the_user_chose(monkeypatch):
    import os
    monkeypatch.setattr(os, 'environ', os.environ.copy())  # what it sets must not outlive the test
    monkeypatch.delenv('DEEPNETS_CPU_CONV', raising=False)
    assert cpu_defaults.configure_cpu_conv_backend(True, 'resnet') is None  # oneDNN's default
    assert 'DEEPNETS_CPU_CONV' not in os.environ
    assert cpu_defaults.configure_cpu_conv_backend(False, 'cnn') is None
    assert cpu_defaults.configure_cpu_conv_backend(True, 'cnn') == 'xla'
    assert os.environ['DEEPNETS_CPU_CONV'] == 'xla'
    monkeypatch.setenv('DEEPNETS_CPU_CONV', 'onednn')
    assert cpu_defaults.configure_cpu_conv_backend(True, 'cnn') is None
    assert os.environ['DEEPNETS_CPU_CONV'] == 'onednn'
