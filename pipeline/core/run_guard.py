"""What keeps a training run safe: a model-dir lock, up-front checks of the
directories it writes, and the checkpoint quarantine and clean-up. (Signals
are `pipeline.core.preemption`'s, whole-file writes `pipeline.core.atomic`'s.)"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time

from absl import logging
import tensorflow as tf

LOCK_FILE = '.lock'
# A run needs room for a few checkpoints of the paper's model (~100 MB each
# with Adam's slots) and its summaries.
MIN_FREE_BYTES = 512 * 1024 * 1024


class RunGuardError(RuntimeError):
  """A run cannot start safely (locked, unwritable or full directory)."""


class RunLock:
  """An exclusive lock on a model directory.

  `flock` on `<model_dir>/.lock`: the kernel drops it when the process ends,
  however it ends (kill -9 included), so a crashed run never leaves it stuck.
  The file records who holds it, for the message the next run shows.
  """

  def __init__(self, model_dir):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self._fd = None

  def acquire(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
      os.close(fd)
      raise RunGuardError(
          f'{os.path.dirname(self.path)} is in use by another trainer '
          f'({holder or "unknown process"}); stop it or pick another '
          '--model_dir.') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()} since '
              f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode(), 0)
    self._fd = fd
    return self

  def release(self):
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def check_writable(directory, what, min_free_bytes=MIN_FREE_BYTES):
  """Creates `directory` if needed and proves it writable and not full.

  Raises:
    RunGuardError: naming the directory, the flag (`what`) and the fix.
  """
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f'.write-probe-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
      raise RunGuardError(
          f'{what} {directory} is full ({e.strerror}); free space or pass '
          f'another {what}.') from None
    raise RunGuardError(
        f'{what} {directory} is not writable ({e.strerror}); fix its '
        f'permissions or pass another {what}.') from None
  free = shutil.disk_usage(directory).free
  if free < min_free_bytes:
    raise RunGuardError(
        f'{what} {directory} has {free // 2**20} MiB free; a run needs at '
        f'least {min_free_bytes // 2**20} MiB. Free space or pass another '
        f'{what}.')


@contextlib.contextmanager
def removed_if_unused(*directories):
  """For a block that may create `directories` (`check_writable`): when it
  raises (a refusal, a bad flag, bad data, Ctrl-C), each directory it
  created, and each parent it created on the way, is removed again if it
  is empty, so a command refused before its work leaves nothing behind.
  Directories that existed before, and anything holding a file, stay."""
  created = []
  for directory in filter(None, directories):
    path = top = os.path.abspath(directory)
    first_missing = None
    while not os.path.exists(top):
      first_missing = top
      parent = os.path.dirname(top)
      if parent == top:
        break
      top = parent
    if first_missing:
      created.append((path, first_missing))
  try:
    yield
  except BaseException:
    for path, first_missing in created:
      while True:
        try:
          os.rmdir(path)  # Only ever an empty directory.
        except OSError:
          break
        if path == first_missing:
          break
        path = os.path.dirname(path)
    raise


# What TensorFlow's file system errors say when a write fails for want of
# room or rights (a full disk during a checkpoint save raises
# ResourceExhaustedError, which is no OSError).
_WRITE_FAILURES = ('No space left on device', 'Disk quota exceeded',
                   'Read-only file system', 'Permission denied')
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                 errno.EPERM)


def write_failure(error):
  """Why a write failed for want of room or rights, or None when `error`
  (an OSError or a TensorFlow OpError) is something else."""
  if isinstance(error, OSError):
    return error.strerror if error.errno in _WRITE_ERRNOS else None
  if isinstance(error, tf.errors.OpError):
    for text in _WRITE_FAILURES:
      if text in error.message:
        return text
  return None


def read_metrics_history(path):
  """The `history` list of a run's metrics.json; [] when there is none.

  A file that cannot be parsed is moved aside (`metrics.json.corrupt-N`)
  with a warning, so it never stops a run from finishing.
  """
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      history = json.load(f).get('history', [])
    if not isinstance(history, list):
      raise ValueError('history is not a list')
    return history
  except (ValueError, AttributeError, UnicodeDecodeError) as e:
    aside = _free_name(path + '.corrupt')
    os.replace(path, aside)
    logging.warning('%s cannot be read (%s); moved it to %s and started a '
                    'new history.', path, e, aside)
    return []


def _free_name(prefix):
  """`prefix-N` for the smallest N that names nothing yet."""
  n = 1
  while os.path.exists(f'{prefix}-{n}'):
    n += 1
  return f'{prefix}-{n}'


def quiet_refused_restore(status, error=None):
  """Silences a refused restore: the refusal says what is wrong, and the
  "unrestored values" warnings TensorFlow logs when the restore's state is
  collected (at any later point, in a process that goes on even in front of
  the next run's log) would only blur that.

  A restore that fails inside `restore()` (a variable of another shape)
  returns no status; its state is then found in the error's traceback, where
  TensorFlow's restore keeps it (duck-typed: if a TensorFlow version keeps
  it elsewhere, the warnings come back, and tests/test_checkpoints.py and
  tests/test_export.py say so).
  """
  if status is not None:
    status.expect_partial()
  traceback = error.__traceback__ if error is not None else None
  while traceback is not None:
    for value in traceback.tb_frame.f_locals.values():
      if (type(value).__name__ == '_CheckpointRestoreCoordinator' and
          hasattr(value, 'expect_partial')):
        value.expect_partial = True
    traceback = traceback.tb_next


def checkpoint_readable(path):
  """Whether every tensor of checkpoint `path` can be read back.

  Tells a damaged checkpoint (unreadable bytes) from an intact one that
  belongs to another model.
  """
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, RuntimeError, KeyError, IndexError,
          OSError):  # What damaged files raise.
    return False
  return True


def quarantine_checkpoint(path):
  """Moves a checkpoint's files into a new `<dir>/corrupt/<name>-N/`.

  The bad files are kept for inspection rather than deleted, and an earlier
  quarantine is never overwritten.

  Returns:
    The directory the files went to.
  """
  corrupt = os.path.join(os.path.dirname(path), 'corrupt')
  os.makedirs(corrupt, exist_ok=True)
  target = _free_name(os.path.join(corrupt, os.path.basename(path)))
  os.makedirs(target)
  for name in tf.io.gfile.glob(path + '.*'):
    shutil.move(name, os.path.join(target, os.path.basename(name)))
  return target


CHECKPOINT_STATE = 'checkpoint'
_CHECKPOINT_INDEX = re.compile(r'^ckpt-(\d+)\.index$')


def checkpoints_on_disk(directory):
  """The `ckpt-N` prefixes in `directory` that have an index file, oldest
  (lowest N) first."""
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    match = _CHECKPOINT_INDEX.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory,
                                                      name[:-len('.index')])))
  return [path for _, path in sorted(found)]


def _read_state(directory, on_disk):
  """The parsed state file of `directory`, or None when it is missing or
  unreadable; an unreadable one is moved aside as `checkpoint.corrupt-N`
  (`on_disk`: how many checkpoints will be listed instead, for the log)."""
  state_path = os.path.join(directory, CHECKPOINT_STATE)
  if not os.path.exists(state_path):
    return None
  try:
    # TensorFlow logs a parse error and returns None; bytes that are not
    # UTF-8 raise.
    state = tf.train.get_checkpoint_state(directory)
  except (UnicodeDecodeError, ValueError, tf.errors.OpError):
    state = None
  if state is None:
    aside = _free_name(state_path + '.corrupt')
    os.replace(state_path, aside)
    logging.warning('%s cannot be read; moved it to %s and listed the %d '
                    'checkpoints on disk instead.', state_path, aside,
                    on_disk)
  return state


def repair_checkpoint_state(directory):
  """Makes `directory/checkpoint` list exactly the checkpoints on disk.

  `tf.train.CheckpointManager` trusts that state file: a checkpoint it does
  not list with a timestamp is neither restored nor ever deleted, and an
  unreadable file reads as "no checkpoints", so a run would start again
  from step 1 beside intact checkpoints. The file is rewritten (atomically)
  whenever it is missing, unreadable, lacks timestamps, or lists other
  checkpoints than the disk holds; an unreadable one is kept as
  `checkpoint.corrupt-N`. Timestamps come from the file where it has them,
  else from each index file's modification time. Call it holding the run's
  lock, before a `CheckpointManager` is made.

  Returns:
    The checkpoint paths now listed, oldest first.
  """
  on_disk = checkpoints_on_disk(directory)
  state_path = os.path.join(directory, CHECKPOINT_STATE)
  state = _read_state(directory, len(on_disk))
  if not on_disk:
    if state is not None:
      os.remove(state_path)
    return []
  known = {}
  if state is not None:
    known = dict(zip((os.path.abspath(p)
                      for p in state.all_model_checkpoint_paths),
                     state.all_model_checkpoint_timestamps))
    listed = [os.path.abspath(p) for p in state.all_model_checkpoint_paths]
    latest = os.path.abspath(state.model_checkpoint_path)
    if (listed == [os.path.abspath(p) for p in on_disk] and
        len(known) == len(listed) and latest == listed[-1] and
        state.last_preserved_timestamp < min(known.values())):
      return on_disk
  stamps = [known.get(os.path.abspath(p)) or
            os.path.getmtime(p + '.index') for p in on_disk]
  # Timestamps must rise with the step, and every checkpoint must be newer
  # than the last "preserved" time, or the manager would neither restore
  # nor rotate it.
  for i in range(1, len(stamps)):
    stamps[i] = max(stamps[i], stamps[i - 1] + 1e-3)
  # Relative names, as the manager writes them: the run directory may move.
  names = [os.path.basename(p) for p in on_disk]
  tf.compat.v1.train.update_checkpoint_state(
      directory, names[-1], all_model_checkpoint_paths=names,
      all_model_checkpoint_timestamps=stamps,
      last_preserved_timestamp=stamps[0] - 1.0)
  if state is not None:
    logging.info('Rewrote %s to list the %d checkpoints on disk.',
                 state_path, len(on_disk))
  return on_disk


def clean_stale_checkpoint_temps(directory):
  """Removes what killed checkpoint saves left in `directory`.

  A save writes `ckpt-N_temp/` and renames its files into place; a process
  killed in between leaves the directory behind. Call it only while holding
  the run's lock: then no live writer owns such a directory.

  Returns:
    The paths removed.
  """
  removed = []
  if not os.path.isdir(directory):
    return removed
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.endswith('_temp') and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
      logging.info('Removed %s, left by a save that did not finish.', path)
  return removed
