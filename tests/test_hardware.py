"""Tests of pipeline.perf.hardware: what --precision=auto picks on which hardware."""

import pytest
import tensorflow as tf

from pipeline.perf import hardware

AVX2 = ['avx2', 'fma']
AVX512_BF16 = ['avx2', 'fma', 'avx512f', 'avx512_bf16']
AMX = ['avx2', 'avx512f', 'amx_tile', 'amx_bf16']


@pytest.mark.parametrize('features,devices,expected', [
    (AVX2, [], 'float32'),
    (AVX512_BF16, [], 'mixed_bfloat16'),
    (AMX, [], 'mixed_bfloat16'),
    (['avx512_fp16'], [], 'float32'),   # fp16 vectors alone: not picked
    (AVX2, [hardware.Gpu('A100', (8, 0))], 'mixed_bfloat16'),
    (AVX2, [hardware.Gpu('H100', (9, 0))] * 8, 'mixed_bfloat16'),
    (AMX, [hardware.Gpu('V100', (7, 0))], 'mixed_float16'),
    (AVX2, [hardware.Gpu('T4', (7, 5))], 'mixed_float16'),
    # A mixed machine is as fast as its slowest GPU allows.
    (AVX2, [hardware.Gpu('A100', (8, 0)), hardware.Gpu('T4', (7, 5))],
     'mixed_float16'),
    (AMX, [hardware.Gpu('P100', (6, 0))], 'float32'),
    (AMX, [hardware.Gpu('unknown', None)], 'float32'),
])
def test_auto_precision(features, devices, expected):
  precision, reason = hardware.auto_precision(features, devices)
  assert precision == expected
  assert reason


def test_auto_precision_says_why():
  _, reason = hardware.auto_precision(AMX, [])
  assert 'amx_bf16' in reason
  _, reason = hardware.auto_precision(AVX2, [])
  assert 'emulated' in reason
  _, reason = hardware.auto_precision([], [hardware.Gpu('T4', (7, 5))])
  assert '7.5' in reason


def test_emulation_warning():
  warning = hardware.emulation_warning('mixed_bfloat16', AVX2, [])
  assert warning.startswith('--precision=mixed_bfloat16: ')
  assert 'emulated and slower than float32' in warning
  assert '\n' not in warning
  assert hardware.emulation_warning('mixed_bfloat16', AMX, []) is None
  assert hardware.emulation_warning('float32', AVX2, []) is None
  assert hardware.emulation_warning('mixed_float16', AVX2, []) is not None
  assert hardware.emulation_warning('mixed_float16', ['avx512_fp16'],
                                    []) is None
  assert hardware.emulation_warning(
      'mixed_bfloat16', AMX, [hardware.Gpu('T4', (7, 5))]) is not None
  assert hardware.emulation_warning(
      'mixed_float16', AVX2, [hardware.Gpu('T4', (7, 5))]) is None


def test_this_machine_is_described():
  assert set(hardware.cpu_features()) <= set(hardware.CPU_FEATURES)
  assert hardware.cpu_model()
  assert 'cores' in hardware.machine()
  precision, _ = hardware.auto_precision()
  assert precision in ('float32', 'mixed_bfloat16', 'mixed_float16')


ZEN5_FLAGS = ('flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni '
              'avx512_bf16 avx512vl\n')


@pytest.mark.parametrize('environ,expected', [
    ({}, ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16']),
    ({'ONEDNN_MAX_CPU_ISA': 'ALL'},
     ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16']),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX2'}, ['avx2', 'fma']),
    ({'ONEDNN_MAX_CPU_ISA': 'avx2_vnni'}, ['avx2', 'fma']),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX'}, []),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'}, ['avx2', 'fma', 'avx512f']),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_VNNI'},
     ['avx2', 'fma', 'avx512f', 'avx512_vnni']),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_BF16'},
     ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16']),
    # A cap above what the CPU has adds nothing.
    ({'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_AMX'},
     ['avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16']),
    # The older name works; the newer one wins where both are set.
    ({'DNNL_MAX_CPU_ISA': 'AVX2'}, ['avx2', 'fma']),
    ({'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE', 'DNNL_MAX_CPU_ISA': 'AVX2'},
     ['avx2', 'fma', 'avx512f']),
])
def test_an_isa_cap_hides_the_features_above_it(monkeypatch, environ,
                                                 expected):
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: ZEN5_FLAGS.splitlines())
  assert hardware.cpu_features(environ) == expected


def test_under_an_avx2_cap_auto_picks_float32_and_bf16_warns(monkeypatch):
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: ZEN5_FLAGS.splitlines())
  assert hardware.auto_precision(devices=[])[0] == 'mixed_bfloat16'
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  precision, reason = hardware.auto_precision(devices=[])
  assert precision == 'float32' and 'emulated' in reason
  assert 'under ONEDNN_MAX_CPU_ISA=AVX2' in reason
  assert hardware.emulation_warning('mixed_bfloat16', devices=[])
  assert '(ONEDNN_MAX_CPU_ISA=AVX2)' in hardware.machine()


def test_an_isa_cap_oneDNN_does_not_know_is_an_error_that_lists_the_known():
  with pytest.raises(ValueError, match=r'ONEDNN_MAX_CPU_ISA=AVX3 is not an '
                     r'ISA oneDNN knows; use one of SSE41, AVX, AVX2,.*ALL'):
    hardware.cpu_features({'ONEDNN_MAX_CPU_ISA': 'AVX3'})
  assert hardware.isa_cap({'ONEDNN_MAX_CPU_ISA': ' '}) is None
  assert hardware.isa_cap({'DNNL_MAX_CPU_ISA': 'default'}) is None


def test_xla_isa_cap_is_read_from_xla_flags_and_checked():
  assert hardware.xla_isa_cap({}) is None
  assert hardware.xla_isa_cap({'XLA_FLAGS': '--xla_cpu_max_isa=avx2'}) == 'AVX2'
  assert hardware.xla_isa_cap({'XLA_FLAGS': (
      '--xla_cpu_max_isa=AVX512 --xla_dump_to=/tmp/x '
      '--xla_cpu_max_isa=AVX')}) == 'AVX'
  with pytest.raises(ValueError, match=r'--xla_cpu_max_isa=AVX3 in XLA_FLAGS '
                     r'is not an ISA XLA knows; use one of SSE4_2, AVX, AVX2'):
    hardware.xla_isa_cap({'XLA_FLAGS': '--xla_cpu_max_isa=avx3'})


AVX2_FLAGS = 'flags\t\t: fpu sse4_2 avx avx2 fma\n'


@pytest.mark.parametrize('flags,environ,precision,blocked', [
    (ZEN5_FLAGS, {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, 'mixed_bfloat16', True),
    (ZEN5_FLAGS, {'DNNL_MAX_CPU_ISA': 'AVX'}, 'mixed_float16', True),
    (ZEN5_FLAGS, {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, 'float32', False),
    # At AVX512_CORE oneDNN still has (emulated) 16-bit kernels.
    (ZEN5_FLAGS, {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE'}, 'mixed_bfloat16',
     False),
    (ZEN5_FLAGS, {}, 'mixed_bfloat16', False),
    # On a real AVX2-only CPU TensorFlow's own kernels emulate 16 bits.
    (AVX2_FLAGS, {'ONEDNN_MAX_CPU_ISA': 'AVX2'}, 'mixed_bfloat16', False),
])
def test_a_cap_below_avx512_blocks_16_bit_math_on_an_avx512_cpu(
    monkeypatch, flags, environ, precision, blocked):
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: flags.splitlines())
  message = hardware.cap_blocks_16bit(precision, environ)
  assert bool(message) == blocked
  if blocked:
    variable, value = next(iter(environ.items()))
    assert message.startswith(f'--precision={precision} cannot run under '
                              f'{variable}={value} ')
    assert 'Use --precision=float32' in message and '\n' not in message
    assert hardware.cap_blocks_16bit(precision, environ, asked='X').startswith(
        'X cannot run under')


class _FakeStrategy:
  num_replicas_in_sync = 2

  class extended:  # pylint: disable=invalid-name
    worker_devices = ('/job:localhost/replica:0/task:0/device:CPU:0',
                      '/job:localhost/replica:0/task:0/device:CPU:1')


def test_device_line_says_why_no_gpu_is_used_and_how_to_get_one():
  line = hardware.device_line(_FakeStrategy(), visible=[],
                              built_with_cuda=False)
  assert line.startswith('_FakeStrategy over 2 replica(s): /job:localhost')
  assert 'no GPU is visible: this TensorFlow was built without CUDA' in line
  assert f'pip install "tensorflow[and-cuda]=={tf.__version__}"' in line
  line = hardware.device_line(_FakeStrategy(), visible=[],
                              built_with_cuda=True)
  assert 'TensorFlow has CUDA: check the driver with nvidia-smi' in line
  gpu = hardware.Gpu('NVIDIA A100-SXM4-40GB', (8, 0))
  line = hardware.device_line(_FakeStrategy(), visible=[gpu, gpu],
                              built_with_cuda=True)
  assert '2 GPU(s) visible (NVIDIA A100-SXM4-40GB), 0 used' in line


def test_device_line_of_this_machine_names_its_devices():
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  line = hardware.device_line(strategy)
  assert 'OneDeviceStrategy over 1 replica(s): /job:localhost' in line
  if not tf.config.list_physical_devices('GPU'):
    assert 'no GPU is visible' in line


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
