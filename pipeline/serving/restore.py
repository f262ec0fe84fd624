"""A training run's model, rebuilt and restored from one of its checkpoints
(for export and evaluation): every variable from the checkpoint, or a
refusal that names the checkpoint's run."""

import dataclasses
import json
import os

from absl import logging
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.core import run_guard
from pipeline.models import registry
from pipeline.perf import autotune


def _owner(checkpoint):
  """What run a checkpoint belongs to, for messages: `<run dir> (model
  <name>)` when its `config.json` says, else its directory."""
  run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
  try:
    config, _ = config_lib.load_run(run_dir)
    return f'the run in {run_dir} (model {config.model.name})'
  except (OSError, ValueError, KeyError, TypeError):
    return os.path.dirname(os.path.abspath(checkpoint))


def load_checkpointed_model(model_dir, checkpoint=None, precision=None):
  """Rebuilds a training run's model and restores a checkpoint into it.

  `precision` rebuilds it in another precision than the run's (its
  variables are float32 in every one, so the checkpoint fits); inference
  then runs the plain default formulations, since the run's probe chose
  for its own precision.

  Every variable of the model must come from the checkpoint: a checkpoint
  of another model (or of other settings) is refused, never half-restored.
  The checkpoint is read whole before it is used, so a damaged one is named
  rather than failing half-way.

  Args:
    model_dir: the run's model directory.
    checkpoint: a checkpoint path; None for the latest (the state file's,
      else the newest `ckpt-N` on disk).

  Returns:
    `(model, info dict)`.

  Raises:
    FileNotFoundError: for a directory without run files or checkpoints.
    ValueError: for a checkpoint that cannot be read or does not fit.
  """
  config, info = config_lib.load_run(model_dir)
  spec = config.model
  recorded = precision in (None, spec.precision)
  if not recorded:
    spec = dataclasses.replace(spec, precision=precision)
  model = registry.build_from_spec(spec, info['image_shape'],
                                   info['num_classes'], info['num_targets'])
  if checkpoint is not None:
    if not tf.io.gfile.exists(checkpoint + '.index'):
      raise FileNotFoundError(
          f'{checkpoint} is not a checkpoint (no {checkpoint}.index); pass '
          f'a path like {model_dir}/checkpoints/ckpt-N, or leave the '
          'checkpoint out for the latest.')
    _restore(model, checkpoint, model_dir, config.model.name)
    if recorded:
      _apply_recorded_formulations(model, model_dir, info)
    return model, info
  # The latest checkpoint of a run that is still training can be rotated
  # away while it is read: then the newest one is taken instead.
  directory = os.path.join(model_dir, 'checkpoints')
  for _ in range(5):
    checkpoint = tf.train.latest_checkpoint(directory)
    if checkpoint is None or not tf.io.gfile.exists(checkpoint + '.index'):
      on_disk = run_guard.checkpoints_on_disk(directory)
      checkpoint = on_disk[-1] if on_disk else None
    if checkpoint is None:
      raise FileNotFoundError(
          f'{directory} holds no checkpoint; train first or pass a '
          'checkpoint path.')
    try:
      _restore(model, checkpoint, model_dir, config.model.name)
      if recorded:
        _apply_recorded_formulations(model, model_dir, info)
      return model, info
    except ValueError:
      if tf.io.gfile.exists(checkpoint + '.index'):
        raise
      logging.info('%s was removed while it was read (a run is still '
                   'training); taking the newest one.', checkpoint)
  raise ValueError(f'The checkpoints of {directory} kept being replaced '
                   'while they were read; pass one as --checkpoint.')


def _apply_recorded_formulations(model, model_dir, info):
  """Inference without XLA runs what the run's probe chose for it
  (`autotune.json`); a run without the record keeps the defaults."""
  path = os.path.join(model_dir, autotune.RECORD_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return
  except (OSError, ValueError) as e:
    logging.warning('%s cannot be read (%s); inference keeps the default '
                    'formulations.', path, e)
    return
  applied = autotune.apply_plain_choices(model, record, info['image_shape'])
  if applied:
    logging.info('Inference without XLA runs the formulations %s chose: %s.',
                 path, ', '.join(f'{k} {v}' for k, v in applied.items()))


def _restore(model, checkpoint, model_dir, model_name):
  """Restores every variable of `model` from `checkpoint`, or refuses."""
  earlier = [p for p in run_guard.checkpoints_on_disk(
      os.path.dirname(os.path.abspath(checkpoint)))
             if p != os.path.abspath(checkpoint)]
  hint = (f' Earlier checkpoints: {", ".join(earlier[-3:])} (pass one as '
          '--checkpoint).' if earlier else '')
  damaged = ValueError(f'Checkpoint {checkpoint} cannot be read: its files '
                       f'are truncated, damaged or missing.{hint}')
  if not run_guard.checkpoint_readable(checkpoint):
    raise damaged
  status = None
  try:
    status = tf.train.Checkpoint(model=model).read(checkpoint)
    status.assert_existing_objects_matched()
  except (tf.errors.OpError, ValueError, AssertionError) as e:
    # Its files read whole (checked above), so it is another model's: a
    # variable of another shape (raised by `read`) or other variables.
    run_guard.quiet_refused_restore(status, e)
    raise ValueError(
        f'Checkpoint {checkpoint} does not fit the model of {model_dir} '
        f'({model_name}): {str(e).splitlines()[0][:200]} It belongs '
        f'to {_owner(checkpoint)}; export or evaluate it with that run\'s '
        '--model_dir.') from None
  # The optimizer's slots and the step counter are not needed to serve.
  status.expect_partial()
