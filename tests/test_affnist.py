"""Tests of pipeline.data.affnist on tiny .mat files and IDX directories."""

import dataclasses

import numpy as np
import pytest
import scipy.io

from pipeline.data import affnist, idx, input_pipeline, sources
from pipeline.data.base import DataError

from helpers import write_idx_dir


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


def test_reads_an_idx_directory_before_mat_files(tmp_path):
  images = np.arange(3 * 40 * 40, dtype=np.uint64).reshape(3, 40, 40) % 256
  idx.write_idx_split(str(tmp_path), 'test', images.astype(np.uint8),
                      np.array([7, 0, 2]))
  split = affnist.load_affnist_dir(str(tmp_path))
  assert split.images.shape == (3, 40, 40, 1)
  np.testing.assert_array_equal(split.labels, [7, 0, 2])


def test_affnist_source_uses_the_idx_test_set_and_checks_its_size(tmp_path):
  base = tmp_path / 'base'
  write_idx_dir(str(base), n_train=20, n_test=10)
  affine_dir = tmp_path / 'affine'
  idx.write_idx_split(str(affine_dir), 'test',
                      np.full([4, 40, 40], 9, np.uint8), np.arange(4))
  spec = sources.DataSpec(dataset='affnist', base_dataset='fashion_mnist',
                          data_source='idx', data_dir=str(base),
                          affnist_dir=str(affine_dir))
  source = sources.open_source(spec)
  assert source.info.split_sizes == {'train': 20, 'test': 4}
  batch = next(iter(input_pipeline.make_dataset(source, 'test', 4, False)))
  np.testing.assert_allclose(batch['image'].numpy(), 9 / 255, rtol=1e-6)
  with pytest.raises(DataError, match='canvas_size'):
    sources.open_source(dataclasses.replace(spec, canvas_size=36))


def test_a_file_that_crashes_the_reader_is_one_error(tmp_path, monkeypatch):
  """scipy's reader can segfault on a malformed .mat; it runs in a child
  process, so the crash is an error naming the file, not a dead run."""
  path = tmp_path / 'crash.mat'
  path.write_bytes(b'MATLAB 5.0 MAT-file')
  monkeypatch.setattr(affnist, '_LOAD_MAT',
                      'import os, signal; os.kill(os.getpid(), '
                      'signal.SIGSEGV)')
  with pytest.raises(DataError, match=r'crash\.mat: not a readable MATLAB '
                     r'\.mat file \(its reader crashed on it, signal 11\)'):
    affnist.read_affnist_mat(str(path))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
