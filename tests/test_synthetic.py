"""Tests of pipeline.data.synthetic."""

import numpy as np
import pytest

from pipeline.data import synthetic
from pipeline.data.base import DataError


def test_shape_balance_and_determinism():
  a = synthetic.synthetic_split((24, 20, 3), 4, 100, seed=3)
  b = synthetic.synthetic_split((24, 20, 3), 4, 100, seed=3)
  assert a.images.shape == (100, 24, 20, 3) and a.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(a.labels), [25] * 4)
  np.testing.assert_array_equal(a.images, b.images)
  c = synthetic.synthetic_split((24, 20, 3), 4, 100, seed=4)
  assert not np.array_equal(a.images, c.images)


def test_classes_are_separable_by_nearest_mean():
  train = synthetic.synthetic_split((20, 20, 1), 5, 500, seed=0)
  test = synthetic.synthetic_split((20, 20, 1), 5, 200, seed=1)
  flat = lambda x: x.reshape(len(x), -1).astype(np.float32)
  means = np.stack([flat(train.images)[train.labels == k].mean(0)
                    for k in range(5)])
  d = ((flat(test.images)[:, None] - means[None]) ** 2).sum(-1)
  assert (d.argmin(1) == test.labels).mean() > 0.6


@pytest.mark.parametrize('shape', [(4, 4, 1), (20, 20), (20, 20, 0)])
def test_bad_shapes(shape):
  with pytest.raises(DataError, match='shape'):
    synthetic.synthetic_split(shape, 3, 10)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
