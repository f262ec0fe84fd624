"""Tests of pipeline.core.preemption: SIGTERM and Ctrl-C become a clean stop,
a second Ctrl-C stops at once, even inside one long TensorFlow call."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.core import preemption

from conftest import REPO


def test_preemption_watcher_records_sigterm():
  with preemption.PreemptionWatcher() as watcher:
    assert watcher.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert watcher.requested == 'SIGTERM'
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_stopped_run_exits_with_the_status_a_shell_gives_its_signal():
  # Never 0: a stopped run is not a finished one (a scheduler restarts it,
  # `train && evaluate` does not evaluate it, an experiment does not score
  # it).
  assert preemption.exit_status('SIGTERM') == 143
  assert preemption.exit_status('SIGINT') == 130
  assert preemption.exit_status('peer') == 143


def test_a_second_sigterm_changes_nothing_a_second_ctrl_c_stops_at_once():
  # What the process had before (SIG_IGN in a job started in the
  # background of a shell, Python's default_int_handler otherwise).
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert watcher.requested == 'SIGTERM'
  with preemption.PreemptionWatcher() as watcher:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert watcher.requested == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
  assert signal.getsignal(signal.SIGINT) is before


# A child whose main thread is inside one long C call (as in a loop of
# training steps inside one TensorFlow call), where Python's own handler
# cannot run until it returns.
_BUSY = """
import sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
from pipeline.core import preemption

@tf.function
def steps(n):
  x = tf.fill([64, 64], 0.01)
  return tf.while_loop(lambda i, x: i < n,
                       lambda i, x: (i + 1, tf.tanh(tf.matmul(x, x))), [0, x])

steps(tf.constant(1))  # Traced here, so the call below is one C++ call.
with preemption.PreemptionWatcher():
  print('ready', flush=True)
  steps(tf.constant(10 ** 9))
print('the call ended', flush=True)
"""


def _busy_child():
  proc = subprocess.Popen([sys.executable, '-c', _BUSY, REPO],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  if proc.stdout.readline().strip() != 'ready':
    proc.kill()
    pytest.fail(f'the child did not start: {proc.communicate()[1][-2000:]}')
  time.sleep(0.5)  # Inside the long call.
  return proc


def test_a_signal_is_logged_as_it_arrives_even_inside_a_long_call():
  proc = _busy_child()
  try:
    proc.send_signal(signal.SIGTERM)
    time.sleep(3)
    assert proc.poll() is None  # The stop waits for the call to end.
  finally:
    proc.kill()
    err = proc.communicate()[1]
  # Logged by the watcher thread while the main thread was still busy.
  assert 'SIGTERM: stopping after the steps under way' in err


def test_a_second_ctrl_c_inside_a_long_call_stops_at_once():
  proc = _busy_child()
  try:
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:  # Never leave a busy child behind.
      proc.kill()
      proc.communicate()
  assert proc.returncode == 130, err[-2000:]
  assert preemption.INTERRUPTED in err
  assert 'the call ended' not in out


# A child whose main thread is where Python cannot raise: in a __del__
# (as in a weakref callback of the garbage collector), where an exception
# is printed as "Exception ignored" and swallowed.
_IN_DEL = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.core import preemption

class Slow:
  def __del__(self):
    time.sleep(2)

with preemption.PreemptionWatcher():
  print('ready', flush=True)
  for _ in range(60):
    Slow()
print('the loop ended', flush=True)
"""


def test_a_second_ctrl_c_that_python_swallows_still_stops_at_once():
  proc = subprocess.Popen([sys.executable, '-c', _IN_DEL, REPO],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == 'ready'
    time.sleep(0.5)  # Inside a __del__.
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 130, err[-2000:]
  assert preemption.INTERRUPTED in err
  assert 'Traceback' not in err and 'the loop ended' not in out


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
