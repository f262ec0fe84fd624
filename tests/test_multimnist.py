"""Tests of pipeline.data.multimnist."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import multimnist
from pipeline.data.base import DataError


def test_partners_have_other_classes():
  labels = np.arange(200) % 10
  table = multimnist.class_table(labels, 10)
  query = tf.constant(labels[:100], tf.int64)
  partner = multimnist.partner_indices(query, table, 10,
                                       tf.constant([1, 2], tf.int64)).numpy()
  assert (labels[partner] != labels[:100]).all()
  assert len(set(labels[partner].tolist())) == 10


def test_class_without_examples():
  with pytest.raises(DataError, match='classes \\[2\\]'):
    multimnist.class_table(np.array([0, 1, 0, 1]), 3)


def test_compose_pairs():
  first = tf.ones([4, 28, 28, 1]) * 0.6
  second = tf.ones([4, 28, 28, 1]) * 0.3
  out = multimnist.compose_pairs(first, second, tf.constant([1, 2, 3, 4]),
                                 tf.constant([5, 6, 7, 8]), 10, 36, 'max',
                                 tf.constant([0, 1], tf.int64))
  assert out['image'].shape == (4, 36, 36, 1)
  assert out['targets'].shape == (4, 2, 36, 36, 1)
  np.testing.assert_allclose(out['label'].numpy().sum(1), 2.0)
  np.testing.assert_allclose(
      out['image'].numpy(),
      np.maximum(out['targets'][:, 0].numpy(), out['targets'][:, 1].numpy()))
  np.testing.assert_allclose(out['targets'].numpy().sum(axis=(2, 3, 4)),
                             [[0.6 * 784, 0.3 * 784]] * 4, rtol=1e-5)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
