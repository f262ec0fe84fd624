"""Tests of pipeline.data.affnist on a tiny .mat file in affNIST's layout."""

import numpy as np
import pytest
import scipy.io

from pipeline.data import affnist
from pipeline.data.base import DataError


def _write(path, images, labels):
  struct = {'image': images.reshape(len(images), -1).T,
            'label_int': labels[None, :].astype(np.uint8)}
  scipy.io.savemat(str(path), {'affNISTdata': struct})


def test_reads_images_and_labels(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, [5, 40, 40], dtype=np.uint8)
  labels = np.array([3, 1, 4, 1, 5])
  _write(tmp_path / '1.mat', images, labels)
  _write(tmp_path / '2.mat', images[:2], labels[:2])
  split = affnist.read_affnist_mat(str(tmp_path / '1.mat'))
  np.testing.assert_array_equal(split.images[..., 0], images)
  np.testing.assert_array_equal(split.labels, labels)
  both = affnist.load_affnist_dir(str(tmp_path))
  assert len(both) == 7


def test_bad_files(tmp_path):
  bad = tmp_path / 'bad.mat'
  bad.write_bytes(b'garbage' * 20)
  with pytest.raises(DataError, match='bad.mat'):
    affnist.read_affnist_mat(str(bad))
  scipy.io.savemat(str(tmp_path / 'other.mat'), {'x': np.zeros(3)})
  with pytest.raises(DataError, match='no affNISTdata'):
    affnist.read_affnist_mat(str(tmp_path / 'other.mat'))
  _write(tmp_path / 'short.mat', np.zeros([2, 20, 20], np.uint8),
         np.array([1, 2]))
  with pytest.raises(DataError, match='1600 x N'):
    affnist.read_affnist_mat(str(tmp_path / 'short.mat'))
  with pytest.raises(DataError, match='does not exist'):
    affnist.load_affnist_dir(str(tmp_path / 'none'))
  with pytest.raises(DataError, match='does not exist'):
    affnist.read_affnist_mat(str(tmp_path / 'none.mat'))
