"""Property tests: the file readers, fed random and mutated bytes, only ever
return valid data or raise the project's own DataError."""

import gzip

from hypothesis import given, settings, strategies as st, HealthCheck
import numpy as np
import scipy.io

from pipeline.data import affnist, idx
from pipeline.data.base import DataError

from helpers import idx_bytes

_VALID_IDX = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


def _check_idx(data):
  try:
    array = idx.parse_idx(data, 'fuzz')
  except DataError:
    return
  # Whatever parses is consistent with its own header.
  ndim = data[3]
  assert array.ndim == ndim
  assert array.size * array.dtype.itemsize == len(data) - 4 - 4 * ndim


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes(data):
  _check_idx(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID_IDX) - 1),
                          st.integers(0, 255)), max_size=6),
       st.integers(0, len(_VALID_IDX)))
def test_mutated_idx(mutations, cut):
  data = bytearray(_VALID_IDX)
  for pos, value in mutations:
    data[pos] = value
  _check_idx(bytes(data[:cut]))


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_gzip_files(tmp_path, data):
  path = tmp_path / 'f-idx1-ubyte.gz'
  path.write_bytes(data)
  try:
    idx.read_idx(str(path))
  except DataError:
    pass
  path.write_bytes(gzip.compress(data))
  try:
    idx.read_idx(str(path))
  except DataError:
    pass


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_mat_files(tmp_path, data):
  path = tmp_path / 'a.mat'
  scipy.io.savemat(str(path), {'affNISTdata': {
      'image': np.zeros([1600, 2], np.uint8),
      'label_int': np.array([[1, 2]], np.uint8)}})
  raw = bytearray(path.read_bytes())
  for _ in range(data.draw(st.integers(1, 8))):
    raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(
        st.integers(0, 255))
  raw = raw[:data.draw(st.integers(0, len(raw)))]
  path.write_bytes(bytes(raw))
  try:
    split = affnist.read_affnist_mat(str(path))
  except DataError:
    return
  assert split.images.shape[1:] == (40, 40, 1)
  assert len(split.images) == len(split.labels)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
