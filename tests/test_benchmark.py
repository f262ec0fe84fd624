"""Tests of pipeline.benchmark on a tiny model (no timing is asserted)."""

import json
import os
import subprocess
import sys

from pipeline.perf import hardware
from pipeline.perf import profile_report

from conftest import REPO

TINY_FLAGS = ['--conv_filters=8', '--primary_channels=4', '--primary_dim=4',
              '--class_dim=4', '--decoder_units=16,32',
              '--synthetic_shape=20,20,1', '--synthetic_classes=4',
              '--synthetic_size=64,16', '--batch_size=8',
              '--steps_per_loop=2', '--strategy=one_device']


def test_command_writes_all_keys(tmp_path):
  out = tmp_path / 'bench.json'
  env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
  env.update(TF_CPP_MIN_LOG_LEVEL='2', TF_NUM_INTRAOP_THREADS='2',
             TF_NUM_INTEROP_THREADS='1')
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.benchmark', *TINY_FLAGS,
       '--what=input,train,inference,serving,matmul,layers', '--repeats=2',
       '--input_batches=5', '--inference_batch_size=10',
       f'--model_dir={tmp_path}/m', f'--output={out}',
       f'--trace_dir={tmp_path}/traces'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  for key in ('train_examples_per_second', 'inference_examples_per_second',
              'input_examples_per_second', 'matmul_gflops',
              'forward_flops_per_example', 'train_fraction_of_matmul_peak',
              'latency_batch1_ms', 'serving_examples_per_second',
              'serving_latency_batch1_ms', 'layer_seconds/conv1',
              'peak_rss_mb', 'tensorflow', 'precision',
              # With the class capsules compiled (in memory and exported).
              'inference_xla_examples_per_second', 'latency_xla_batch1_ms',
              'serving_xla_examples_per_second',
              'serving_xla_latency_batch1_ms',
              'inference_xla_fraction_of_matmul_peak',
              'serving_xla_fraction_of_matmul_peak'):
    assert key in figures, key
  # Fractions are of the peak of the model's own precision (float32 here).
  assert abs(figures['train_fraction_of_matmul_peak'] -
             figures['train_examples_per_second'] *
             figures['train_flops_per_example'] / 1e9 /
             figures['matmul_gflops']) < 1e-9
  # The thread pools' sizes it ran with are on record.
  assert figures['thread_environment'] == {'TF_NUM_INTRAOP_THREADS': '2',
                                           'TF_NUM_INTEROP_THREADS': '1'}
  # The CPU it ran on, and its 16-bit matmul features, are on record.
  assert 'cores' in figures['cpu']
  assert set(figures['cpu_features']) <= set(hardware.CPU_FEATURES)
  assert figures['input_examples_per_second'] > 0
  assert figures['train_examples_per_second'] > 0
  assert 'train_examples_per_second' in proc.stdout
  # One more run of each timing, traced where profile_report finds it.
  assert sorted(figures['traces']) == sorted(
      f'{kind}_b{b}' for kind in ('inference', 'inference_xla', 'serving',
                                  'serving_xla') for b in (1, 10)) + ['train']
  for name, path in figures['traces'].items():
    assert profile_report.latest_profile(
        str(tmp_path / 'traces' / name)) == path
  latency = profile_report.report(figures['traces']['serving_b1'])
  assert (latency['what'], latency['batch_size'], latency['steps']) == (
      'serving_b1', 1, 1)
  assert any(r['part'] == 'caps_net' for r in latency['parts'])
  train = profile_report.report(figures['traces']['train'])
  assert train['steps'] == 2 and train['batch_size'] == 8
  assert any(r['part'] == 'primary_capsules' and r['pass'] == 'backward'
             for r in train['parts'])


def test_scaling_runs_each_configuration(tmp_path):
  out = tmp_path / 'scaling.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.benchmark', *TINY_FLAGS, '--scaling',
       '--scaling_batches=4,8', '--scaling_iterations=1,2', '--repeats=1',
       f'--output={out}'], cwd=REPO, capture_output=True, text=True,
      timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(out.read_text())
  assert [r['batch_size'] for r in figures['by_batch']] == [4, 8]
  assert [r['routing_iterations']
          for r in figures['by_routing_iterations']] == [1, 2]
  assert all(r['peak_rss_mb'] > 0 for r in figures['by_batch'])
  assert 'peak_mb_per_example' in figures
  # What ran, as the other benchmark JSONs say it: the CPU, versions, the
  # precision and the flags each configuration's process had.
  assert figures['cpu'] and figures['tensorflow'] and figures['cpu_count']
  assert figures['precision'] == 'float32'
  assert '--repeats=1' in figures['flags']
  assert not any(f.startswith(('--scaling', '--output'))
                 for f in figures['flags'])


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
