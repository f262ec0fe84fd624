"""Tests of pipeline.perf.sitting: one benchmark sitting, judged against
Performance III's targets."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.perf import sitting

from conftest import REPO

TINY_FLAGS = ['--conv_filters=8', '--primary_channels=4', '--primary_dim=4',
              '--class_dim=4', '--decoder_units=16,32',
              '--synthetic_shape=20,20,1', '--synthetic_classes=4',
              '--synthetic_size=64,16', '--batch_size=8',
              '--inference_batch_size=8', '--repeats=1',
              '--strategy=one_device']
# Stands in for ../shared/bench/plain_capsnet.py: its RESULT line, with
# the figures and the ISA cap it was given.
FAKE_PLAIN = '''import os, sys
print("params: 1")
print("RESULT | plain_capsnet jit=caps | batch 100 | train %s ex/s (0.5 s/step)"
      " | infer %s ex/s (0.1 s/step) | tf 2.21.0 intra=0 inter=0"
      % (sys.argv[1], sys.argv[2]))
print("cap", os.environ.get("ONEDNN_MAX_CPU_ISA"), os.environ.get("XLA_FLAGS"))
'''


def _bench(precision, train, infer, xla=None, probe=10.0):
  return dict(precision=precision, train_examples_per_second=train,
              inference_examples_per_second=infer,
              inference_xla_examples_per_second=xla,
              autotune_probe_seconds=probe,
              train_fraction_of_matmul_peak=0.5)


def test_the_plain_scripts_result_line_is_read():
  out = ('params: 8215568\nRESULT | plain_capsnet jit=caps uhat=matmul '
         'stopgrad=False | batch 100 | train 112.9 ex/s (0.886 s/step) | '
         'infer 365.4 ex/s (0.274 s/step) | tf 2.21.0 intra=0 inter=0\n')
  assert sitting.plain_result(out) == (112.9, 365.4)
  with pytest.raises(sitting.SittingError, match='no `RESULT'):
    sitting.plain_result('Traceback ...')


def test_targets_met_and_missed():
  plain = [(100.0, 300.0), (110.0, 320.0)]
  good = sitting.judge(plain, _bench('mixed_bfloat16', 300.0, 900.0, 850.0),
                       _bench('mixed_bfloat16', 290.0, 880.0, 800.0, 0.3),
                       _bench('float32', 200.0, 600.0))
  assert good['met']
  assert good['ratios']['auto_train'] == [round(290 / 110, 3), 3.0]
  assert good['ratios']['auto_inference_xla'] == [2.5, 2.833]
  assert [t['target'].split(' ')[0] for t in good['targets']] == [
      'auto', 'auto', 'bf16', 'never', 'probe']
  # bf16 picked but under 1.8x the plain float32: that target alone fails.
  slow = sitting.judge(plain, _bench('mixed_bfloat16', 170.0, 900.0),
                       _bench('mixed_bfloat16', 180.0, 900.0, probe=0.3),
                       _bench('float32', 150.0, 600.0))
  assert not slow['met']
  assert [t['met'] for t in slow['targets']] == [True, True, False, True,
                                                 True]
  # float32 picked (no bf16 target); one pairing under 1.0x, a slow probe
  # and a cache that did not spare it.
  under = sitting.judge(plain, _bench('float32', 105.0, 400.0, probe=25.0),
                        _bench('float32', 120.0, 410.0, probe=3.0),
                        _bench('float32', 105.0, 400.0))
  assert [t['met'] for t in under['targets']] == [False, True, False, False]
  assert under['targets'][2]['ratio'] == [round(105 / 110, 3)]
  text = sitting.table(under)
  assert '| never below 1.0x in what auto picks | 0.95x | **no** |' in text
  assert '25.0 s; cached 3.00 s' in text
  # One pairing's ratio once, not as a span of two equal ends.
  assert '| 105.0: 0.95-1.05x |' in text


def test_a_busy_machine_is_refused_naming_what_runs(monkeypatch):
  monkeypatch.setattr(sitting, 'cpu_use', lambda seconds: (1.97, [
      (42, 197, 'python -m pipeline.train --model_dir=/var/tmp/run')]))
  with pytest.raises(sitting.SittingError,
                     match=r'other processes used 1.97 cores over the last '
                     r'2 s \(more than --max_busy=0.25\).*pid 42 at 197%: '
                     r'python -m pipeline.train'):
    sitting.check_idle(0.25)
  monkeypatch.setattr(sitting, 'cpu_use', lambda seconds: (0.03, []))
  assert sitting.check_idle(0.25) == 0.03


def test_a_process_that_has_ended_does_not_refuse_the_next_sitting(
    monkeypatch):
  # Two sittings back to back (docs/benchmark.md): a minute after the first
  # ends the 1-minute load average is still above 0.5. What counts is what
  # runs now.
  monkeypatch.setattr(sitting.os, 'getloadavg', lambda: (1.2, 1.1, 0.6))
  monkeypatch.setattr(sitting, 'cpu_use', lambda seconds: (0.01, []))
  sitting.check_idle(0.25)


def test_cpu_use_counts_a_spinning_process_now_and_not_once_it_ends():
  spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
  try:
    cores, processes = sitting.cpu_use(seconds=1.0)
  finally:
    spinner.kill()
    spinner.wait()
  # (It shares the cores with whatever else runs: a low bar.)
  assert cores > 0.1
  assert any(pid == spinner.pid and percent > 10 and 'while True' in command
             for pid, percent, command in processes), processes
  _, processes = sitting.cpu_use(seconds=0.5)
  assert spinner.pid not in [pid for pid, _, _ in processes]


def test_the_isa_cap_reaches_every_command():
  env = sitting.environment('AVX2', '/tmp/c.json')
  assert env['ONEDNN_MAX_CPU_ISA'] == 'AVX2'
  assert '--xla_cpu_max_isa=AVX2' in env['XLA_FLAGS'].split()
  assert env['CAPSNET_AUTOTUNE_CACHE'] == '/tmp/c.json'
  plain = sitting.environment(None, '/tmp/c.json')
  assert plain.get('ONEDNN_MAX_CPU_ISA') == os.environ.get(
      'ONEDNN_MAX_CPU_ISA')


def test_a_sitting_end_to_end(tmp_path):
  # The real benchmark on a tiny model, a stand-in plain script: every
  # command runs, each JSON and the log are written, and the judgement is
  # the stand-in's figures against the benchmark's.
  fake = tmp_path / 'plain.py'
  fake.write_text(FAKE_PLAIN)
  out = tmp_path / 'sit'
  out.mkdir()
  (out / 'autotune_cache.json').write_text('{"stale": 1}')
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.perf.sitting', f'--output_dir={out}',
       f'--plain_script={fake}', '--plain_args=0.5,1.0', '--max_busy=1000',
       *[f'--benchmark_flag={f}' for f in TINY_FLAGS]],
      cwd=REPO, capture_output=True, text=True, timeout=1200,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for name in ('auto_probe', 'auto_cached', 'float32_probe'):
    assert (out / f'{name}.json').exists(), name
  result = json.loads((out / 'sitting.json').read_text())
  assert result['met']
  assert result['load_average_at_start'] >= 0
  assert result['other_cores_busy_at_start'] >= 0
  assert result['figures']['plain_train'] == [0.5, 0.5]
  assert result['figures']['float32_train'] > 0.5
  # The sitting's own cache: emptied first, so the probe ran and was timed;
  # the cached run read it.
  probe = json.loads((out / 'auto_probe.json').read_text())
  assert probe['autotune']['policy'] == 'probe'
  assert result['figures']['cached_probe_seconds'] < result['figures'][
      'probe_seconds']
  assert 'stale' not in (out / 'autotune_cache.json').read_text()
  log = (out / 'sitting.log').read_text()
  assert log.count('### ') == 5 and 'pipeline.benchmark' in log
  assert '| target | measured | met |' in proc.stdout
  # A command that fails stops the sitting, naming it and the log.
  bad = subprocess.run(
      [sys.executable, '-m', 'pipeline.perf.sitting', f'--output_dir={out}',
       f'--plain_script={fake}', '--plain_args=0.5', '--max_busy=1000'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1
  assert 'failed (exit 1); its output is in' in bad.stderr
  assert 'Traceback' not in bad.stderr


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
