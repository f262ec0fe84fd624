"""Faults injected for real into the real commands: kill -9, SIGTERM, a
corrupt checkpoint, a second trainer, concurrent exports, cyclic flagfiles."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import controller as controller_lib
from pipeline.core import trainer as trainer_lib

from conftest import REPO
from helpers import read_until, run_trainer, snapshot, tiny_config

TINY = ['--flagfile=configs/smoke.flags', '--conv_filters=8',
        '--primary_channels=4', '--class_dim=4', '--decoder_units=16,32',
        '--synthetic_shape=20,20,1', '--synthetic_size=128,32',
        '--batch_size=8', '--eval_batch_size=16', '--steps_per_loop=1',
        '--log_every=1', '--strategy=one_device', '--export_dir=',
        '--deterministic']
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')

# The children a test started; whatever way the test ends (a failed
# assertion, an expired `communicate` timeout), none is left running.
_STARTED = []


@pytest.fixture(autouse=True)
def _no_child_left_behind():
  yield
  while _STARTED:
    proc = _STARTED.pop()
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


def _popen(argv, **kwargs):
  proc = subprocess.Popen(argv, env=ENV, text=True, **kwargs)
  _STARTED.append(proc)
  return proc


def _start(model_dir, *args):
  return _popen(
      [sys.executable, '-m', 'pipeline.train', *TINY,
       f'--model_dir={model_dir}', *args], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_step(proc, step, timeout=300):
  """Reads the log until a line reports `step`; returns the lines read."""
  return read_until(proc, f' step {step}/', timeout)


def _run(model_dir, *args):
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', *TINY,
       f'--model_dir={model_dir}', *args], cwd=REPO, env=ENV,
      capture_output=True, text=True, timeout=600)
  return proc


def _weights(model_dir):
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(model_dir / 'checkpoints')))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith('model/')}


def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path):
  args = ['--train_steps=12', '--checkpoint_every=2', '--eval_every=100']
  straight = _run(tmp_path / 'straight', *args)
  assert straight.returncode == 0, straight.stderr[-3000:]
  kill_at = random.Random().randint(3, 10)
  proc = _start(tmp_path / 'killed', *args)
  _wait_for_step(proc, kill_at)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rerun = _run(tmp_path / 'killed', *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'Resumed from' in rerun.stderr, f'killed at step {kill_at}'
  a, b = _weights(tmp_path / 'straight'), _weights(tmp_path / 'killed')
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=1e-6,
                               err_msg=f'{key}, killed at step {kill_at}')


def test_sigterm_saves_and_exits_143_then_resumes(tmp_path):
  proc = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                '--eval_every=1000')
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-3000:]
  line = [l for l in out.splitlines() if l.startswith('Stopped by SIGTERM')]
  assert line, out[-3000:]
  stopped = int(line[0].split('at step ')[1].split(';')[0])
  assert stopped >= 3
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  assert latest.endswith(f'ckpt-{stopped}')
  resumed = _run(tmp_path, f'--train_steps={stopped + 2}',
                 '--checkpoint_every=1000', '--eval_every=1000')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'at step {stopped}.' in resumed.stderr


def test_a_repeated_sigterm_still_stops_cleanly(tmp_path):
  proc = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                '--eval_every=1000')
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 143, out[-3000:]
  assert 'Stopped by SIGTERM' in out


def test_ctrl_c_saves_and_a_second_one_stops_at_once(tmp_path):
  proc = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                '--eval_every=1000')
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, out[-3000:]
  assert 'Stopped by SIGINT' in out and 'Traceback' not in out
  import re  # pylint: disable=g-import-not-at-top
  stopped = int(re.search(r'Stopped by SIGINT at step (\d+);', out).group(1))
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith(
      f'ckpt-{stopped}')
  # Two Ctrl-Cs: the second ends the process at once, in one line.
  proc = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                '--eval_every=1000', '--steps_per_loop=1000',
                '--log_every=1000')
  read_until(proc, 'Resumed from')
  time.sleep(3)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 130, out[-3000:]
  assert 'Interrupted. Run the same command to resume' in out
  assert 'Traceback' not in out


def test_sigterm_during_the_final_export_finishes_it_and_exits_zero(
    tmp_path):
  args = ['--train_steps=3', '--checkpoint_every=1000', '--eval_every=1000',
          f'--export_dir={tmp_path}/exports']
  proc = _start(tmp_path / 'run', *args)
  read_until(proc, 'examples after 3 steps')  # The result line; export next.
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  assert 'Exported SavedModel to' in out
  assert os.listdir(tmp_path / 'exports') == ['1']
  # Started again, the finished run exports again but does not evaluate
  # (or write its last evaluation) twice.
  again = _run(tmp_path / 'run', *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Exported SavedModel to' in again.stdout
  import json  # pylint: disable=g-import-not-at-top
  history = json.loads((tmp_path / 'run' / 'metrics.json').read_text())[
      'history']
  assert [e['step'] for e in history] == [3]


def test_second_trainer_on_same_model_dir_is_refused(tmp_path):
  first = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                 '--eval_every=1000')
  try:
    _wait_for_step(first, 1)
    second = _run(tmp_path, '--train_steps=5')
    assert second.returncode != 0
    assert 'in use by another trainer (pid' in second.stderr
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The crashed first run leaves no stuck lock.
  third = _run(tmp_path, '--train_steps=2', '--checkpoint_every=1000',
               '--eval_every=1000')
  assert third.returncode == 0, third.stderr[-3000:]


@pytest.mark.parametrize('damage', ['truncate', 'garbage_index'])
def test_corrupt_latest_checkpoint_falls_back_and_is_kept(tmp_path, damage):
  run_trainer(trainer_lib.Trainer(tiny_config(tmp_path, train_steps=4)))
  ckpt_dir = tmp_path / 'checkpoints'
  latest = tf.train.latest_checkpoint(str(ckpt_dir))
  assert latest.endswith('ckpt-4')
  if damage == 'truncate':
    data = ckpt_dir / 'ckpt-4.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])
  else:
    (ckpt_dir / 'ckpt-4.index').write_bytes(b'\x00garbage' * 10)
  resumed = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=6))
  assert controller_lib.Controller(resumed).restore().endswith('ckpt-2')
  assert resumed.step == 2
  assert sorted(os.listdir(ckpt_dir / 'corrupt' / 'ckpt-4-1')) == [
      'ckpt-4.data-00000-of-00001', 'ckpt-4.index']
  assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith('ckpt-2')
  run_trainer(resumed)
  assert resumed.step == 6
  # A second quarantine lands beside the first, never over it.
  (ckpt_dir / 'ckpt-6.index').write_bytes(b'\x00garbage' * 10)
  again = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=6))
  assert controller_lib.Controller(again).restore().endswith('ckpt-4')
  assert sorted(os.listdir(ckpt_dir / 'corrupt')) == ['ckpt-4-1', 'ckpt-6-1']


def test_a_crash_after_a_quarantine_still_resumes(tmp_path):
  # Defect: the quarantine rewrote the state file without timestamps, the
  # manager then listed no checkpoint, and a crash before the next save
  # restarted the run from step 1 beside intact checkpoints.
  first = _run(tmp_path, '--train_steps=6', '--checkpoint_every=2',
               '--eval_every=100')
  assert first.returncode == 0, first.stderr[-3000:]
  data = tmp_path / 'checkpoints' / 'ckpt-6.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:100])
  proc = _start(tmp_path, '--train_steps=100000', '--checkpoint_every=1000',
                '--eval_every=1000')
  lines = _wait_for_step(proc, 5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert any('ckpt-4 at step 4' in l for l in lines), ''.join(lines[-20:])
  again = _run(tmp_path, '--train_steps=5', '--checkpoint_every=1000',
               '--eval_every=1000')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from' in again.stderr and 'ckpt-4 at step 4' in (
      again.stderr), again.stderr[-3000:]


def test_an_unreadable_state_file_does_not_restart_the_run(tmp_path):
  first = _run(tmp_path, '--train_steps=4', '--checkpoint_every=2',
               '--eval_every=100')
  assert first.returncode == 0, first.stderr[-3000:]
  (tmp_path / 'checkpoints' / 'checkpoint').write_bytes(b'\x00{{ garbage')
  again = _run(tmp_path, '--train_steps=5', '--checkpoint_every=1000',
               '--eval_every=1000')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'ckpt-4 at step 4' in again.stderr, again.stderr[-3000:]
  assert os.path.exists(tmp_path / 'checkpoints' / 'checkpoint.corrupt-1')


def test_weights_that_turn_non_finite_are_never_saved(tmp_path):
  # Finite gradients and a finite (absurd) rate: the update overflows.
  trainer = trainer_lib.Trainer(tiny_config(
      tmp_path, learning_rate=1e38, train_steps=4, checkpoint_every=1,
      steps_per_loop=1, log_every=1))
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match='NaN/Inf') as raised:
    run_trainer(trainer)
  latest = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  if latest is not None:
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
        assert np.all(np.isfinite(value)), (latest, name)
    assert latest in str(raised.value)
  else:
    assert 'No checkpoint was written' in str(raised.value)


def test_unwritable_dirs_fail_before_training(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  proc = _run(tmp_path / 'run', f'--export_dir={blocker}/exports',
              '--train_steps=2')
  assert proc.returncode != 0
  assert '--export_dir' in proc.stderr and 'not writable' in proc.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
  # A file where the run's checkpoints/ goes is found before training too.
  (tmp_path / 'run2').mkdir()
  (tmp_path / 'run2' / 'checkpoints').write_text('x')
  proc = _run(tmp_path / 'run2', '--train_steps=2')
  assert proc.returncode != 0
  assert "--model_dir's checkpoints/" in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_flagfile_that_includes_itself(tmp_path):
  flagfile = tmp_path / 'loop.flags'
  flagfile.write_text(f'--flagfile={flagfile}\n--batch_size=4\n')
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', f'--flagfile={flagfile}'],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'includes itself' in proc.stderr


_EXPORT = '''
import sys
sys.path.insert(0, sys.argv[3])
from pipeline.serving import publish
print(publish.export_from_checkpoint(sys.argv[1], sys.argv[2]))
'''


def test_concurrent_exports_never_share_a_version(tmp_path):
  run_trainer(trainer_lib.Trainer(tiny_config(tmp_path / 'run', train_steps=2)))
  procs = [_popen(
      [sys.executable, '-c', _EXPORT, str(tmp_path / 'run'),
       str(tmp_path / 'exp'), REPO], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE) for _ in range(3)]
  paths = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    paths.append(out.strip().splitlines()[-1])
  assert sorted(os.path.basename(p) for p in paths) == ['1', '2', '3']
  assert sorted(os.listdir(tmp_path / 'exp')) == ['1', '2', '3']



def test_resume_with_changed_flags_is_refused_by_the_command(tmp_path):
  first = _run(tmp_path, '--train_steps=2', '--checkpoint_every=2',
               '--eval_every=2')
  assert first.returncode == 0, first.stderr[-3000:]
  before = snapshot(tmp_path)
  for args, named in (
      (['--conv_filters=16', '--learning_rate=0.5'],
       '--learning_rate was 0.003, now 0.5; --conv_filters was 8, now 16'),
      (['--synthetic_shape=24,24,1'], '--synthetic_shape was'),
      (['--batch_size=4'], '--batch_size was 8, now 4')):
    refused = _run(tmp_path, '--train_steps=4', *args)
    assert refused.returncode != 0
    assert named in refused.stderr, refused.stderr[-3000:]
    assert 'Traceback' not in refused.stderr
    assert snapshot(tmp_path) == before
  resumed = _run(tmp_path, '--train_steps=4', '--checkpoint_every=2',
                 '--eval_every=2')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from' in resumed.stderr and 'ckpt-2' in resumed.stderr
  assert 'after 4 steps' in resumed.stdout


def test_data_errors_are_one_line_before_training(tmp_path):
  proc = _run(tmp_path, '--shift_pixels=20')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'Error: shift_pixels 20 (--shift_pixels) can move a whole 20x20 image')
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
  big = _run(tmp_path, '--batch_size=256')
  assert big.returncode == 1 and 'Traceback' not in big.stderr
  assert big.stderr.strip().splitlines()[-1] == (
      'Error: --batch_size=256 is larger than the 128 training examples of '
      'synthetic; use a smaller batch.')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
