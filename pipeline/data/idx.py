"""Reader and writer of IDX files (the MNIST file format), raw or gzipped."""

import gzip
import os
import struct

import numpy as np

from pipeline.core import atomic
from pipeline.data.base import DataError

# Third byte of the magic number → element type (big-endian in the file).
_IDX_DTYPES = {
    0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8'),
}

# The four files of an MNIST-layout directory, by split.
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def parse_idx(data, name='<bytes>'):
  """Parses the bytes of one IDX file.

  Args:
    data: the (decompressed) file contents.
    name: the file name, for error messages.

  Returns:
    A numpy array with the file's shape, in native byte order.

  Raises:
    DataError: on a bad magic number, a truncated file or trailing bytes.
  """
  if len(data) < 4:
    raise DataError(f'{name}: too short for an IDX header ({len(data)} bytes).')
  zero, type_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise DataError(
        f'{name}: not an IDX file (magic number {data[:4].hex()}; expected '
        '0000 then a type code 08/09/0b/0c/0d/0e and a dimension count).')
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'{name}: truncated IDX header (needs {header} bytes, '
                    f'has {len(data)}).')
  shape = struct.unpack(f'>{ndim}I', data[4:header])
  dtype = _IDX_DTYPES[type_code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise DataError(
        f'{name}: IDX header says shape {shape} of {dtype.name} '
        f'({expected} bytes of data) but the file holds {len(data) - header}; '
        'the file is truncated or corrupt.')
  array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='), copy=False)


def read_idx(path):
  """Reads an IDX file; a `.gz` file is decompressed.

  Raises:
    DataError: if the file is missing, not gzip where named `.gz`, or invalid.
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise DataError(f'Cannot read IDX file {path}: {e.strerror}.') from e
  if path.endswith('.gz'):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, ValueError) as e:
      raise DataError(f'{path}: not a valid gzip file ({e}).') from e
  return parse_idx(data, path)


def _find(data_dir, stem):
  for name in (stem, stem + '.gz'):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise DataError(
      f'{data_dir} has no {stem} or {stem}.gz. An IDX data directory holds '
      'the four MNIST-layout files (train-images-idx3-ubyte, '
      'train-labels-idx1-ubyte, t10k-images-idx3-ubyte, '
      't10k-labels-idx1-ubyte, raw or .gz); on Debian, '
      '`apt-get install dataset-fashion-mnist` puts Fashion-MNIST in '
      '/usr/share/datasets/fashion-mnist.')


def has_split(data_dir, split):
  """Whether `data_dir` holds `split`'s images file (raw or .gz): a split
  `write_idx_split` wrote is whole once that file is there."""
  return any(os.path.exists(os.path.join(data_dir, IDX_FILES[split][0] + ext))
             for ext in ('', '.gz'))


def load_idx_split(data_dir, split):
  """Loads one split of an MNIST-layout IDX directory.

  Args:
    data_dir: the directory.
    split: 'train' or 'test'.

  Returns:
    `(images uint8 [N, H, W, 1], labels int64 [N])`.

  Raises:
    DataError: for a missing directory or file, bad files, or counts that
      differ between images and labels.
  """
  if not os.path.isdir(data_dir):
    raise DataError(f'IDX data directory {data_dir} does not exist; pass '
                    '--data_dir pointing at the MNIST-layout files.')
  if split not in IDX_FILES:
    raise DataError(f'IDX split must be one of {sorted(IDX_FILES)}, got '
                    f'{split!r}.')
  image_path = _find(data_dir, IDX_FILES[split][0])
  label_path = _find(data_dir, IDX_FILES[split][1])
  images = read_idx(image_path)
  labels = read_idx(label_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DataError(f'{image_path}: expected uint8 images [N, H, W], got '
                    f'{images.dtype} {images.shape}.')
  if labels.ndim != 1:
    raise DataError(f'{label_path}: expected labels [N], got {labels.shape}.')
  if len(images) != len(labels):
    raise DataError(f'{image_path} holds {len(images)} images but '
                    f'{label_path} holds {len(labels)} labels.')
  return images[..., None], labels.astype(np.int64)


def idx_bytes(array):
  """Encodes a uint8 array as the bytes of an IDX file."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise DataError(f'Only uint8 arrays are written as IDX, got {array.dtype}.')
  header = struct.pack('>HBB', 0, 0x08, array.ndim)
  header += struct.pack(f'>{array.ndim}I', *array.shape)
  return header + array.tobytes()


def write_idx_split(data_dir, split, images, labels):
  """Writes one split as gzipped MNIST-layout IDX files; returns their paths.

  Args:
    data_dir: the directory (created if missing).
    split: 'train' or 'test'.
    images: uint8 `[N, H, W]` or `[N, H, W, 1]`.
    labels: integer labels `[N]` in [0, 255].
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  labels = np.asarray(labels)
  if images.ndim != 3 or len(images) != len(labels):
    raise DataError(f'Expected images [N, H, W] and labels [N], got '
                    f'{images.shape} and {labels.shape}.')
  if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
    raise DataError('IDX labels are written as uint8: they must lie in '
                    '[0, 255].')
  os.makedirs(data_dir, exist_ok=True)
  paths = []
  # Each file whole or not at all, the labels first: a split whose images
  # file exists is complete, even if the writer was killed half-way.
  image_stem, label_stem = IDX_FILES[split]
  for stem, array in ((label_stem, labels.astype(np.uint8)),
                      (image_stem, images)):
    path = os.path.join(data_dir, stem + '.gz')
    # mtime=0: the same arrays always give the same bytes.
    atomic.write_atomic(path, gzip.compress(idx_bytes(array), mtime=0))
    paths.append(path)
  return paths[::-1]  # Images, then labels.
