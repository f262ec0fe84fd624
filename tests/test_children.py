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
# training run saving its checkpoint does) and exits 7. It creates the file
# named by its argument once its handlers are in place.
_CHILD = """
import os, signal, sys, time
got = []
def handle(signum, frame):
  got.append(signal.Signals(signum).name)
for s in (signal.SIGTERM, signal.SIGINT):
  signal.signal(s, handle)
print('group', os.getpgid(0) == os.getpid(), flush=True)
open(sys.argv[1], 'w').close()
deadline = time.time() + 60
while not got and time.time() < deadline:
  time.sleep(0.01)
time.sleep(0.5)
print('got', ','.join(got), flush=True)
sys.exit(7)
"""


def _signal_self_when_ready(signum, ready):
  """Signals this process once the child has made `ready` (its handlers
  are set): on a loaded machine a child can take longer than any fixed
  delay to start, and a signal before its handlers would kill it."""
  def wait_then_signal():
    deadline = time.time() + 120
    while not os.path.exists(ready) and time.time() < deadline:
      time.sleep(0.01)
    os.kill(os.getpid(), signum)
  thread = threading.Thread(target=wait_then_signal, daemon=True)
  thread.start()
  return thread


@pytest.mark.parametrize('sent, passed_on, status', [
    (signal.SIGTERM, 'SIGTERM', 143), (signal.SIGINT, 'SIGINT', 130),
    (signal.SIGHUP, 'SIGTERM', 143)])
def test_a_signal_to_the_parent_reaches_the_child_once_and_is_waited_for(
    sent, passed_on, status, tmp_path):
  before = {s: signal.getsignal(s) for s in children.FORWARDED}
  ready = str(tmp_path / 'ready')
  _signal_self_when_ready(sent, ready)
  finished = children.run([sys.executable, '-c', _CHILD, ready],
                          capture_output=True)
  stopped = time.time()
  # The child stopped in its own time (its half second after the signal),
  # not killed.
  assert finished.returncode == 7, finished.stderr
  assert stopped - os.path.getmtime(ready) >= 0.45
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
