"""Tests of pipeline.data.stored: a stored set read from IDX files or TFDS,
as `--data_source` says."""

import numpy as np
import tensorflow_datasets as tfds

from pipeline.data import sources
from pipeline.data.stored import Stored

from helpers import write_idx_dir


def test_idx_reads_the_directory(tmp_path):
  written = write_idx_dir(tmp_path, n_train=8, n_test=4)
  spec = sources.DataSpec(dataset='mnist', data_source='idx',
                          data_dir=str(tmp_path))
  for split in ('train', 'test'):
    data = Stored(10).load(spec, split)
    np.testing.assert_array_equal(data.images[..., 0], written[split][0])
    np.testing.assert_array_equal(data.labels, written[split][1])


def test_tfds_reads_the_named_set():
  spec = sources.DataSpec(dataset='cifar10')
  with tfds.testing.mock_data(num_examples=5):
    data = Stored(10).load(spec, 'test')
  assert data.images.shape == (5, 32, 32, 3) and data.images.dtype == np.uint8


def test_the_class_count_is_the_entrys():
  spec = sources.DataSpec(dataset='cifar10')
  assert Stored(7).classes(spec) == 7
  assert Stored(7).output_shape(spec, (32, 32, 3)) == (32, 32, 3)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
