"""Preemption: SIGTERM and Ctrl-C become a clean stop between loops, with a
checkpoint; a second Ctrl-C stops at once."""

import os
import signal
import sys
import threading
import time

from absl import logging

# What a second Ctrl-C prints as it ends the process.
INTERRUPTED = ('Interrupted. Run the same command to resume from the latest '
               'checkpoint.')
# How long a second Ctrl-C waits for the main thread to raise
# KeyboardInterrupt before it ends the process itself (the main thread is
# inside one long TensorFlow call: a whole loop of steps).
HARD_STOP_SECONDS = 1.0


def exit_status(stopped_by):
  """The exit status of a run that stopped early, its checkpoint saved.

  128 plus the signal's number, as a shell reports a process that signal
  ended: 143 for SIGTERM (also what TensorFlow's own preemption handler
  exits with on GCE) and for a stop a peer worker's preemption asked for,
  130 for Ctrl-C. Never 0: a scheduler that restarts failed jobs, a
  `train && evaluate` chain, or `pipeline.research.experiment` must not
  take a run stopped half-way for a finished one.

  Args:
    stopped_by: `RunResult.preempted`: 'SIGTERM', 'SIGINT' or 'peer'.
  """
  return 128 + int(signal.SIGINT if stopped_by == 'SIGINT'
                   else signal.SIGTERM)


class PreemptionWatcher:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a request the training loop
  honours between loops.

  The loop saves a checkpoint at the current step and exits cleanly, so a
  scheduler's preemption loses no step. A second Ctrl-C stops at once.
  (A handler of our own rather than
  `tf.distribute.experimental.PreemptionCheckpointHandler`: that one needs
  a cluster coordination service, and the trainer already owns the loop,
  the checkpoint manager and the summary writers it must flush.)

  Python runs a signal's handler only when the main thread is back in
  Python, and two signals that arrive while it is inside one TensorFlow
  call (a loop of many steps) reach the handler once. So, on the main
  thread, a watcher thread also reads every signal from the interpreter's
  wakeup file descriptor as it arrives: it records and logs each at once,
  and a second Ctrl-C that the main thread does not turn into
  KeyboardInterrupt within HARD_STOP_SECONDS ends the process (exit status
  130, INTERRUPTED on stderr; the model directory's lock is released by the
  kernel and a half-written checkpoint is cleaned up at the next start).
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self.requested = None
    # Every signal received, in order.
    self.received = []
    self._signals = signals
    self._previous = {}
    self._handled = 0          # calls of the Python-level handler
    self._watching = False
    self._previous_hook = None
    self._pipe = None
    self._previous_fd = None
    self._thread = None

  @staticmethod
  def _say(name, signum):
    logging.warning(
        '%s: stopping after the steps under way, with a checkpoint%s.',
        name, ' (Ctrl-C again stops at once, losing the steps since the last '
        'checkpoint)' if signum == signal.SIGINT else '')

  def _handle(self, signum, frame):
    """The first signal asks for a clean stop; a repeated SIGTERM changes
    nothing (the stop is under way); a second Ctrl-C stops at once.

    It takes no lock and, while the watcher thread runs, logs nothing: a
    handler runs between any two lines of the main thread, which may hold
    the logging module's lock at that moment (the thread does the logging).
    """
    del frame
    name = signal.Signals(signum).name
    self._handled += 1
    first = self.requested is None
    if first:
      self.requested = name
    if not self._watching:
      self.received.append(name)
      if first:
        self._say(name, signum)
    if self._handled > 1 and signum == signal.SIGINT:
      # Where Python cannot raise (a weakref callback, a __del__), the
      # exception is swallowed: then the watcher ends the process.
      raise KeyboardInterrupt

  def _unraisable(self, unraisable):
    """Hides the KeyboardInterrupt of a second Ctrl-C that Python could
    not raise where the main thread was (the watcher ends the process
    within HARD_STOP_SECONDS); anything else goes to the previous hook."""
    if self._watching and unraisable.exc_type is KeyboardInterrupt:
      return
    self._previous_hook(unraisable)

  def _watch(self, read_fd):
    """The watcher thread: every signal as it arrives (see the class). It
    alone writes `received` while it runs, and it logs."""
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:
        return  # The watcher was left: its pipe closed.
      for signum in data:
        if signum not in self._signals:
          continue
        name = signal.Signals(signum).name
        first = not self.received
        self.received.append(name)
        if first:
          if self.requested is None:
            self.requested = name
          self._say(name, signum)
        elif signum == signal.SIGINT:
          self._stop_unless_unwound()

  def _stop_unless_unwound(self):
    """Ends the process unless the main thread's KeyboardInterrupt leaves
    the watched block within HARD_STOP_SECONDS."""
    deadline = time.monotonic() + HARD_STOP_SECONDS
    while time.monotonic() < deadline:
      if not self._watching:
        return
      time.sleep(0.02)
    if self._watching:
      print(INTERRUPTED, file=sys.stderr, flush=True)
      os._exit(130)  # pylint: disable=protected-access

  def __enter__(self):
    for sig in self._signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    if self._previous:
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      self._previous_fd = signal.set_wakeup_fd(write_fd,
                                               warn_on_full_buffer=False)
      self._pipe = (read_fd, write_fd)
      self._previous_hook = sys.unraisablehook
      sys.unraisablehook = self._unraisable
      self._watching = True
      self._thread = threading.Thread(target=self._watch, args=(read_fd,),
                                      daemon=True, name='preemption-watcher')
      self._thread.start()
    return self

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}
    if self._pipe is not None:
      self._watching = False
      sys.unraisablehook = self._previous_hook
      signal.set_wakeup_fd(self._previous_fd)
      read_fd, write_fd = self._pipe
      os.close(write_fd)  # The thread's read returns b'' and it ends.
      self._pipe = None
      self._thread.join(timeout=5)
      os.close(read_fd)
