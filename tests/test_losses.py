"""Tests of pipeline.losses."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import losses


def test_margin_loss_hand_computed():
  labels = tf.constant([[0., 1., 0.], [1., 0., 0.]])
  lengths = tf.constant([[0.2, 0.7, 0.05], [0.95, 0.5, 0.3]])
  # Example 1: present 0.7 → (0.9-0.7)^2 = 0.04; absent 0.2 → 0.5*(0.1)^2
  # = 0.005; absent 0.05 → 0.  Example 2: present 0.95 → 0; absent 0.5 →
  # 0.5*0.16 = 0.08; absent 0.3 → 0.5*0.04 = 0.02.
  np.testing.assert_allclose(losses.margin_loss(labels, lengths).numpy(),
                             [0.045, 0.1], rtol=1e-5)


def test_margin_loss_k_hot_and_parameters():
  labels = tf.constant([[1., 1., 0.]])
  lengths = tf.constant([[0.5, 0.8, 0.4]])
  expected = (0.9 - 0.5) ** 2 + (0.9 - 0.8) ** 2 + 0.5 * (0.4 - 0.1) ** 2
  np.testing.assert_allclose(losses.margin_loss(labels, lengths).numpy(),
                             [expected], rtol=1e-5)
  custom = (0.95 - 0.5) ** 2 + (0.95 - 0.8) ** 2 + 0.25 * (0.4 - 0.05) ** 2
  np.testing.assert_allclose(
      losses.margin_loss(labels, lengths, 0.95, 0.05, 0.25).numpy(), [custom],
      rtol=1e-5)


def test_margin_loss_zero_when_margins_met():
  labels = tf.one_hot([0, 2], 3)
  lengths = tf.constant([[0.95, 0.05, 0.0], [0.0, 0.09, 0.99]])
  np.testing.assert_allclose(losses.margin_loss(labels, lengths).numpy(), 0.0)


def test_margin_loss_shape_mismatch():
  with pytest.raises(ValueError, match='one-hot or k-hot'):
    losses.margin_loss(tf.constant([1, 2]), tf.zeros([2, 10]))


def test_reconstruction_loss_is_sum_of_squares_per_example():
  images = tf.zeros([2, 2, 2, 1])
  recon = tf.constant([[[[1.], [0.]], [[0.], [0.]]],
                       [[[0.5], [0.5]], [[0.5], [0.5]]]])
  np.testing.assert_allclose(
      losses.reconstruction_loss(images, recon).numpy(), [1.0, 1.0])


def test_softmax_cross_entropy_one_hot_and_k_hot():
  logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  log_p = tf.nn.log_softmax(logits).numpy()
  one_hot = tf.constant([[1.0, 0, 0], [0, 0, 1.0]])
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(one_hot, logits).numpy(),
      [-log_p[0, 0], -log_p[1, 2]], rtol=1e-6)
  k_hot = tf.constant([[1.0, 1.0, 0], [0, 1.0, 1.0]])
  np.testing.assert_allclose(
      losses.softmax_cross_entropy(k_hot, logits).numpy(),
      [-(log_p[0, 0] + log_p[0, 1]) / 2, -(log_p[1, 1] + log_p[1, 2]) / 2],
      rtol=1e-6)
  with pytest.raises(ValueError, match='logits'):
    losses.softmax_cross_entropy(one_hot, tf.zeros([2, 4]))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
