"""Tests of pipeline.data.smallnorb: the 32x32 crops of the 48x48 pairs."""

import numpy as np
import tensorflow as tf

from pipeline.data import sources
from pipeline.data.base import ArraySplit
from pipeline.data.smallnorb import CROP, SmallNORB

SPEC = sources.DataSpec(dataset='smallnorb')


def _batch(training, seed=(1, 2)):
  rng = np.random.default_rng(0)
  data = ArraySplit(rng.integers(0, 256, (4, 48, 48, 2), dtype=np.uint8),
                    np.arange(4) % 5)
  x = tf.constant(data.images, tf.float32) / 255.0
  fn = SmallNORB().batch_fn(SPEC, data, tf.constant(data.images), 5, training)
  return x, fn(x, tf.constant(data.labels), tf.constant(seed, tf.int64))


def test_evaluation_crops_the_centre_and_standardizes():
  x, out = _batch(False)
  centre = x[:, 8:40, 8:40].numpy()
  np.testing.assert_allclose(out['targets'].numpy(), centre, atol=1e-6)
  image = out['image'].numpy()
  assert image.shape == (4, CROP, CROP, 2)
  np.testing.assert_allclose(image.reshape(4, -1).mean(axis=1), 0, atol=1e-4)


def test_training_crops_at_random_and_jitters():
  _, one = _batch(True, (1, 2))
  _, other = _batch(True, (3, 4))
  assert one['image'].shape == (4, CROP, CROP, 2)
  assert not np.allclose(one['targets'].numpy(), other['targets'].numpy())
  _, again = _batch(True, (1, 2))
  np.testing.assert_array_equal(one['image'].numpy(), again['image'].numpy())


def test_the_shape_and_classes_the_model_sees():
  assert SmallNORB().output_shape(SPEC, (48, 48, 2)) == (32, 32, 2)
  assert SmallNORB().classes(SPEC) == 5 and SmallNORB().viewpoints


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
