"""Trains a capsule model from flags: checkpoints, TensorBoard, eval, export.

  python -m pipeline.train --flagfile=configs/fashion_mnist.flags
  python -m pipeline.train --flagfile=configs/smoke.flags --train_steps=50
  tensorboard --logdir=runs

A run started on an existing --model_dir resumes from its latest checkpoint.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import signal
import sys

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from pipeline import flags as pipeline_flags
from pipeline.core import checkpoints as checkpoints_lib
from pipeline.core import controller as controller_lib
from pipeline.core import preemption
from pipeline.core import run_files
from pipeline.core import run_guard
from pipeline.core import trainer as trainer_lib
from pipeline.serving import publish

pipeline_flags.define_flags()
FLAGS = flags.FLAGS


def _train(trainer, stop):
  """Runs the Controller; a refusal or a failed write is one line."""
  config = trainer.config
  controller = controller_lib.Controller(trainer, FLAGS.flags_into_string(),
                                         preemption=stop)
  try:
    return controller.train()
  except run_guard.RunGuardError as e:
    sys.exit(str(e))
  except trainer_lib.NonFiniteLossError as e:
    sys.exit(f'Error: {e}')
  except (OSError, tf.errors.OpError) as e:
    reason = run_guard.write_failure(e)
    if reason is None:
      raise
    where = getattr(e, 'filename', None) or config.model_dir
    sys.exit(f'Error: writing {where} failed ({reason}). Free space (or fix '
             'the permissions) and run the same command: it resumes from the '
             'latest checkpoint.')


def _main(argv, stop):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = pipeline_flags.config_from_flags()
  except ValueError as e:
    sys.exit(str(e))
  # Refused before training (bad data, a --warm_start that names no
  # checkpoint or one of another model), it leaves no empty --model_dir or
  # --export_dir behind.
  with run_guard.removed_if_unused(config.model_dir, config.export_dir):
    try:
      # A resume with other settings is refused before the model is built
      # and its formulations probed (the Controller checks again, locked).
      run_files.check_same_run(config.model_dir, config, log_notes=False)
      checkpoints_lib.check_warm_start(config.model_dir, config.warm_start)
      run_guard.check_writable(config.model_dir, '--model_dir')
      if config.export_dir:
        run_guard.check_writable(config.export_dir, '--export_dir')
    except run_guard.RunGuardError as e:
      sys.exit(str(e))
    try:
      trainer = trainer_lib.Trainer(config)
    except ValueError as e:  # DataError included.
      # The message names the file or flag and the fix.
      sys.exit(f'Error: {e}')
    result = _train(trainer, stop)
  if result.preempted:
    status = preemption.exit_status(result.preempted)
    print(f'Stopped by {result.preempted} at step {result.step}; '
          'the checkpoint is saved. Run the same command to resume '
          f'(exit status {status}: the run has not finished).', flush=True)
    return status
  results = result.evaluation
  print(f'{results["split"]} accuracy {results["accuracy"]:.4f} (error '
        f'{100 * results["error_rate"]:.2f}%) on {results["examples"]} '
        f'examples after {result.step} steps; model_dir '
        f'{config.model_dir}', flush=True)
  if config.export_dir and trainer.chief:
    # A SIGTERM (or one Ctrl-C) here lets the export finish: it takes
    # seconds, and the run is complete.
    before = len(stop.received)
    path = publish.export_from_checkpoint(config.model_dir, config.export_dir)
    print(f'Exported SavedModel to {path}', flush=True)
    if len(stop.received) > before:
      print(f'{stop.received[before]} arrived during the export; the export '
            'was finished first.', flush=True)
  return 0


def main(argv):
  # For the whole command: a SIGTERM or Ctrl-C at any point (building the
  # model, training, exporting, on the way out) asks for a clean stop; a
  # second Ctrl-C stops at once.
  stop = preemption.PreemptionWatcher()
  try:
    with stop:
      return _main(argv, stop)
  except KeyboardInterrupt:
    # A second Ctrl-C (the first asks for a clean stop).
    print(preemption.INTERRUPTED, file=sys.stderr, flush=True)
    return 130
  finally:
    if stop.received:
      # A stop is under way: a repeated SIGTERM while the process exits
      # must not turn its clean exit into a kill.
      signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == '__main__':
  cycle = pipeline_flags.check_flagfiles(sys.argv)
  if cycle:
    sys.exit(f'FATAL Flags parsing error: {cycle}')
  logging.set_verbosity(logging.INFO)
  sys.exit(app.run(main))
