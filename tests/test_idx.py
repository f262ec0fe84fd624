"""Tests of pipeline.data.idx on IDX files the tests write."""

import gzip
import os

import numpy as np
import pytest

from pipeline.data import idx
from pipeline.data.base import DataError

from helpers import idx_bytes, write_idx_dir


@pytest.mark.parametrize('gz', [True, False])
def test_reads_what_was_written(tmp_path, gz):
  written = write_idx_dir(tmp_path, gz=gz)
  for split in ('train', 'test'):
    images, labels = idx.load_idx_split(str(tmp_path), split)
    np.testing.assert_array_equal(images[..., 0], written[split][0])
    np.testing.assert_array_equal(labels, written[split][1])
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_parse_other_dtypes():
  data = b'\x00\x00\x0c\x01' + (2).to_bytes(4, 'big') + np.array(
      [7, -3], '>i4').tobytes()
  np.testing.assert_array_equal(idx.parse_idx(data), [7, -3])


@pytest.mark.parametrize('data,match', [
    (b'\x01\x02\x08\x01' + b'\x00' * 8, 'magic number'),
    (b'\x00\x00\x77\x01' + b'\x00' * 8, 'magic number'),
    (b'\x00\x00', 'too short'),
    (b'\x00\x00\x08\x03\x00\x00', 'truncated IDX header'),
    (idx_bytes(np.zeros([4, 3], np.uint8))[:-1], 'truncated or corrupt'),
    (idx_bytes(np.zeros([4, 3], np.uint8)) + b'\x00', 'truncated or corrupt'),
])
def test_bad_files_are_refused_with_their_name(data, match):
  with pytest.raises(DataError, match=match) as e:
    idx.parse_idx(data, name='some/file')
  assert 'some/file' in str(e.value)


def test_missing_directory_and_file(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    idx.load_idx_split(str(tmp_path / 'nope'), 'train')
  with pytest.raises(DataError, match='train-images-idx3-ubyte'):
    idx.load_idx_split(str(tmp_path), 'train')
  with pytest.raises(DataError, match='split'):
    idx.load_idx_split(str(tmp_path), 'valid')


def test_count_mismatch(tmp_path):
  write_idx_dir(tmp_path, gz=False)
  with open(tmp_path / 'train-labels-idx1-ubyte', 'wb') as f:
    f.write(idx_bytes(np.zeros([3], np.uint8)))
  with pytest.raises(DataError, match='40 images but .* 3 labels'):
    idx.load_idx_split(str(tmp_path), 'train')


def test_bad_gzip(tmp_path):
  path = tmp_path / 'x-idx1-ubyte.gz'
  path.write_bytes(b'not gzip at all')
  with pytest.raises(DataError, match='gzip'):
    idx.read_idx(str(path))
  path.write_bytes(gzip.compress(idx_bytes(np.arange(5, dtype=np.uint8))))
  np.testing.assert_array_equal(idx.read_idx(str(path)), np.arange(5))


@pytest.mark.skipif(not os.path.isdir('/usr/share/datasets/fashion-mnist'),
                    reason='Debian dataset-fashion-mnist not installed')
def test_reads_debian_fashion_mnist():
  images, labels = idx.load_idx_split('/usr/share/datasets/fashion-mnist',
                                      'test')
  assert images.shape == (10000, 28, 28, 1)
  assert sorted(np.unique(labels)) == list(range(10))


def test_write_idx_split_round_trips_and_is_byte_stable(tmp_path):
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, [6, 5, 7, 1], dtype=np.uint8)
  labels = np.array([0, 9, 3, 3, 1, 2])
  paths = idx.write_idx_split(str(tmp_path / 'a'), 'test', images, labels)
  got_images, got_labels = idx.load_idx_split(str(tmp_path / 'a'), 'test')
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  again = idx.write_idx_split(str(tmp_path / 'b'), 'test', images, labels)
  for p, q in zip(paths, again):
    assert open(p, 'rb').read() == open(q, 'rb').read()


def test_a_write_killed_half_way_leaves_no_split_that_looks_whole(
    tmp_path, monkeypatch):
  images = np.zeros([3, 4, 4], np.uint8)
  real = idx.idx_bytes
  def fail_on_images(array):
    if array.ndim == 3:  # The labels are written first, then this.
      raise KeyboardInterrupt
    return real(array)
  monkeypatch.setattr(idx, 'idx_bytes', fail_on_images)
  with pytest.raises(KeyboardInterrupt):
    idx.write_idx_split(str(tmp_path), 'test', images, np.zeros([3]))
  assert os.listdir(tmp_path) == ['t10k-labels-idx1-ubyte.gz']
  assert not idx.has_split(str(tmp_path), 'test')
  monkeypatch.setattr(idx, 'idx_bytes', real)
  idx.write_idx_split(str(tmp_path), 'test', images, np.zeros([3]))
  assert idx.has_split(str(tmp_path), 'test')
  assert sorted(os.listdir(tmp_path)) == ['t10k-images-idx3-ubyte.gz',
                                          't10k-labels-idx1-ubyte.gz']


def test_write_idx_split_refuses_bad_arrays(tmp_path):
  with pytest.raises(DataError, match='uint8'):
    idx.idx_bytes(np.zeros([2], np.float32))
  with pytest.raises(DataError, match=r'\[N, H, W\]'):
    idx.write_idx_split(str(tmp_path), 'test', np.zeros([2, 3, 3], np.uint8),
                        np.zeros([3]))
  with pytest.raises(DataError, match='255'):
    idx.write_idx_split(str(tmp_path), 'test', np.zeros([1, 3, 3], np.uint8),
                        np.array([256]))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
