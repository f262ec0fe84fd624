"""Tests of pipeline.data.augment."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.data import augment


def _seed(n):
  return tf.constant([n, 0], tf.int64)


def _point_images(batch, size=12, y=5, x=6):
  images = np.zeros([batch, size, size, 1], np.float32)
  images[:, y, x, 0] = 1.0
  return tf.constant(images)


def test_shift_stays_in_bounds_and_covers_all_offsets():
  k = 2
  out = augment.random_shift(_point_images(2000), k, _seed(3)).numpy()
  pos = out[..., 0].reshape(2000, -1).argmax(1)
  dy, dx = pos // 12 - 5, pos % 12 - 6
  assert np.abs(dy).max() <= k and np.abs(dx).max() <= k
  assert len(set(zip(dy.tolist(), dx.tolist()))) == (2 * k + 1) ** 2


def test_shift_keeps_pixel_sum_away_from_border():
  rng = np.random.default_rng(0)
  images = np.zeros([50, 28, 28, 1], np.float32)
  images[:, 6:22, 6:22] = rng.uniform(size=[50, 16, 16, 1])
  out = augment.random_shift(tf.constant(images), 2, _seed(1)).numpy()
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)),
                             images.sum(axis=(1, 2, 3)), rtol=1e-5)
  assert not np.allclose(out, images)


def test_shift_zero_is_identity_and_seed_is_deterministic():
  images = tf.random.uniform([4, 10, 10, 1], seed=1)
  assert augment.random_shift(images, 0, _seed(1)) is images
  a = augment.random_shift(images, 2, _seed(9)).numpy()
  b = augment.random_shift(images, 2, _seed(9)).numpy()
  np.testing.assert_array_equal(a, b)


def test_random_place_keeps_whole_image_on_canvas():
  images = tf.ones([300, 28, 28, 1])
  out = augment.random_place(images, 40, _seed(2)).numpy()
  assert out.shape == (300, 40, 40, 1)
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 28 * 28)
  rows = out[..., 0].max(axis=2).argmax(axis=1)
  assert rows.min() == 0 and rows.max() == 12
  with pytest.raises(ValueError, match='canvas_size'):
    augment.random_place(images, 20, _seed(2))


def test_crop_batch_offsets():
  images = tf.reshape(tf.range(2 * 6 * 6, dtype=tf.float32), [2, 6, 6, 1])
  out = augment.crop_batch(images, (2, 3), tf.constant([0, 4]),
                           tf.constant([1, 3])).numpy()
  np.testing.assert_array_equal(out[0, ..., 0], images.numpy()[0, 0:2, 1:4, 0])
  np.testing.assert_array_equal(out[1, ..., 0], images.numpy()[1, 4:6, 3:6, 0])


def test_overlay_modes():
  a, b = tf.constant([0.2, 0.8]), tf.constant([0.5, 0.5])
  np.testing.assert_allclose(augment.overlay(a, b, 'max').numpy(), [0.5, 0.8])
  np.testing.assert_allclose(augment.overlay(a, b, 'sum').numpy(), [0.7, 1.0])
  with pytest.raises(ValueError, match='overlay'):
    augment.overlay(a, b, 'mean')


def test_standardize_and_brightness_contrast():
  images = tf.random.uniform([3, 8, 8, 2], seed=4)
  out = augment.standardize(
      augment.brightness_contrast(images, _seed(5))).numpy()
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-3)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
