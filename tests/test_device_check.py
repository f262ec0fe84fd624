"""Tests of pipeline.perf.device_check: the precisions it picks, and the real
command on this machine (2 virtual CPU replicas), passing and failing."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.perf import device_check
from pipeline.perf import hardware

from conftest import REPO

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
QUICK = ['--steps=2', '--repeats=1', '--nomatmul']


@pytest.mark.parametrize('features,gpus,expected', [
    (['avx2', 'fma'], [], ['float32']),
    (['avx2', 'avx512_bf16'], [], ['float32', 'mixed_bfloat16']),
    (['amx_bf16'], [], ['float32', 'mixed_bfloat16']),
    ([], [hardware.Gpu('V100', (7, 0))], ['float32', 'mixed_float16']),
    ([], [hardware.Gpu('A100', (8, 0)), hardware.Gpu('A100', (8, 0))],
     ['float32', 'mixed_bfloat16', 'mixed_float16']),
    # The slowest GPU decides; one of unknown capability gives float32.
    ([], [hardware.Gpu('A100', (8, 0)), hardware.Gpu('T4', (7, 5))],
     ['float32', 'mixed_float16']),
    ([], [hardware.Gpu('?', None)], ['float32']),
])
def test_native_precisions(features, gpus, expected):
  assert device_check.native_precisions(features, gpus) == expected


def _check(tmp_path):
  """Runs the command quickly; returns its report and the finished process."""
  out = tmp_path / 'check.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.perf.device_check', *QUICK,
       f'--output={out}'], cwd=REPO, env=ENV, capture_output=True,
      text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return json.loads(out.read_text()), proc


def test_the_command_checks_this_machine_and_writes_json(tmp_path):
  report, proc = _check(tmp_path)
  assert report['ok'] is True
  precisions = device_check.native_precisions()
  assert report['precisions'] == precisions
  assert set(report['checks']) == {
      *(f'train/{p}' for p in precisions), 'export_reload', 'resume'}
  for name in report['checks']:
    assert f'{name}: ok' in proc.stdout
  resume = report['checks']['resume']
  assert resume['replicas'] == 2 and resume['max_abs_weight_difference'] <= (
      device_check.RESUME_TOLERANCE)
  assert report['checks']['export_reload']['max_abs_difference'] <= (
      device_check.EXPORT_TOLERANCE)
  for key in ('cuda_build', 'cuda_version', 'cudnn_version', 'nvidia_driver',
              'gpus', 'cpu_features', 'device_line'):
    assert key in report, key
  bench = report['benchmark']
  for key in ('train_examples_per_second', 'train_step_seconds',
              'inference_examples_per_second', 'first_step_seconds',
              'peak_device_memory_mb'):
    assert bench[key] > 0, key
  assert 'replica(s)' in report['device_line']


@pytest.mark.skipif(not tf.config.list_physical_devices('GPU'),
                    reason='needs a GPU: none is visible to TensorFlow here')
def test_on_a_gpu_machine_the_report_names_each_gpu(tmp_path):
  report, _ = _check(tmp_path)
  assert report['cuda_build'] is True and report['cuda_version']
  assert report['gpus'] and all(
      gpu['name'] and gpu['compute_capability'] for gpu in report['gpus'])
  assert 'GPU(s) visible' in report['device_line']
  assert all(check['ok'] for check in report['checks'].values())


_FAILING = '''
import sys
from absl import app
from pipeline.perf import device_check
device_check.define_flags()
device_check.RESUME_TOLERANCE = -1.0  # No run can meet it.
sys.argv = ['device_check', '--steps=2', '--repeats=1', '--nomatmul']
app.run(device_check.main)
'''


def test_a_failed_check_is_named_and_exits_one():
  proc = subprocess.run([sys.executable, '-c', _FAILING], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'resume: FAILED: weights differ by' in proc.stdout
  assert 'export_reload: ok' in proc.stdout


_SIGNALLED = '''
import os, signal, sys, time
from absl import app
from pipeline.perf import device_check
device_check.define_flags()
real = device_check.check_precision
def signalled(*args):
  os.kill(os.getpid(), signal.SIGTERM)  # As a scheduler would, mid-check.
  time.sleep(0.2)
  return real(*args)
device_check.check_precision = signalled
sys.argv = ['device_check', '--steps=2', '--repeats=1', '--nomatmul',
            '--output=' + sys.argv[1]]
app.run(device_check.main)
'''


def test_a_sigterm_stops_the_check_without_judging_or_writing(tmp_path):
  # Its short training runs stop early on a signal; judged, they would
  # read as failures (or a resume compared with half a run).
  work = tmp_path / 'tmp'
  work.mkdir()
  out = tmp_path / 'check.json'
  proc = subprocess.run([sys.executable, '-c', _SIGNALLED, str(out)],
                        cwd=REPO, env=dict(ENV, TMPDIR=str(work)),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 143, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert ('Stopped by SIGTERM: no check was judged and no report written'
          in proc.stderr)
  assert 'FAILED' not in proc.stdout and 'Traceback' not in proc.stderr
  assert not out.exists()
  assert not [p for p in os.listdir(work) if p.startswith('device-check-')]

if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
