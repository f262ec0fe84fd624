"""Child processes that never outlive or get cut off by their parent.

`run` starts a command in a process group of its own and passes every
SIGTERM, Ctrl-C (SIGINT) or hang-up (as SIGTERM) that reaches the parent on
to it, once, then waits for it to end. A parent killed by the default
SIGTERM would leave its child running (an orphaned benchmark loads the CPU
under the next measurement; an orphaned training run goes on alone), and
`subprocess.run` kills its child 0.25 s after a Ctrl-C (a training run then
loses its clean stop and its steps since the last checkpoint). A child in
the parent's own group would get a terminal's Ctrl-C twice: once from the
terminal, once passed on, and a second Ctrl-C stops a training run at once.
"""

import dataclasses
import signal
import subprocess
from typing import List, Optional

# What reaches the parent, and what the child is sent for it.
FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT,
             signal.SIGHUP: signal.SIGTERM}


class Stopped(Exception):
  """A signal asked the parent to stop while its child ran; the child was
  told and has ended.

  Attributes:
    status: the exit status the parent should end with (128 + the signal's
      number, as a shell reports it: 143 for SIGTERM, 130 for Ctrl-C).
  """

  def __init__(self, message, status):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass
class Finished:
  """How a child ended.

  Attributes:
    returncode: its exit status (negative: the signal that killed it).
    received: the names of the signals the parent received while it ran
      (each was passed on), oldest first.
    stdout, stderr: its output when captured (`capture_output=True`).
  """
  returncode: int
  received: List[str]
  stdout: Optional[str] = None
  stderr: Optional[str] = None

  @property
  def stop_status(self):
    """The exit status the parent should end with because it was asked to
    stop (128 + the first signal passed on), or None."""
    if not self.received:
      return None
    return 128 + int(FORWARDED[signal.Signals[self.received[0]]])


def run(command, capture_output=False, **popen_kwargs) -> Finished:
  """Runs `command` to its end as described in the module; returns how it
  ended. Off the main thread, signals stay as they are."""
  received, child = [], []

  def forward(signum, frame):
    del frame
    received.append(signal.Signals(signum).name)
    if child and child[0].poll() is None:
      child[0].send_signal(FORWARDED[signum])

  previous = {}
  for signum in FORWARDED:
    try:
      previous[signum] = signal.signal(signum, forward)
    except ValueError:  # Not the main thread.
      pass
  if capture_output:
    popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
  try:
    child.append(subprocess.Popen(command, process_group=0, **popen_kwargs))
    for name in list(received):  # Arrived while the child was starting.
      child[0].send_signal(FORWARDED[signal.Signals[name]])
    stdout, stderr = child[0].communicate()
  finally:
    if child and child[0].poll() is None:  # An error in the parent itself.
      child[0].kill()
      child[0].wait()
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  return Finished(child[0].returncode, received, stdout, stderr)
