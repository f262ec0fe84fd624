"""Tests of pipeline.perf.timing (figures are checked for shape, never for speed)."""

import os

import pytest
import tensorflow as tf

from pipeline.core import children
from pipeline.core import trainer as trainer_lib
from pipeline.perf import timing

from helpers import tiny_config


def test_layer_timings_cover_every_part(tmp_path):
  trainer = trainer_lib.Trainer(tiny_config(tmp_path))
  timings = timing.layer_timings(trainer.model, 8, repeats=1)
  parts = ('conv1', 'primary_capsules', 'class_capsules', 'decoder',
           'adam_update')
  for part in parts:
    assert timings[f'layer_seconds/{part}'] > 0
  assert timings['layer_seconds/sum'] == pytest.approx(
      sum(timings[f'layer_seconds/{p}'] for p in parts))


def test_unknown_measurement(tmp_path):
  with pytest.raises(ValueError, match='--what takes'):
    timing.run_benchmarks(tiny_config(tmp_path), ['disk'])


def test_matmul_peak_skips_a_16_bit_type_an_isa_cap_blocks(monkeypatch):
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  figures = timing.bench_matmul(repeats=1, n=32, chain=2)
  assert figures['matmul_gflops'] > 0 and figures['matmul_bf16_gflops'] > 0
  assert not any(k.endswith('_skipped') for k in figures)
  if tf.config.list_physical_devices('GPU'):
    pytest.skip('A GPU runs the 16-bit matmuls whatever the CPU cap.')
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: [
      'flags\t\t: avx2 fma avx512f avx512_bf16'])
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  figures = timing.bench_matmul(repeats=1, n=32, chain=2)
  assert figures['matmul_gflops'] > 0
  assert 'matmul_bf16_gflops' not in figures
  assert figures['matmul_bf16_gflops_skipped'].startswith(
      'a bfloat16 matmul cannot run under ONEDNN_MAX_CPU_ISA=AVX2')


def test_print_table(capsys):
  timing.print_table({'a': 1.5, 'rows': [{'batch_size': 8, 'x': 2.0}]})
  out = capsys.readouterr().out
  assert 'a     1.5000' in out and 'batch_size=8  x=2' in out


def test_a_stopped_scaling_child_stops_the_benchmark_and_leaves_no_file(
    monkeypatch, tmp_path):
  made = []
  real_mkstemp = timing.tempfile.mkstemp
  def mkstemp(**kwargs):
    fd, path = real_mkstemp(dir=tmp_path, **kwargs)
    made.append(path)
    return fd, path
  monkeypatch.setattr(timing.tempfile, 'mkstemp', mkstemp)
  monkeypatch.setattr(timing.children, 'run', lambda cmd, **kw:
                      children.Finished(-15, ['SIGTERM'], '', ''))
  with pytest.raises(children.Stopped, match='batch 8, 3 routing') as caught:
    timing._child_train([], 8, 3)  # pylint: disable=protected-access
  assert caught.value.status == 143
  assert made and not os.listdir(tmp_path)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
