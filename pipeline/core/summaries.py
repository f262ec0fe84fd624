"""TensorBoard summaries: capsule length histograms, coupling coefficients,
reconstructions, scalars, and the run's HParams."""

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

# Tags the trainer writes; tests and docs refer to them by these names.
SCALAR_TAGS = ('loss/margin', 'loss/reconstruction', 'loss/total',
               'accuracy', 'learning_rate', 'examples_per_second')
HISTOGRAM_TAGS = ('capsule_length/true_class', 'capsule_length/other_classes',
                  'coupling_coefficients')
IMAGE_TAG = 'inputs_and_reconstructions'
# (run subdirectory, scalar tag) of the metrics the HParams tab shows.
HPARAMS_METRICS = (('eval', 'accuracy'), ('eval', 'error_rate'),
                   ('eval', 'loss/total'), ('train', 'loss/total'))


def image_grid(images, reconstructions, max_rows=8):
  """Pairs each input with its reconstruction side by side.

  Args:
    images: `[batch, H, W, C]` in [0, 1].
    reconstructions: `[batch, H, W, C]` (or `[batch, n, H, W, C]`: the targets
      are summed and clipped into one picture).
    max_rows: how many examples.

  Returns:
    `[min(batch, max_rows), H, 2W, C']` float32, C' 1 or 3 (TensorBoard shows
    1, 3 or 4 channels; other counts show their first channel).
  """
  if reconstructions.shape.rank == 5:
    reconstructions = tf.minimum(tf.reduce_sum(reconstructions, axis=1), 1.0)
  images = tf.cast(images[:max_rows], tf.float32)
  reconstructions = tf.cast(reconstructions[:max_rows], tf.float32)
  if images.shape[-1] not in (1, 3, 4):
    images, reconstructions = images[..., :1], reconstructions[..., :1]
  return tf.clip_by_value(tf.concat([images, reconstructions], axis=2), 0., 1.)


def write_capsule_summaries(step, labels, outputs, images=None):
  """Writes histograms (and an image grid) to the default summary writer.

  Args:
    step: the global step.
    labels: one-hot or k-hot `[batch, classes]`.
    outputs: the model's output dict (`lengths`, optional `coupling`,
      `reconstructions`).
    images: the inputs `[batch, H, W, C]`, for the image grid.
  """
  lengths = outputs['lengths']
  present = labels > 0.5
  tf.summary.histogram(HISTOGRAM_TAGS[0], tf.boolean_mask(lengths, present),
                       step=step)
  tf.summary.histogram(HISTOGRAM_TAGS[1],
                       tf.boolean_mask(lengths, tf.logical_not(present)),
                       step=step)
  if 'coupling' in outputs:
    tf.summary.histogram(HISTOGRAM_TAGS[2], outputs['coupling'], step=step)
  if images is not None and 'reconstructions' in outputs:
    tf.summary.image(IMAGE_TAG, image_grid(images, outputs['reconstructions']),
                     step=step, max_outputs=8)


def write_scalars(step, scalars):
  """Writes a dict of name → float to the default summary writer."""
  for name, value in scalars.items():
    tf.summary.scalar(name, value, step=step)


def write_hparams(logdir, values, trial_id):
  """Records a run's HParams (a session start) at the top of its TensorBoard
  directory `logdir`; its metrics are the eval/ and train/ scalars."""
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    # The experiment's columns: this run's settings, and the metrics the
    # HParams tab reads from its eval/ and train/ scalars.
    hparams_api.hparams_config(
        hparams=[hparams_api.HParam(name) for name in values],
        metrics=[hparams_api.Metric(tag, group=group,
                                    display_name=f'{group} {tag}')
                 for group, tag in HPARAMS_METRICS])
    hparams_api.hparams(values, trial_id=trial_id)
  writer.close()
