"""The outer training loop, like orbit's `Controller.train`.

Work out the steps of the next loop, run them with the trainer, then log,
checkpoint and evaluate on their boundaries; save at completion. The loop
is all this module holds; the parts it calls each own one kind of file:
`checkpoints` (save, restore, quarantine), `run_files` (the config check
of a resume, the run's files, `metrics.json`, HParams values), `summaries`
(TensorBoard), `profiling` (the profiler window), `preemption` (SIGTERM
and Ctrl-C) and `run_guard` (the lock, writability). Nothing is written
before the controller holds the model directory's lock and has checked that
a resumed run is the same run (and a new run's --warm_start checkpoint fits
its model).
"""

import contextlib
import dataclasses
import math
import os
import time
from typing import Optional

from absl import logging
import tensorflow as tf

from pipeline.core import checkpoints as checkpoints_lib
from pipeline.core import preemption
from pipeline.core import profiling
from pipeline.core import run_files
from pipeline.core import run_guard
from pipeline.core import summaries
from pipeline.core import trainer as trainer_lib
from pipeline.data import input_pipeline

# Examples behind the eval histograms (the image grid shows the first 8).
SUMMARY_EXAMPLES = 200


@dataclasses.dataclass(frozen=True)
class RunResult:
  """How a `Controller.train` call ended.

  Attributes:
    step: the global step reached.
    evaluation: the final evaluation (see `Trainer.evaluate`, plus
      `wall_seconds`), or None when the run was preempted.
    preempted: the signal that stopped the run early ('peer' when another
      worker was), or None.
  """
  step: int
  evaluation: Optional[dict] = None
  preempted: Optional[str] = None


def duration(seconds: float) -> str:
  """`H:MM:SS` of a number of seconds (rounded up)."""
  seconds = int(math.ceil(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Controller:
  """Drives a `Trainer` to `config.train_steps`.

  Args:
    trainer: the `pipeline.core.trainer.Trainer` to drive.
    flags_text: the flagfile that reproduces the run, written as
      `flags.txt` once the lock is held (None: not written).
    preemption: a `preemption.PreemptionWatcher` the caller has entered
      (a signal before training starts then stops the run at its first
      boundary); None: the run installs its own.
  """

  def __init__(self, trainer, flags_text=None, preemption=None):
    self.trainer = trainer
    self.preemption = preemption
    self.config = trainer.config
    self.work_dir = trainer.work_dir
    self.flags_text = flags_text
    self.checkpoints = checkpoints_lib.Checkpoints(
        trainer, self.work_dir, self.config.max_checkpoints)
    self.metrics_file = run_files.MetricsFile(self.work_dir)
    self.profile = None

  def restore(self):
    """Restores the newest readable checkpoint (`Checkpoints.restore`)."""
    return self.checkpoints.restore()

  def train(self) -> RunResult:
    """Trains to `train_steps`, evaluating and checkpointing on the way,
    or until an evaluation reaches `target_accuracy` (when set).

    Holds the model directory's lock for the whole run. On SIGTERM it
    saves a checkpoint at the current step and returns early.

    Raises:
      trainer.NonFiniteLossError: when a step's loss or gradients are not
        finite; the latest checkpoint is the last good one.
      run_guard.RunGuardError: when another trainer holds the model
        directory, it is not writable, or it holds a different run.
    """
    # A new run's --warm_start is read before anything is written: one that
    # names no checkpoint, or a checkpoint of another model, is refused
    # without leaving a directory behind. (A resumed run does not read it.)
    warmed = None
    if self.config.warm_start and not run_guard.checkpoints_on_disk(
        self.checkpoints.directory):
      warmed = self.checkpoints.warm_start(self.config.warm_start)
    run_guard.check_writable(self.work_dir, '--model_dir')
    # Every sub-directory the run writes, so none fails after hours.
    for sub in (checkpoints_lib.CHECKPOINTS_DIR, 'train', 'eval'):
      run_guard.check_writable(os.path.join(self.work_dir, sub),
                               f'--model_dir\'s {sub}/', min_free_bytes=0)
    watcher = (contextlib.nullcontext(self.preemption)
               if self.preemption is not None
               else preemption.PreemptionWatcher())
    with run_guard.RunLock(self.work_dir), watcher as stop:
      run_files.check_same_run(self.work_dir, self.config)
      self.checkpoints.open()
      if (self.checkpoints.restore() is None and self.config.warm_start
          and warmed is None):
        # Its checkpoints were damaged and set aside: a warm start after all.
        self.checkpoints.warm_start(self.config.warm_start)
      if self.trainer.chief:
        run_files.write_run_files(self.work_dir, self.config,
                                  self.trainer.info, self.flags_text,
                                  self.trainer.autotune)
      cfg = self.config
      self.profile = profiling.ProfileWindow(
          os.path.join(self.work_dir, 'train'),
          cfg.profile_steps if self.trainer.chief else (),
          {'batch_size': cfg.batch_size, 'model': cfg.model.name,
           'precision': cfg.model.precision})
      try:
        return self._train(stop)
      finally:
        self.profile.stop()

  def _train(self, preemption):
    cfg, trainer = self.config, self.trainer
    self._writers = {sub: tf.summary.create_file_writer(
        os.path.join(self.work_dir, sub)) for sub in ('train', 'eval')}
    # Histograms are drawn from this fixed batch at every evaluation.
    self._summary_batch = next(iter(input_pipeline.make_dataset(
        trainer.source, cfg.eval_split, SUMMARY_EXAMPLES, False,
        seed=cfg.runtime.seed, deterministic=True)))
    step = start_step = trainer.step
    self._start_time = time.time()
    self._restored_wall = self._wall_at(step)
    if trainer.chief:
      summaries.write_hparams(self.work_dir, run_files.hparams(cfg),
                              os.path.basename(os.path.abspath(self.work_dir)))
    earlier = self._target_reached_at(step)
    if earlier is not None:
      logging.info('Step %d already reached --target_accuracy=%g (%s '
                   'accuracy %.4f): nothing to train.', step,
                   cfg.target_accuracy, earlier['split'], earlier['accuracy'])
      return RunResult(step=step, evaluation=earlier)
    self._last_log = (step, self._start_time)
    results = None
    while step < cfg.train_steps:
      step = self._run_loop(step)
      done = step >= cfg.train_steps
      evaluation = self._boundaries(step, done)
      if evaluation is not None:
        results = evaluation
        if not done:
          break  # --target_accuracy reached.
      if not done and trainer.any_worker(preemption.requested):
        return self._preempted(step, preemption.requested)
    return self._finish(step, start_step, results)

  def _run_loop(self, step):
    """Runs the steps up to the next boundary; returns the step reached."""
    cfg = self.config
    # Loops end exactly on log, eval, checkpoint and profiler boundaries.
    n = min([cfg.steps_per_loop, cfg.train_steps - step] +
            [every - step % every for every in
             (cfg.log_every, cfg.eval_every, cfg.checkpoint_every)] +
            self.profile.boundaries(step))
    self.profile.before_loop(step)
    try:
      self.trainer.run_steps(n)
    except trainer_lib.NonFiniteLossError as e:
      raise trainer_lib.NonFiniteLossError(
          f'{e} {self.checkpoints.last_good()}') from None
    step = self.trainer.step
    self.profile.after_loop(step, step >= cfg.train_steps)
    return step

  def _boundaries(self, step, done):
    """Logs, checkpoints and evaluates where `step` falls on their cadence.

    Returns:
      The evaluation when one ran (a run that reached --target_accuracy
      before its end has then been saved), else None.
    """
    cfg = self.config
    if step % cfg.log_every == 0 or done:
      now = time.time()
      last_step, last_time = self._last_log
      self._log_train(step, (step - last_step) * cfg.batch_size /
                      (now - last_time))
      self._last_log = (step, now)
    paused = time.time()
    if step % cfg.checkpoint_every == 0 or done:
      self._save(step)
    results = None
    if step % cfg.eval_every == 0 or done:
      results = self._evaluate(step)
      if not done and self._reaches_target(results):
        if step % cfg.checkpoint_every:
          self._save(step)
        logging.info('Reached --target_accuracy=%g at step %d (%s accuracy '
                     '%.4f): stopping here.', cfg.target_accuracy, step,
                     results['split'], results['accuracy'])
        return results
    # examples/s counts training only, not checkpoints and evaluations.
    self._last_log = (self._last_log[0],
                      self._last_log[1] + time.time() - paused)
    return results if done else None

  def _preempted(self, step, signal_name):
    if step % self.config.checkpoint_every:
      self._save(step)
    self._flush()
    logging.warning(
        'Stopped by %s at step %d: checkpoint saved in %s. Run the same '
        'command to resume.', signal_name or 'a peer worker', step,
        self.checkpoints.directory)
    return RunResult(step=step, preempted=signal_name or 'peer')

  def _finish(self, step, start_step, results):
    if results is None:
      # A finished run started again (its export was interrupted, say):
      # its final evaluation is in metrics.json, and is not written twice.
      results = self.metrics_file.evaluation_at(step, self.config.eval_split)
    if results is None:
      results = self._evaluate(step)
      self._save(step)
    self._flush()
    logging.info('Trained %d steps in %s.', step - start_step,
                 duration(time.time() - self._start_time))
    return RunResult(step=step, evaluation=results)

  def _wall(self):
    return self._restored_wall + time.time() - self._start_time

  def _wall_at(self, step):
    """The wall seconds the run had spent at `step`: its checkpoint's, or
    the evaluation's at that step where it is later (an evaluation runs
    after the step's checkpoint is saved), so the times in metrics.json
    never go back on a resume."""
    wall = float(self.trainer.wall_seconds.numpy())
    for entry in self.metrics_file.history():
      if (isinstance(entry, dict) and
          isinstance(entry.get('step'), int) and entry['step'] <= step and
          isinstance(entry.get('wall_seconds'), (int, float))):
        wall = max(wall, float(entry['wall_seconds']))
    return wall

  def _save(self, step):
    self.checkpoints.save(step, self._wall())

  def _flush(self):
    for writer in self._writers.values():
      writer.flush()

  def _evaluate(self, step):
    """Evaluates, logs, writes the eval summaries and metrics.json."""
    results = dict(self.trainer.evaluate(), wall_seconds=self._wall())
    logging.info('eval step %d: %s accuracy %.4f error %.4f loss %.4f on %d '
                 'examples', step, results['split'], results['accuracy'],
                 results['error_rate'], results['loss'], results['examples'])
    if self.trainer.chief:
      batch = self._summary_batch
      outputs = self.trainer.summary_outputs(batch['image'], batch['label'])
      with self._writers['eval'].as_default():
        summaries.write_scalars(step, {'accuracy': results['accuracy'],
                                       'error_rate': results['error_rate'],
                                       'loss/total': results['loss']})
        summaries.write_capsule_summaries(step, batch['label'], outputs,
                                          batch['image'])
      self.metrics_file.append(results, step)
    return results

  def _reaches_target(self, results):
    target = self.config.target_accuracy
    return bool(target) and results['accuracy'] >= target

  def _target_reached_at(self, step):
    """The evaluation of metrics.json at `step` on the run's eval split,
    if it reached --target_accuracy (a finished run resumed); else None."""
    if not self.config.target_accuracy:
      return None
    entry = self.metrics_file.evaluation_at(step, self.config.eval_split)
    return entry if entry and self._reaches_target(entry) else None

  def _log_train(self, step, rate):
    cfg, trainer = self.config, self.trainer
    values = {k: float(m.result()) for k, m in trainer.metrics.items()}
    values['learning_rate'] = float(trainer.learning_rate(step - 1))
    values['examples_per_second'] = rate
    left = (cfg.train_steps - step) * cfg.batch_size / max(rate, 1e-9)
    logging.info(
        'step %d/%d  loss %.4f (margin %.4f, recon %.2f)  accuracy %.4f  '
        '%.1f examples/s  %s left', step, cfg.train_steps,
        values['loss/total'], values['loss/margin'],
        values['loss/reconstruction'], values['accuracy'], rate,
        duration(left))
    if trainer.chief:
      with self._writers['train'].as_default():
        summaries.write_scalars(step, values)
    for m in trainer.metrics.values():
      m.reset_state()


def train(config, flags_text=None):
  """Builds a trainer for `config` and trains it to the end.

  Returns:
    `(trainer, RunResult)`.
  """
  trainer = trainer_lib.Trainer(config)
  return trainer, Controller(trainer, flags_text).train()
