"""Tests of pipeline.hardware: what --precision=auto picks on which hardware."""

import pytest

from pipeline import hardware

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


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
