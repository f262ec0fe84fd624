"""Tests of pipeline.data.affine: the affNIST-style transforms."""

import numpy as np
import pytest

from pipeline.data import affine
from pipeline.data.base import DataError


def _bar():
  image = np.zeros([28, 28], np.uint8)
  image[4:24, 12:16] = 200  # a vertical bar, 20 x 4
  return image


def test_identity_centres_the_image_unchanged():
  out = affine.warp(_bar().astype(float), np.eye(2), 40)
  np.testing.assert_allclose(out[6:34, 6:34], _bar(), atol=1e-9)
  assert out.sum() == pytest.approx(_bar().sum())


def test_rotation_by_90_degrees_turns_the_bar():
  out = affine.warp(_bar().astype(float), affine.affine_matrix(90, 0, 1, 1),
                    41)
  rows = np.flatnonzero(out.max(1) > 100)
  cols = np.flatnonzero(out.max(0) > 100)
  # 20 tall x 4 wide becomes about 4 tall x 20 wide.
  assert rows.size <= 6 and cols.size >= 18


def test_scale_changes_extent():
  big = affine.warp(_bar().astype(float), affine.affine_matrix(0, 0, 1.2, 1),
                    40)
  assert (big.max(1) > 100).sum() == pytest.approx(24, abs=1)


def test_translate_keeps_the_whole_object():
  rng = np.random.default_rng(0)
  image = np.zeros([40, 40], np.uint8)
  image[10:30, 18:22] = 1
  for _ in range(50):
    out = affine.translate_within(image, rng)
    assert out.sum() == image.sum()
  assert affine.translate_within(np.zeros([5, 5]), rng).sum() == 0


def test_split_is_seeded_and_within_ranges():
  images = np.stack([_bar()] * 30)[..., None]
  labels = np.arange(30) % 10
  first, params = affine.affine_split(images, labels, seed=5)
  again, _ = affine.affine_split(images, labels, seed=5)
  other, _ = affine.affine_split(images, labels, seed=6)
  assert first.images.shape == (30, 40, 40, 1)
  assert first.images.dtype == np.uint8
  np.testing.assert_array_equal(first.images, again.images)
  assert not np.array_equal(first.images, other.images)
  np.testing.assert_array_equal(first.labels, labels)
  assert np.abs(params['rotation_degrees']).max() <= 20
  assert np.abs(params['shear']).max() <= 0.2
  for key in ('scale_y', 'scale_x'):
    assert 0.8 <= params[key].min() and params[key].max() <= 1.2
  # The images differ from one another: each got its own transform.
  assert len({im.tobytes() for im in first.images}) == 30


def test_bad_inputs():
  with pytest.raises(DataError, match='canvas'):
    affine.affine_split(np.zeros([1, 44, 44], np.uint8), [0], 40)
  with pytest.raises(DataError, match='min_scale'):
    affine.AffineRanges(min_scale=1.5, max_scale=1.0)
  for name in ('max_rotation_degrees', 'max_shear', 'min_scale', 'max_scale'):
    for value in (float('nan'), float('inf')):
      with pytest.raises(DataError, match=f'{name} must be a finite number'):
        affine.AffineRanges(**{name: value})


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
