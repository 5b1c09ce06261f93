"""train.runtime's choices follow the host CPU's properties (train.host_cpu): fabricated CPUs,
so the choices asserted never depend on the machine the tests run on."""

import dataclasses

import pytest

from tests.test_runtime import ZEN4, _config, _host
from train import host_cpu, runtime
from train.host_cpu import Cpu
from train.runtime import resolve

ZEN5 = dataclasses.replace(ZEN4, model='AMD Ryzen 9 9950X 16-Core Processor', physical_cores=16)
SAPPHIRE_RAPIDS = Cpu(
    arch='x86_64',
    vendor='GenuineIntel',
    model='Intel(R) Xeon(R) Platinum 8480+',
    flags=frozenset(host_cpu.CPU_FLAGS),  # AMX, AVX512-FP16, AVX512-BF16, AVX-512, AVX2
    physical_cores=56,
    logical_cores=112,
    l2_cache_bytes=2 << 20,
    l3_cache_bytes=105 << 20,
)
AVX2_LAPTOP = Cpu(
    arch='x86_64',
    vendor='GenuineIntel',
    model='Intel(R) Core(TM) i7-8565U CPU @ 1.80GHz',
    flags=frozenset({'avx2'}),
    physical_cores=4,
    logical_cores=8,
    l2_cache_bytes=256 << 10,
    l3_cache_bytes=8 << 20,
)
ONE_CORE = Cpu(
    arch='x86_64',
    vendor='GenuineIntel',
    model='Intel Xeon Processor (Icelake)',
    flags=frozenset({'avx2', 'avx512f'}),
    physical_cores=1,
    logical_cores=1,
    l2_cache_bytes=1280 << 10,
    l3_cache_bytes=16 << 20,
)
GRAVITON = Cpu(
    arch='aarch64',
    model='Neoverse-V1',
    physical_cores=4,
    logical_cores=4,
    l2_cache_bytes=1 << 20,
    l3_cache_bytes=32 << 20,
)
DEFAULT_FLAGS = (f'{runtime.YNN_FUSION_FLAG}={runtime.DEFAULT_YNN_FUSION}',)
MEASURED = 'measured on AMD Zen (avx512_bf16, no AMX)'


def _resolve(cpu: Cpu, model: str = 'vit_ti16', **fields) -> runtime.Runtime:
    return resolve(_config(model, **fields), _host(cpu=cpu))


def test_amd_zen_with_avx512_bf16_and_no_amx_takes_the_measured_tables():
    for cpu in (ZEN4, ZEN5):
        assert runtime.in_measured_class(cpu) and runtime.class_mismatch(cpu) == ''
        vit = _resolve(cpu, batch_size=128)
        assert vit.xla_flags == tuple(runtime.cpu_xla_flags('vit', 'float32', ZEN4))
        assert '-individual_dot' in vit.xla_flags[0] and MEASURED in vit.reason('xla_flags')
        assert vit.grad_accum_steps == 128 // runtime.MICRO_BATCH_BY_FAMILY['vit']
        assert MEASURED in vit.reason('grad_accum_steps')
        cnn = _resolve(cpu, 'cnn')
        assert cnn.conv_backend == 'xla' and MEASURED in cnn.reason('conv_backend')
        resnet = _resolve(cpu, 'resnet18', dtype='bfloat16')
        assert resnet.conv_backend == 'onednn' and 'AVX512-BF16' in resnet.reason('conv_backend')
        assert dict(resnet.malloc_env) == runtime.MALLOC_ENV
        assert MEASURED in resnet.reason('malloc')
        assert resnet.reason('bfloat16_products').startswith('AVX512-BF16 present')


def test_sapphire_rapids_with_amx_chooses_by_its_properties():
    assert not runtime.in_measured_class(SAPPHIRE_RAPIDS)
    vit = _resolve(SAPPHIRE_RAPIDS, batch_size=256)
    assert vit.xla_flags == DEFAULT_FLAGS  # no per-family extras off the measured class
    assert vit.reason('xla_flags').startswith('AMX-BF16 present')
    # 56 cores x 2 MiB of L2 on one device: the largest micro-batch of the range.
    assert vit.grad_accum_steps == 256 // runtime.MICRO_BATCH_RANGE[1]
    assert 'L2' in vit.reason('grad_accum_steps') and 'AMX-BF16' in vit.reason('grad_accum_steps')
    resnet = _resolve(SAPPHIRE_RAPIDS, 'resnet18', dtype='bfloat16')
    assert resnet.conv_backend == 'onednn'
    assert resnet.reason('conv_backend').startswith('AMX-BF16 present: oneDNN bfloat16')
    assert dict(resnet.malloc_env) == runtime.MALLOC_ENV
    assert 'not the measured AMD Zen' in resnet.reason('malloc')
    cnn = _resolve(SAPPHIRE_RAPIDS, 'cnn')  # XLA's for the cnn was measured on AMD only
    assert cnn.conv_backend == 'onednn' and 'AVX-512 present' in cnn.reason('conv_backend')
    assert 'measured class only' in cnn.reason('conv_backend')


def test_an_avx2_only_laptop_keeps_float32_speed_paths():
    resnet = _resolve(AVX2_LAPTOP, 'resnet18', dtype='bfloat16')
    assert resnet.conv_backend == 'xla' and 'no AVX-512 or AMX' in resnet.reason('conv_backend')
    assert resnet.reason('bfloat16_products').startswith('no AVX512-BF16: bfloat16 products upcast')
    f32 = _resolve(AVX2_LAPTOP, 'resnet18')
    assert f32.conv_backend == 'onednn' and f32.reason('conv_backend').startswith('AVX2 present')
    # YNNPACK's reduce fusions crash without AVX-512: off, whatever the config says.
    assert f32.xla_flags == (f'{DEFAULT_FLAGS[0]},-reduce',)
    assert f32.reason('xla_flags').startswith('no AVX512-BF16')
    assert 'reduce fusions off YNNPACK too (they crash without AVX-512)' in f32.reason('xla_flags')
    bare = _resolve(AVX2_LAPTOP, 'resnet18', runtime=dict(xla_flags='none'))
    assert bare.xla_flags == (f'{runtime.YNN_FUSION_FLAG}=-reduce',)
    assert 'kept, or programs crash here' in bare.reason('xla_flags')
    # 4 cores x 256 KiB of L2: micro-batches of 8.
    assert _resolve(AVX2_LAPTOP, batch_size=64).grad_accum_steps == 8
    assert runtime.micro_batch_choice(AVX2_LAPTOP, 'vit')[0] == 8


def test_a_one_core_host_scales_micro_batches_to_one_core_s_cache():
    size, why = runtime.micro_batch_choice(ONE_CORE, 'vit', devices=1)
    assert size == 8 and '1 core(s) x 1280 KiB L2 over 1 device(s)' in why
    config = _config('vit_ti16', batch_size=64)
    config.runtime.cpu_devices = 2
    chosen = resolve(config, _host(cpu=ONE_CORE))
    assert chosen.cpu_devices == 2  # the config's count is kept, and the reason says what it costs
    assert '1 logical core' in chosen.reason('cpu_devices')
    # Two devices share one core's L2: micro-batches of 4 of their 32 examples each.
    assert chosen.grad_accum_steps == 8 and 'over 2 device(s)' in chosen.reason('grad_accum_steps')
    assert _resolve(ONE_CORE, 'resnet18', dtype='bfloat16').conv_backend == 'onednn'
    assert 'emulates bfloat16' in _resolve(ONE_CORE, 'resnet18', dtype='bfloat16').reason(
        'conv_backend'
    )


def test_a_non_x86_host_keeps_xla_s_kernels_and_flags():
    vit = _resolve(GRAVITON, batch_size=128)
    assert vit.xla_flags == () and vit.reason('xla_flags').startswith('aarch64, not x86-64')
    assert vit.grad_accum_steps == 128 // 32  # 4 cores x 1 MiB of L2
    resnet = _resolve(GRAVITON, 'resnet18', dtype='bfloat16')
    assert resnet.conv_backend == 'xla' and 'x86-64 only' in resnet.reason('conv_backend')
    assert 'aarch64' in resnet.reason('bfloat16_products')
    assert dict(resnet.malloc_env) == runtime.MALLOC_ENV  # glibc's page faults, any CPU
    unknown = _resolve(Cpu(arch='x86_64'), batch_size=128)
    assert unknown.grad_accum_steps == 1 and 'unknown' in unknown.reason('grad_accum_steps')


def test_large_bfloat16_products_go_to_onednn_where_the_cpu_has_bfloat16_instructions():
    for cpu, reason in ((ZEN4, 'AVX512-BF16 present'), (SAPPHIRE_RAPIDS, 'AMX-BF16 present')):
        chosen = _resolve(cpu, 'char_lstm', dtype='bfloat16')
        assert chosen.matmul_backend == 'onednn'
        assert chosen.reason('matmul_backend').startswith(reason)
        assert _resolve(cpu, 'char_lstm').matmul_backend == 'xla'  # float32: XLA's
        # Several devices: XLA's, whose products are partitioned over the mesh.
        two = _config('char_lstm', dtype='bfloat16')
        two.runtime.cpu_devices = 2
        assert resolve(two, _host(cpu=cpu)).matmul_backend == 'xla'
        assert '2 devices' in resolve(two, _host(cpu=cpu)).reason('matmul_backend')
    laptop = _resolve(AVX2_LAPTOP, 'char_lstm', dtype='bfloat16')
    assert laptop.matmul_backend == 'xla' and 'no AVX512-BF16' in laptop.reason('matmul_backend')
    graviton = _resolve(GRAVITON, 'char_lstm', dtype='bfloat16')
    assert graviton.matmul_backend == 'xla' and 'x86-64 only' in graviton.reason('matmul_backend')
    gpu = resolve(_config('char_lstm', dtype='bfloat16'), _host('gpu'))
    assert gpu.matmul_backend == 'xla' and 'on gpu' in gpu.reason('matmul_backend')
    forced = _config('char_lstm')
    forced.runtime.matmul_backend = 'onednn'
    chosen = resolve(forced, _host(cpu=AVX2_LAPTOP))
    assert chosen.matmul_backend == 'onednn' and chosen.matmul_backend_required
    assert runtime.record(chosen)['matmul_backend'] == 'onednn'


def test_the_config_and_the_jaxlib_still_win_over_the_cpu():
    config = _config('resnet18', dtype='bfloat16')
    config.runtime.conv_backend = 'onednn'
    assert resolve(config, _host(cpu=AVX2_LAPTOP)).conv_backend == 'onednn'
    later = resolve(
        _config('vit_ti16', batch_size=256), _host(jaxlib='0.11.0', cpu=SAPPHIRE_RAPIDS)
    )
    assert later.xla_flags == () and later.grad_accum_steps == 1 and later.malloc_env == ()


def test_cpu_choices_give_every_choice_with_its_reason():
    choices = runtime.cpu_choices('vit', 'bfloat16', cpu=AVX2_LAPTOP)
    assert set(choices) == {
        'xla_flags',
        'conv_backend',
        'matmul_backend',
        'malloc',
        'micro_batch_size',
        'bfloat16_products',
    }
    assert choices['micro_batch_size'] == runtime.micro_batch_choice(AVX2_LAPTOP, 'vit')
    assert all(reason for _, reason in choices.values())


def test_record_keeps_the_cpu_its_flags_and_every_reason():
    chosen = _resolve(SAPPHIRE_RAPIDS, 'resnet18', dtype='bfloat16')
    kept = runtime.record(chosen)
    assert kept['cpu'] == SAPPHIRE_RAPIDS.model
    assert kept['cpu_properties']['flags'] == list(host_cpu.CPU_FLAGS)
    assert kept['cpu_properties']['l2_cache_bytes'] == 2 << 20
    assert kept['cpu_class'].startswith('AMX-BF16 present')
    assert set(kept['reasons']) >= {'xla_flags', 'conv_backend', 'malloc', 'grad_accum_steps'}


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16 sha_ni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16 sha_ni
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha2 bf16
CPU implementer\t: 0x41

processor\t: 1
Features\t: fp asimd evtstrm aes sha2 bf16
CPU implementer\t: 0x41
"""


def test_cpuinfo_and_cache_sizes_are_parsed_and_missing_files_degrade(tmp_path):
    intel = host_cpu.parse_cpuinfo(X86_CPUINFO, 'x86_64')
    assert intel.vendor == 'GenuineIntel' and intel.model.endswith('8480+')
    assert intel.flags == {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile', 'avx512_fp16'}
    assert (intel.physical_cores, intel.logical_cores) == (1, 2)  # two threads of one core
    arm = host_cpu.parse_cpuinfo(ARM_CPUINFO, 'aarch64')
    assert arm.arch == 'aarch64' and not arm.x86_64 and arm.flags == frozenset()
    assert (arm.physical_cores, arm.logical_cores, arm.vendor) == (2, 2, '')
    for name, level, kind, size in (
        ('index0', 1, 'Data', '48K'),
        ('index1', 1, 'Instruction', '32K'),
        ('index2', 2, 'Unified', '2048K'),
        ('index3', 3, 'Unified', '107520K'),
    ):
        (tmp_path / name).mkdir()
        for field, value in (('level', level), ('type', kind), ('size', size)):
            (tmp_path / name / field).write_text(f'{value}\n')
    assert host_cpu.cache_sizes(tmp_path) == {1: 48 << 10, 2: 2 << 20, 3: 105 << 20}
    assert host_cpu.parse_cache_size('32M') == 32 << 20 and host_cpu.parse_cache_size('?') is None
    nowhere = host_cpu.read_cpu(tmp_path / 'no_cpuinfo', tmp_path / 'no_cache')
    assert nowhere.flags == frozenset() and nowhere.l2_cache_bytes is None
    assert nowhere.model and nowhere.logical_cores  # from the platform module and os
    with pytest.raises(ValueError, match='avx512_bf16'):
        intel.has('avx512bf16')


def test_only_cpus_without_avx512_need_the_crash_workaround_flags():
    assert runtime.required_xla_flags(AVX2_LAPTOP) == [f'{runtime.YNN_FUSION_FLAG}=-reduce']
    for cpu in (ZEN4, SAPPHIRE_RAPIDS, ONE_CORE, GRAVITON):
        assert runtime.required_xla_flags(cpu) == []
    assert _resolve(ZEN4, 'resnet18', runtime=dict(xla_flags='none')).xla_flags == ()


def test_an_avx2_only_amd_epyc_takes_the_vit_extras_measured_there_too():
    zen3 = dataclasses.replace(AVX2_LAPTOP, vendor='AuthenticAMD', model='AMD EPYC 7B13')
    assert runtime.in_avx2_measured_class(zen3) and not runtime.in_avx2_measured_class(AVX2_LAPTOP)
    vit = _resolve(zen3, batch_size=128)
    fusions = vit.xla_flags[0].split('=')[1].split(',')
    assert fusions == ['-individual_convolution', '-individual_dot', '-dot', '-reduce']
    assert vit.reason('xla_flags').startswith(f'measured on {runtime.AVX2_MEASURED_CLASS} too')
    assert _resolve(zen3, batch_size=128, dtype='bfloat16').xla_flags == (
        f'{DEFAULT_FLAGS[0]},-reduce',
    )
    assert _resolve(AVX2_LAPTOP, batch_size=128).xla_flags == (f'{DEFAULT_FLAGS[0]},-reduce',)
