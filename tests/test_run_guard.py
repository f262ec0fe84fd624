"""Tests of pipeline.core.run_guard: lock, writability, write failures,
checkpoint repair and quarantine."""

import os
import signal
import subprocess
import sys

import pytest

from pipeline.core import run_guard

_HOLD_LOCK = '''
import sys, time
sys.path.insert(0, sys.argv[2])
from pipeline.core import run_guard
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


def test_a_refused_block_removes_the_empty_directories_it_made(tmp_path):
  (tmp_path / 'old').mkdir()
  made, kept, old = (tmp_path / 'a' / 'b' / 'run', tmp_path / 'k' / 'run',
                     tmp_path / 'old')
  with pytest.raises(KeyboardInterrupt):
    with run_guard.removed_if_unused(str(made), str(kept), str(old), None):
      for directory in (made, kept, old):
        run_guard.check_writable(str(directory), '--x', min_free_bytes=0)
      (kept / 'file').write_text('a file: kept')
      raise KeyboardInterrupt
  # Made and empty: gone with the parents made for it; the rest stay.
  assert not (tmp_path / 'a').exists()
  assert (kept / 'file').exists() and old.is_dir()
  # A block that ends well keeps what it made.
  with run_guard.removed_if_unused(str(made)):
    run_guard.check_writable(str(made), '--x', min_free_bytes=0)
  assert made.is_dir()

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


def test_write_failure_tells_room_and_rights_from_other_errors():
  import errno  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  full = OSError(errno.ENOSPC, 'No space left on device')
  assert run_guard.write_failure(full) == 'No space left on device'
  assert run_guard.write_failure(OSError(errno.ENOENT, 'gone')) is None
  save = tf.errors.ResourceExhaustedError(
      None, None, 'ckpt-4_temp/part-00000; No space left on device')
  assert run_guard.write_failure(save) == 'No space left on device'
  oom = tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating')
  assert run_guard.write_failure(oom) is None


def _fake_checkpoints(directory, *steps):
  for step in steps:
    for suffix in ('.index', '.data-00000-of-00001'):
      (directory / f'ckpt-{step}{suffix}').write_text('x')


def _listed(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(directory),
                                       max_to_keep=5)
  return [os.path.basename(p) for p in manager.checkpoints]


@pytest.mark.parametrize('state', [
    None,                                         # no state file at all
    b'garbage \x00\xff not a text proto {{',      # unreadable
    # What update_checkpoint_state wrote before: no timestamps.
    b'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n',
    # Lists a checkpoint that is gone, misses one that is there.
    b'model_checkpoint_path: "ckpt-8"\nall_model_checkpoint_paths: "ckpt-8"\n'
    b'all_model_checkpoint_timestamps: 5.0\nlast_preserved_timestamp: 1.0\n',
])
def test_repair_lists_exactly_the_checkpoints_on_disk(tmp_path, state):
  _fake_checkpoints(tmp_path, 2, 4, 10)
  if state is not None:
    (tmp_path / 'checkpoint').write_bytes(state)
  try:  # The defect: a bare manager lists fewer, or fails outright.
    assert _listed(tmp_path) != ['ckpt-2', 'ckpt-4', 'ckpt-10']
  except UnicodeDecodeError:
    pass
  repaired = run_guard.repair_checkpoint_state(str(tmp_path))
  assert [os.path.basename(p) for p in repaired] == [
      'ckpt-2', 'ckpt-4', 'ckpt-10']
  assert _listed(tmp_path) == ['ckpt-2', 'ckpt-4', 'ckpt-10']
  # Relative names: the run directory can move.
  assert str(tmp_path) not in (tmp_path / 'checkpoint').read_text()
  if state and state.startswith(b'garbage'):
    assert (tmp_path / 'checkpoint.corrupt-1').read_bytes() == state
  # A second call finds nothing to change.
  before = (tmp_path / 'checkpoint').read_text()
  run_guard.repair_checkpoint_state(str(tmp_path))
  assert (tmp_path / 'checkpoint').read_text() == before


def test_repair_of_a_directory_without_checkpoints(tmp_path):
  assert run_guard.repair_checkpoint_state(str(tmp_path / 'none')) == []
  (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "ckpt-3"\n')
  assert run_guard.repair_checkpoint_state(str(tmp_path)) == []
  assert not os.path.exists(tmp_path / 'checkpoint')


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
