"""The outer training loop: resume, checkpoints, summaries, metrics.json.

Like orbit's `Controller.train`: work out the steps of the next loop, run
them with the trainer, then log, checkpoint and evaluate on their
boundaries; save at completion. The controller owns every file of a run
(the config and reproduction flagfile, checkpoints with their quarantine,
TensorBoard events, `metrics.json`) and writes none of them before it holds
the model directory's lock and has checked that a resumed run is the same
run.
"""

import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Optional

from absl import logging
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from pipeline import autotune
from pipeline import config as config_lib
from pipeline import run_guard
from pipeline import summaries
from pipeline import trainer as trainer_lib
from pipeline.data import input_pipeline

METRICS_FILE = 'metrics.json'
FLAGS_FILE = 'flags.txt'
# (run subdirectory, scalar tag) of the metrics the HParams tab shows.
HPARAMS_METRICS = (('eval', 'accuracy'), ('eval', 'error_rate'),
                   ('eval', 'loss/total'), ('train', 'loss/total'))
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


# Beside each profiler trace: the steps it holds and what ran them, read by
# `python -m pipeline.profile_report`.
PROFILE_RECORD = 'pipeline_steps.json'


def record_trace(logdir, record):
  """Writes `record` as PROFILE_RECORD beside the newest profiler trace that
  `tf.profiler.experimental.start(logdir)` wrote (`logdir/plugins/profile/
  <start time>/`), for `pipeline.profile_report` to read."""
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


class Controller:
  """Drives a `Trainer` to `config.train_steps`.

  Args:
    trainer: the `pipeline.trainer.Trainer` to drive.
    flags_text: the flagfile that reproduces the run, written as
      `flags.txt` once the lock is held (None: not written).
    preemption: a `run_guard.PreemptionWatcher` the caller has entered
      (a signal before training starts then stops the run at its first
      boundary); None: the run installs its own.
  """

  def __init__(self, trainer, flags_text=None, preemption=None):
    self.trainer = trainer
    # A `run_guard.PreemptionWatcher` already installed by the caller (the
    # command's, for its whole life), else one for the run's own.
    self.preemption = preemption
    self.config = trainer.config
    self.work_dir = trainer.work_dir
    self.flags_text = flags_text
    self.checkpoint_manager = None
    self._profiling = False

  def _manager(self):
    directory = os.path.join(self.work_dir, 'checkpoints')
    run_guard.repair_checkpoint_state(directory)
    return tf.train.CheckpointManager(
        self.trainer.checkpoint, directory,
        max_to_keep=self.config.max_checkpoints)

  # --- Files of the run ------------------------------------------------------

  def check_same_run(self):
    """Compares the saved config of a resumed run with this one.

    Raises:
      run_guard.RunGuardError: naming every changed field that would change
        the model or its training, and how to proceed. Changes that do not
        (more steps, another evaluation cadence) pass; those with a stated
        consequence are logged.
    """
    path = os.path.join(self.work_dir, config_lib.CONFIG_FILE)
    if not os.path.exists(path):
      return
    try:
      with open(path) as f:
        saved = config_lib.TrainConfig.from_json(f.read())
    except (ValueError, TypeError, KeyError) as e:
      raise run_guard.RunGuardError(
          f'{path} cannot be read ({type(e).__name__}: {e}); it is what makes '
          'a resume safe. Restore it, or pick a new --model_dir.') from None
    refused, noted = config_lib.config_changes(saved, self.config)
    if refused:
      lines = '; '.join(f'--{name} was {old!r}, now {new!r}'
                        for name, old, new in refused)
      raise run_guard.RunGuardError(
          f'{self.work_dir} holds a run with other settings ({lines}). '
          'Resuming would not continue that run. Re-run with its flags '
          f'(--flagfile={os.path.join(self.work_dir, FLAGS_FILE)}), or pick '
          'a new --model_dir for the new settings.')
    for name, old, new, consequence in noted:
      logging.warning('--%s changed from %r to %r: %s', name, old, new,
                      consequence)

  def write_run_files(self):
    """Writes the resolved config, the data description, flags.txt and
    the formulations autotune chose (`autotune.json`)."""
    if not self.trainer.chief:
      return
    info = self.trainer.info
    files = {
        config_lib.CONFIG_FILE: self.config.to_json(),
        config_lib.INFO_FILE: json.dumps({
            'name': info.name, 'image_shape': list(info.image_shape),
            'num_classes': info.num_classes,
            'split_sizes': info.split_sizes,
            'num_targets': info.num_targets,
            'class_names': list(info.class_names)}, indent=2),
    }
    if self.flags_text is not None:
      files[FLAGS_FILE] = self.flags_text
    files[autotune.RECORD_FILE] = json.dumps(self.trainer.autotune, indent=2,
                                             default=str)
    for name, text in files.items():
      run_guard.write_atomic(os.path.join(self.work_dir, name), text)

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
    if self.checkpoint_manager is None:
      self.checkpoint_manager = self._manager()
    manager = self.checkpoint_manager
    candidates = list(manager.checkpoints)
    while candidates:
      path = candidates.pop()
      try:
        self.trainer.checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.OpError, ValueError, AssertionError, IndexError,
              KeyError, RuntimeError) as e:  # What damaged files raise.
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
        self.checkpoint_manager = self._manager()
        continue
      logging.info('Resumed from %s at step %d.', path, self.trainer.step)
      return path
    return None

  def _write_eval(self, writer, step, results, batch):
    logging.info('eval step %d: %s accuracy %.4f error %.4f loss %.4f on %d '
                 'examples', step, results['split'], results['accuracy'],
                 results['error_rate'], results['loss'], results['examples'])
    if not self.trainer.chief:
      return
    outputs = self.trainer.summary_outputs(batch['image'], batch['label'])
    with writer.as_default():
      summaries.write_scalars(step, {'accuracy': results['accuracy'],
                                     'error_rate': results['error_rate'],
                                     'loss/total': results['loss']})
      summaries.write_capsule_summaries(step, batch['label'], outputs,
                                        batch['image'])
    path = os.path.join(self.work_dir, METRICS_FILE)
    history = run_guard.read_metrics_history(path)
    history.append(dict(results, step=int(step)))
    run_guard.write_atomic(path, json.dumps(
        {'latest': history[-1], 'history': history}, indent=2))

  def hparams(self) -> dict:
    """The run's settings as TensorBoard HParams: scalars and strings.

    Run-control fields (directories, cadences) are left out: they do not
    tell runs apart.
    """
    skip = set(config_lib.FREE_FIELDS) | {
        'runtime.strategy', 'runtime.cpu_devices', 'runtime.deterministic'}
    values = {}
    for key, value in config_lib.flat_fields(self.config).items():
      name = config_lib.flat_name(key).replace('model.params.', '').replace(
          'data.', 'data_')
      if key in skip or key.startswith('data.synthetic') and (
          self.config.data.dataset != 'synthetic'):
        continue
      if isinstance(value, (tuple, list)):
        value = ','.join(map(str, value))
      elif value is None:
        value = ''
      values[name.replace('.', '_')] = value
    return values

  def _write_hparams(self):
    """Records the run's HParams (a session start) at the top of its
    TensorBoard directory; its metrics are the eval/ and train/ scalars."""
    if not self.trainer.chief:
      return
    values = self.hparams()
    writer = tf.summary.create_file_writer(self.work_dir)
    with writer.as_default():
      # The experiment's columns: this run's settings, and the metrics the
      # HParams tab reads from its eval/ and train/ scalars.
      hparams_api.hparams_config(
          hparams=[hparams_api.HParam(name) for name in values],
          metrics=[hparams_api.Metric(tag, group=group,
                                      display_name=f'{group} {tag}')
                   for group, tag in HPARAMS_METRICS])
      hparams_api.hparams(values, trial_id=os.path.basename(
          os.path.abspath(self.work_dir)))
    writer.close()

  # --- The loop ----------------------------------------------------------------

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
    run_guard.check_writable(self.work_dir, '--model_dir')
    # Every sub-directory the run writes, so none fails after hours.
    for sub in ('checkpoints', 'train', 'eval'):
      run_guard.check_writable(os.path.join(self.work_dir, sub),
                               f'--model_dir\'s {sub}/', min_free_bytes=0)
    watcher = (contextlib.nullcontext(self.preemption)
               if self.preemption is not None
               else run_guard.PreemptionWatcher())
    with run_guard.RunLock(self.work_dir), watcher as preemption:
      self.check_same_run()
      run_guard.clean_stale_checkpoint_temps(
          os.path.join(self.work_dir, 'checkpoints'))
      self.checkpoint_manager = self._manager()
      self.restore()
      self.write_run_files()
      try:
        return self._train(preemption)
      finally:
        if self._profiling:
          tf.profiler.experimental.stop()
          self._profiling = False

  def _train(self, preemption):
    cfg, trainer = self.config, self.trainer
    train_writer = tf.summary.create_file_writer(
        os.path.join(self.work_dir, 'train'))
    eval_writer = tf.summary.create_file_writer(
        os.path.join(self.work_dir, 'eval'))
    # Histograms are drawn from this fixed batch at every evaluation.
    summary_batch = next(iter(input_pipeline.make_dataset(
        trainer.source, cfg.eval_split, SUMMARY_EXAMPLES, False,
        seed=cfg.runtime.seed, deterministic=True)))
    step = trainer.step
    start_step, start_time = step, time.time()
    restored_wall = float(trainer.wall_seconds.numpy())
    self._write_hparams()
    # The profiler traces steps [first, last]: it starts after step first-1.
    profile = [cfg.profile_steps[0] - 1, cfg.profile_steps[1]] if (
        cfg.profile_steps and trainer.chief) else []

    def wall():
      return restored_wall + time.time() - start_time

    def save(step):
      # A checkpoint holds finite weights only: finite gradients can still
      # make them NaN or infinite (an overflowing update).
      if not trainer.weights_finite():
        raise trainer_lib.NonFiniteLossError(
            f'The weights became NaN/Inf by step {step}; they were not '
            f'saved. {self._last_good()}')
      trainer.wall_seconds.assign(wall())
      self.checkpoint_manager.save(checkpoint_number=step)

    def evaluate():
      return dict(trainer.evaluate(), wall_seconds=wall())

    earlier = self._target_reached_at(step)
    if earlier is not None:
      logging.info('Step %d already reached --target_accuracy=%g (%s '
                   'accuracy %.4f): nothing to train.', step,
                   cfg.target_accuracy, earlier['split'], earlier['accuracy'])
      return RunResult(step=step, evaluation=earlier)
    last_log_step, last_log_time = step, start_time
    results = None
    while step < cfg.train_steps:
      # Loops end exactly on log, eval and checkpoint boundaries.
      n = min([cfg.steps_per_loop, cfg.train_steps - step] +
              [every - step % every for every in
               (cfg.log_every, cfg.eval_every, cfg.checkpoint_every)] +
              [edge - step for edge in profile if edge > step])
      if profile and step == profile[0]:
        tf.profiler.experimental.start(os.path.join(self.work_dir, 'train'))
        self._profiling = True
      try:
        trainer.run_steps(n)
      except trainer_lib.NonFiniteLossError as e:
        raise trainer_lib.NonFiniteLossError(
            f'{e} {self._last_good()}') from None
      step = trainer.step
      done = step >= cfg.train_steps
      if self._profiling and (step >= profile[1] or done):
        tf.profiler.experimental.stop()
        self._profiling = False
        self._record_profile(profile[0] + 1, step)
        logging.info('Profiled steps %d-%d into %s (TensorBoard: Profile).',
                     profile[0] + 1, step, os.path.join(self.work_dir, 'train'))
      if step % cfg.log_every == 0 or done:
        now = time.time()
        rate = (step - last_log_step) * cfg.batch_size / (now - last_log_time)
        self._log_train(train_writer, step, rate)
        last_log_step, last_log_time = step, now
      paused = time.time()
      if step % cfg.checkpoint_every == 0 or done:
        save(step)
      if step % cfg.eval_every == 0 or done:
        results = evaluate()
        self._write_eval(eval_writer, step, results, summary_batch)
        if not done and self._reaches_target(results):
          if step % cfg.checkpoint_every:
            save(step)
          logging.info('Reached --target_accuracy=%g at step %d (%s accuracy '
                       '%.4f): stopping here.', cfg.target_accuracy, step,
                       results['split'], results['accuracy'])
          break
      # examples/s counts training only, not checkpoints and evaluations.
      last_log_time += time.time() - paused
      if not done and trainer.any_worker(preemption.requested):
        if step % cfg.checkpoint_every:
          save(step)
        train_writer.flush()
        eval_writer.flush()
        stopper = preemption.requested or 'peer'
        logging.warning(
            'Stopped by %s at step %d: checkpoint saved in %s. Run the same '
            'command to resume.', preemption.requested or 'a peer worker',
            step, self.checkpoint_manager.directory)
        return RunResult(step=step, preempted=stopper)
    if results is None:
      # A finished run started again (its export was interrupted, say):
      # its final evaluation is in metrics.json, and is not written twice.
      results = self._evaluation_at(step)
    if results is None:
      results = evaluate()
      self._write_eval(eval_writer, step, results, summary_batch)
      save(step)
    train_writer.flush()
    eval_writer.flush()
    logging.info('Trained %d steps in %s.', step - start_step,
                 duration(time.time() - start_time))
    return RunResult(step=step, evaluation=results)

  def _last_good(self):
    """What a non-finite stop says of the checkpoints, and the fix."""
    latest = self.checkpoint_manager.latest_checkpoint
    kept = (f'The latest checkpoint ({latest}) is the last good one.' if latest
            else 'No checkpoint was written before it.')
    return f'{kept} Lower --learning_rate or check the input data.'

  def _reaches_target(self, results):
    target = self.config.target_accuracy
    return bool(target) and results['accuracy'] >= target

  def _evaluation_at(self, step):
    """The evaluation of metrics.json at `step` on the run's eval split
    (the newest), or None."""
    history = run_guard.read_metrics_history(
        os.path.join(self.work_dir, METRICS_FILE))
    for entry in reversed(history):
      if (isinstance(entry, dict) and entry.get('step') == step and
          entry.get('split') == self.config.eval_split):
        return entry
    return None

  def _target_reached_at(self, step):
    """The evaluation of metrics.json at `step` on the run's eval split,
    if it reached --target_accuracy (a finished run resumed); else None."""
    if not self.config.target_accuracy:
      return None
    entry = self._evaluation_at(step)
    return entry if entry and self._reaches_target(entry) else None

  def _record_profile(self, first, last):
    """Writes PROFILE_RECORD into the trace directory just written."""
    cfg = self.trainer.config
    record_trace(os.path.join(self.work_dir, 'train'),
                 {'first_step': first, 'last_step': last,
                  'batch_size': cfg.batch_size, 'model': cfg.model.name,
                  'precision': cfg.model.precision})

  def _log_train(self, writer, step, rate):
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
      with writer.as_default():
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
