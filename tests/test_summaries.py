"""Tests of pipeline.core.summaries, read back with TensorBoard's event reader."""

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from pipeline.core import summaries


def _tags(logdir):
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def test_histograms_images_and_scalars_are_written(tmp_path):
  labels = tf.one_hot([0, 2, 1], 3)
  outputs = {'lengths': tf.constant([[.9, .1, .2], [.3, .2, .8],
                                     [.1, .7, .2]]),
             'coupling': tf.random.uniform([3, 5, 3]),
             'reconstructions': tf.random.uniform([3, 6, 6, 1])}
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    summaries.write_capsule_summaries(7, labels, outputs,
                                      tf.random.uniform([3, 6, 6, 1]))
    summaries.write_scalars(7, {'accuracy': 0.5})
  writer.flush()
  acc = _tags(tmp_path)
  tags = set(acc.Tags()['tensors'])
  assert set(summaries.HISTOGRAM_TAGS) <= tags
  assert {summaries.IMAGE_TAG, 'accuracy'} <= tags
  true_hist = tf.make_ndarray(
      acc.Tensors('capsule_length/true_class')[0].tensor_proto)
  # Bucket counts add up to the number of true-class lengths (3).
  assert true_hist[:, 2].sum() == 3


def test_image_grid_shapes():
  images = tf.zeros([10, 6, 5, 2])
  grid = summaries.image_grid(images, tf.ones([10, 6, 5, 2]), max_rows=4)
  assert grid.shape == (4, 6, 10, 1)
  multi = summaries.image_grid(tf.zeros([2, 6, 5, 1]),
                               tf.ones([2, 2, 6, 5, 1]) * 0.7)
  np.testing.assert_allclose(multi.numpy()[:, :, 5:], 1.0)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
