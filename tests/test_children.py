"""Tests of pipeline.core.children: signals reach the child once, the parent
waits for it, and the parent's handlers come back."""

import os
import signal
import sys
import threading
import time

import pytest

from pipeline.core import children

# A child that reports what it receives, takes half a second to stop (as a
# training run saving its checkpoint does) and exits 7.
_CHILD = """
import os, signal, sys, time
got = []
def handle(signum, frame):
  got.append(signal.Signals(signum).name)
for s in (signal.SIGTERM, signal.SIGINT):
  signal.signal(s, handle)
print('group', os.getpgid(0) == os.getpid(), flush=True)
deadline = time.time() + 60
while not got and time.time() < deadline:
  time.sleep(0.01)
time.sleep(0.5)
print('got', ','.join(got), flush=True)
sys.exit(7)
"""


def _signal_self_soon(signum, delay=1.0):
  timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
  timer.start()
  return timer


@pytest.mark.parametrize('sent, passed_on, status', [
    (signal.SIGTERM, 'SIGTERM', 143), (signal.SIGINT, 'SIGINT', 130),
    (signal.SIGHUP, 'SIGTERM', 143)])
def test_a_signal_to_the_parent_reaches_the_child_once_and_is_waited_for(
    sent, passed_on, status):
  before = {s: signal.getsignal(s) for s in children.FORWARDED}
  _signal_self_soon(sent)
  started = time.time()
  finished = children.run([sys.executable, '-c', _CHILD],
                          capture_output=True)
  # The child stopped in its own time (its half second), not killed.
  assert finished.returncode == 7, finished.stderr
  assert time.time() - started >= 1.4
  # Its own process group (a terminal's Ctrl-C reaches only the parent),
  # and the signal exactly once.
  assert finished.stdout.splitlines() == ['group True', f'got {passed_on}']
  assert finished.received == [signal.Signals(sent).name]
  assert finished.stop_status == status
  assert {s: signal.getsignal(s) for s in children.FORWARDED} == before


def test_an_undisturbed_child_reports_its_own_status():
  finished = children.run([sys.executable, '-c',
                           'import sys; print("out"); sys.exit(3)'],
                          capture_output=True)
  assert (finished.returncode, finished.stdout, finished.received) == (
      3, 'out\n', [])
  assert finished.stop_status is None


def test_a_child_that_cannot_start_restores_the_handlers():
  before = {s: signal.getsignal(s) for s in children.FORWARDED}
  with pytest.raises(OSError):
    children.run(['/nonexistent/command'])
  assert {s: signal.getsignal(s) for s in children.FORWARDED} == before


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
