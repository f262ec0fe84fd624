"""The run's checkpoints: restored with quarantine, saved only when finite.

`tf.train.CheckpointManager` over the trainer's checkpoint (model,
optimizer, step, input position, wall time), opened after the state file is
repaired from what is on disk. A checkpoint whose files cannot be read is
moved aside into `checkpoints/corrupt/` and the one before it is tried; a
readable one that does not fit the model is another run's and is refused.
"""

import os

from absl import logging
import tensorflow as tf

from pipeline.core import run_guard
from pipeline.core import trainer as trainer_lib

CHECKPOINTS_DIR = 'checkpoints'
# The run's flagfile, named in the advice when a checkpoint is another run's.
FLAGS_FILE = 'flags.txt'


def warm_start_checkpoint(source):
  """The checkpoint `--warm_start=source` names (a run directory, its
  `checkpoints/` or a checkpoint path).

  Raises:
    run_guard.RunGuardError: when `source` holds no checkpoint.
  """
  if os.path.isdir(source):
    inner = os.path.join(source, CHECKPOINTS_DIR)
    path = tf.train.latest_checkpoint(inner if os.path.isdir(inner)
                                      else source)
    if path is None:
      raise run_guard.RunGuardError(
          f'--warm_start={source} holds no checkpoint. Pass a run '
          'directory written by pipeline.train, or a checkpoint path '
          '(.../checkpoints/ckpt-N).')
    return path
  if not tf.io.gfile.exists(source + '.index'):
    raise run_guard.RunGuardError(
        f'--warm_start={source} is neither a directory nor a checkpoint '
        '(no .index file). Pass a run directory written by '
        'pipeline.train, or a checkpoint path (.../checkpoints/ckpt-N).')
  return source


def check_warm_start(model_dir, source):
  """Refuses, before anything is written, a `--warm_start` that names no
  checkpoint when `model_dir` holds none yet (a run that resumes from its
  own checkpoints does not read it, so a moved source is fine then).

  Raises:
    run_guard.RunGuardError: as `warm_start_checkpoint`.
  """
  if source and not run_guard.checkpoints_on_disk(
      os.path.join(model_dir, CHECKPOINTS_DIR)):
    warm_start_checkpoint(source)


class Checkpoints:
  """Saves and restores a `Trainer`'s checkpoint under `work_dir`.

  Args:
    trainer: the `pipeline.core.trainer.Trainer` whose state is saved.
    work_dir: the run's directory (checkpoints go to its `checkpoints/`).
    max_to_keep: checkpoints kept on disk.
  """

  def __init__(self, trainer, work_dir, max_to_keep):
    self.trainer = trainer
    self.work_dir = work_dir
    self.directory = os.path.join(work_dir, CHECKPOINTS_DIR)
    self.max_to_keep = max_to_keep
    self.manager = None

  def open(self):
    """Removes temporaries a killed save left and opens the manager."""
    run_guard.clean_stale_checkpoint_temps(self.directory)
    self._open_manager()

  def _open_manager(self):
    run_guard.repair_checkpoint_state(self.directory)
    self.manager = tf.train.CheckpointManager(
        self.trainer.checkpoint, self.directory, max_to_keep=self.max_to_keep)

  def restore(self):
    """Restores the newest readable checkpoint; returns its path or None.

    A checkpoint whose files cannot be read (truncated, corrupt) is
    reported, moved into `checkpoints/corrupt/` rather than deleted, and the
    one before it is tried. A readable checkpoint that does not fit the
    model is never moved: that is a different run, and it is refused.

    Raises:
      run_guard.RunGuardError: when a readable checkpoint does not match
        the model.
    """
    if self.manager is None:
      self._open_manager()
    candidates = list(self.manager.checkpoints)
    while candidates:
      path = candidates.pop()
      status = None
      try:
        status = self.trainer.checkpoint.restore(path)
        status.assert_existing_objects_matched()
      except (tf.errors.OpError, ValueError, AssertionError, IndexError,
              KeyError, RuntimeError) as e:  # What damaged files raise.
        run_guard.quiet_refused_restore(status, e)
        reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
        if run_guard.checkpoint_readable(path):
          raise run_guard.RunGuardError(
              f'Checkpoint {path} is intact but does not fit this model '
              f'({reason}). It belongs to a run with other settings: pick a '
              'new --model_dir, or re-run with the flags in '
              f'{os.path.join(self.work_dir, FLAGS_FILE)}.') from None
        aside = run_guard.quarantine_checkpoint(path)
        logging.error('Checkpoint %s cannot be restored (%s); moved its '
                      'files to %s, trying the previous one.', path, reason,
                      aside)
        # The state file now lists what is left, with its timestamps: a
        # crash before the next save still resumes from the previous one.
        self._open_manager()
        continue
      logging.info('Resumed from %s at step %d.', path, self.trainer.step)
      return path
    return None

  def warm_start(self, source):
    """Loads the model weights of `source` (a run directory, its
    `checkpoints/` or a checkpoint path) into the trainer; returns the
    checkpoint read. The step, the optimizer's state and the wall time stay
    the new run's.

    Raises:
      run_guard.RunGuardError: when `source` holds no checkpoint, or its
        checkpoint does not fit the model.
    """
    path = warm_start_checkpoint(source)
    status = None
    try:
      status = tf.train.Checkpoint(model=self.trainer.model).restore(path)
      status.assert_existing_objects_matched()
      # The source's optimizer and counters are left out on purpose: no
      # warning about them when the checkpoint object is collected.
      status.expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      run_guard.quiet_refused_restore(status, e)
      reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
      raise run_guard.RunGuardError(
          f'--warm_start checkpoint {path} does not fit this model '
          f'({reason}). It must come from a run of the same --model with '
          'the same model options (see that run\'s flags.txt).') from None
    logging.info('Warm-started from %s: its model weights; the step, the '
                 "optimizer's state, the schedule and the input start anew.",
                 path)
    return path

  def save(self, step, wall_seconds):
    """Saves the trainer's state as `ckpt-<step>`, with the run's wall time.

    Raises:
      trainer.NonFiniteLossError: when the weights are NaN/Inf (finite
        gradients can still overflow an update); nothing is saved.
    """
    if not self.trainer.weights_finite():
      raise trainer_lib.NonFiniteLossError(
          f'The weights became NaN/Inf by step {step}; they were not '
          f'saved. {self.last_good()}')
    self.trainer.wall_seconds.assign(wall_seconds)
    self.manager.save(checkpoint_number=step)

  def last_good(self):
    """What a non-finite stop says of the checkpoints, and the fix."""
    latest = self.manager.latest_checkpoint if self.manager else None
    kept = (f'The latest checkpoint ({latest}) is the last good one.' if latest
            else 'No checkpoint was written before it.')
    return f'{kept} Lower --learning_rate or check the input data.'
