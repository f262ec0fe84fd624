"""Tests of pipeline.metrics: top-k accuracy as training and scoring count it."""

import numpy as np
import tensorflow as tf

from pipeline import metrics


def test_accuracy_hits_k_hot():
  labels = tf.constant([[1., 1., 0., 0.], [0., 1., 0., 1.], [1., 0., 0., 0.]])
  lengths = tf.constant([[.9, .8, .1, .0], [.9, .8, .1, .7], [.2, .3, .1, 0]])
  np.testing.assert_array_equal(
      metrics.accuracy_hits(labels, lengths).numpy(), [1., 0., 0.])


def test_an_example_without_a_true_class_is_never_a_hit():
  # A label outside the classes one-hot encodes to zeros; top-0 of any
  # scores "matches" it, which must not count.
  labels = tf.one_hot([10, -1, 2], 4)
  lengths = tf.constant([[.9, .1, .1, .1], [.1, .1, .1, .1], [.1, .1, .9, 0]])
  np.testing.assert_array_equal(
      metrics.accuracy_hits(labels, lengths).numpy(), [0., 0., 1.])


def test_accuracy_hits_accepts_numpy_and_matches_a_sort():
  rng = np.random.default_rng(0)
  scores = rng.random([64, 10]).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
  expected = (scores.argmax(1) == labels.argmax(1)).astype(np.float32)
  np.testing.assert_array_equal(metrics.accuracy_hits(labels, scores).numpy(),
                                expected)


def test_predicted_classes_top_k():
  scores = tf.constant([[.1, .5, .3, .9]])
  np.testing.assert_array_equal(metrics.predicted_classes(scores, 2).numpy(),
                                [[0., 1., 0., 1.]])


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
