"""SavedModel export into the versioned layout TF Serving polls.

`exports/<name>/<integer version>/` is written under a temporary name in the
same base directory and renamed when complete, so TF Serving (which polls
integer-named directories only) never sees a half-written version, and an
existing version is never overwritten.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import models


def build_model_from_config(config, image_shape, num_classes, num_targets=1):
  """Builds (and creates the variables of) the model a config describes.

  `num_targets` objects per image (MultiMNIST: 2) get one reconstruction each.
  """
  model = models.build_model(config.model.name, image_shape, num_classes,
                             num_reconstructions=num_targets,
                             **config.model.kwargs())
  model(tf.zeros([1, *image_shape]), training=False)
  return model


class ServingModule(tf.Module):
  """The model wrapped with the serving signatures."""

  def __init__(self, model, image_shape):
    super().__init__()
    self.model = model
    self.image_shape = tuple(image_shape)
    spec = tf.TensorSpec([None, *image_shape], tf.float32, name='images')
    self.serving_default = tf.function(self._predict, input_signature=[spec])

  def _predict(self, images):
    # Loaded signatures do not check shapes themselves: a wrong one fails here
    # with a message that names the expected [batch, H, W, C].
    images = tf.ensure_shape(images, [None, *self.image_shape])
    outputs = self.model(images, training=False)
    return {
        'probabilities': outputs['lengths'],
        'classes': tf.argmax(outputs['lengths'], axis=-1),
        'poses': outputs['poses'],
    }

  def signatures(self):
    return {'serving_default': self.serving_default}


def next_version(export_base):
  """The next integer version under `export_base` (1 for an empty base)."""
  versions = [int(d) for d in tf.io.gfile.listdir(export_base)
              if d.rstrip('/').isdigit()] if tf.io.gfile.isdir(export_base) else []
  return max(versions, default=0) + 1


def export_model(model, image_shape, export_base):
  """Writes `model` as the next version under `export_base`.

  Args:
    model: a built model whose call returns `lengths` and `poses`.
    image_shape: `(H, W, C)` of its inputs.
    export_base: the model's base directory (`exports/<name>`).

  Returns:
    The path of the new version directory.
  """
  os.makedirs(export_base, exist_ok=True)
  module = ServingModule(model, image_shape)
  tmp = tempfile.mkdtemp(prefix='.tmp-export-', dir=export_base)
  try:
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    while True:
      target = os.path.join(export_base, str(next_version(export_base)))
      try:
        # rename() refuses to replace a non-empty directory, so a version
        # taken meanwhile by another exporter is never overwritten.
        os.rename(tmp, target)
        return target
      except OSError:
        if not os.path.isdir(target):
          raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def export_from_checkpoint(model_dir, export_base, checkpoint=None):
  """Rebuilds the model of a training run and exports a checkpoint of it.

  Args:
    model_dir: the run's model directory (holds `config.json`, `info.json`
      and `checkpoints/`).
    export_base: where versions go.
    checkpoint: a checkpoint path; None for the latest.

  Returns:
    The path of the new version directory.

  Raises:
    FileNotFoundError: if the run has no config or no checkpoint.
  """
  config, info = load_run(model_dir)
  if checkpoint is None:
    checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir,
                                                         'checkpoints'))
    if checkpoint is None:
      raise FileNotFoundError(
          f'{model_dir}/checkpoints holds no checkpoint; train first or pass '
          'a checkpoint path.')
  model = build_model_from_config(config, info['image_shape'],
                                  info['num_classes'], info['num_targets'])
  tf.train.Checkpoint(model=model).read(checkpoint).expect_partial()
  return export_model(model, info['image_shape'], export_base)


def load_run(model_dir):
  """Reads a run's `config.json` and `info.json` → `(TrainConfig, dict)`."""
  path = os.path.join(model_dir, config_lib.CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {model_dir} is not a '
                            'model directory written by pipeline.train.')
  with tf.io.gfile.GFile(path) as f:
    config = config_lib.TrainConfig.from_json(f.read())
  with tf.io.gfile.GFile(os.path.join(model_dir, 'info.json')) as f:
    info = json.load(f)
  info['image_shape'] = tuple(info['image_shape'])
  return config, info
