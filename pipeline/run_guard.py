"""What keeps a training run safe: a model-dir lock, up-front checks of the
directories it writes, a SIGTERM watcher, atomic file writes, and the
checkpoint quarantine and clean-up."""

import errno
import fcntl
import json
import os
import shutil
import signal
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


class PreemptionWatcher:
  """Turns SIGTERM into a request the training loop honours between loops.

  The loop saves a checkpoint at the current step and exits cleanly, so a
  scheduler's preemption loses no step. (A handler of our own rather than
  `tf.distribute.experimental.PreemptionCheckpointHandler`: that one needs
  a cluster coordination service, and the trainer already owns the loop,
  the checkpoint manager and the summary writers it must flush.)
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = None
    self._signals = signals
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name

  def __enter__(self):
    for sig in self._signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


def write_atomic(path, text):
  """Writes `text` to `path` through a temporary file and a rename, so a
  reader (or a crash) never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


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
