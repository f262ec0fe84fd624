"""The profiler window of a run (`--profile_steps=first,last`).

The profiler traces steps [first, last] of the chief into the run's
`train/` TensorBoard directory (the Profile tab), and leaves beside the
trace the record `python -m pipeline.perf.profile_report` reads: which
steps it holds and what ran them.
"""

import json
import os

from absl import logging
import tensorflow as tf

# Beside each profiler trace: the steps it holds and what ran them.
PROFILE_RECORD = 'pipeline_steps.json'


def record_trace(logdir, record):
  """Writes `record` as PROFILE_RECORD beside the newest profiler trace that
  `tf.profiler.experimental.start(logdir)` wrote (`logdir/plugins/profile/
  <start time>/`), for `pipeline.perf.profile_report` to read."""
  root = os.path.join(logdir, 'plugins', 'profile')
  # Trace directories are named by their start time: the newest sorts last.
  runs = sorted(tf.io.gfile.listdir(root)) if tf.io.gfile.isdir(root) else []
  if not runs:
    logging.warning('The profiler wrote no trace under %s.', root)
    return None
  path = os.path.join(root, runs[-1].rstrip('/'))
  with tf.io.gfile.GFile(os.path.join(path, PROFILE_RECORD), 'w') as f:
    f.write(json.dumps(record, indent=2))
  return path


class ProfileWindow:
  """Starts and stops the profiler around steps [first, last].

  Args:
    logdir: where the trace goes (the run's `train/`).
    steps: `(first, last)`, or empty for no profiling.
    record: what PROFILE_RECORD says besides the steps (batch, model, ...).
  """

  def __init__(self, logdir, steps, record):
    self.logdir = logdir
    # The profiler starts after step first-1 and stops after step last.
    self.edges = [steps[0] - 1, steps[1]] if steps else []
    self.record = record
    self.active = False

  def boundaries(self, step):
    """The window's edges after `step`: loops end on them."""
    return [edge - step for edge in self.edges if edge > step]

  def before_loop(self, step):
    if self.edges and step == self.edges[0]:
      tf.profiler.experimental.start(self.logdir)
      self.active = True

  def after_loop(self, step, done):
    if self.active and (step >= self.edges[1] or done):
      self.stop()
      first = self.edges[0] + 1
      record_trace(self.logdir, dict(self.record, first_step=first,
                                     last_step=step))
      logging.info('Profiled steps %d-%d into %s (TensorBoard: Profile).',
                   first, step, self.logdir)

  def stop(self):
    if self.active:
      tf.profiler.experimental.stop()
      self.active = False
