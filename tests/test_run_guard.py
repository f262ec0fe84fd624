"""Tests of pipeline.run_guard: lock, writability, SIGTERM, quarantine."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import run_guard

_HOLD_LOCK = '''
import sys, time
sys.path.insert(0, sys.argv[2])
from pipeline import run_guard
lock = run_guard.RunLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(60)
'''


def _holder(directory):
  proc = subprocess.Popen(
      [sys.executable, '-c', _HOLD_LOCK, str(directory),
       os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
      stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'locked'
  return proc


def test_lock_refuses_second_holder_and_dies_with_its_process(tmp_path):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(run_guard.RunGuardError,
                       match=f'in use by another trainer \\(pid {holder.pid}'):
      run_guard.RunLock(str(tmp_path)).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # kill -9 left the file behind, but not the lock.
  assert os.path.exists(tmp_path / run_guard.LOCK_FILE)
  with run_guard.RunLock(str(tmp_path)):
    pass


def test_check_writable(tmp_path):
  run_guard.check_writable(str(tmp_path / 'new' / 'dir'), '--model_dir')
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(run_guard.RunGuardError,
                     match='--export_dir .*file/sub is not writable'):
    run_guard.check_writable(str(blocker / 'sub'), '--export_dir')
  with pytest.raises(run_guard.RunGuardError, match='MiB free'):
    run_guard.check_writable(str(tmp_path), '--model_dir',
                             min_free_bytes=1 << 62)


def test_check_writable_names_a_full_disk(tmp_path, monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top
  real_open = builtins.open

  def full(path, *args, **kwargs):
    if '.write-probe-' in str(path):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', full)
  with pytest.raises(run_guard.RunGuardError,
                     match=r'--model_dir .* is full \(No space left on '
                     r'device\); free space or pass another --model_dir'):
    run_guard.check_writable(str(tmp_path), '--model_dir')


def test_preemption_watcher_records_sigterm():
  with run_guard.PreemptionWatcher() as watcher:
    assert watcher.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert watcher.requested == 'SIGTERM'
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_quarantine_keeps_files(tmp_path):
  for suffix in ('.index', '.data-00000-of-00001'):
    (tmp_path / f'ckpt-4{suffix}').write_text('x')
  (tmp_path / 'ckpt-2.index').write_text('y')
  aside = run_guard.quarantine_checkpoint(str(tmp_path / 'ckpt-4'))
  assert sorted(os.listdir(aside)) == ['ckpt-4.data-00000-of-00001',
                                       'ckpt-4.index']
  assert os.path.exists(tmp_path / 'ckpt-2.index')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
