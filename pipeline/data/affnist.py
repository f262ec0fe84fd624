"""Readers of affNIST test sets: the real `.mat` files, or IDX files.

affNIST ships `affNISTdata` structs with `image` (1600 x N uint8: one 40x40
image per column, rows of the image laid end to end) and `label_int` (1 x N).
A directory may hold one file (`test.mat`) or the 32 batches (`1.mat`...).
A directory with `t10k-images-idx3-ubyte(.gz)` instead is read as IDX: the
affNIST-style sets `pipeline.make_affnist` writes.
"""

import glob
import os

import numpy as np
import scipy.io

from pipeline.data import idx
from pipeline.data.base import ArraySplit, DataError

AFFNIST_SIZE = 40


def read_affnist_mat(path):
  """Reads one affNIST `.mat` file.

  Returns:
    An `ArraySplit`: uint8 images `[N, 40, 40, 1]`, int64 labels `[N]`.

  Raises:
    DataError: for a missing, unreadable or wrongly laid out file.
  """
  try:
    mat = scipy.io.loadmat(path)
  except FileNotFoundError as e:
    raise DataError(f'affNIST file {path} does not exist.') from e
  except Exception as e:  # scipy raises several types for corrupt files.
    raise DataError(f'{path}: not a readable MATLAB .mat file ({e}).') from e
  if 'affNISTdata' not in mat:
    raise DataError(f'{path}: no affNISTdata struct (has '
                    f'{sorted(k for k in mat if not k.startswith("__"))}).')
  data = mat['affNISTdata']
  try:
    images = np.asarray(data['image'][0, 0])
    labels = np.asarray(data['label_int'][0, 0]).reshape(-1)
  except (ValueError, IndexError, KeyError) as e:
    raise DataError(f'{path}: affNISTdata lacks image/label_int ({e}).') from e
  if images.ndim != 2 or images.shape[0] != AFFNIST_SIZE * AFFNIST_SIZE:
    raise DataError(f'{path}: image must be 1600 x N, got {images.shape}.')
  if images.shape[1] != labels.shape[0]:
    raise DataError(f'{path}: {images.shape[1]} images but {labels.shape[0]} '
                    'labels.')
  images = images.T.reshape(-1, AFFNIST_SIZE, AFFNIST_SIZE, 1)
  return ArraySplit(images.astype(np.uint8), labels.astype(np.int64))


def load_affnist_dir(data_dir):
  """Reads a directory's IDX test files, else every `.mat` file (by name)."""
  if not os.path.isdir(data_dir):
    raise DataError(f'affNIST directory {data_dir} does not exist; pass '
                    '--affnist_dir holding test.mat or the numbered batches, '
                    'or the IDX files of python -m pipeline.make_affnist.')
  stem = os.path.join(data_dir, idx.IDX_FILES['test'][0])
  if os.path.exists(stem) or os.path.exists(stem + '.gz'):
    return ArraySplit(*idx.load_idx_split(data_dir, 'test'))
  paths = sorted(glob.glob(os.path.join(data_dir, '*.mat')),
                 key=lambda p: (len(p), p))
  if not paths:
    raise DataError(f'{data_dir} holds neither .mat files of affNIST nor '
                    't10k-images-idx3-ubyte(.gz).')
  splits = [read_affnist_mat(p) for p in paths]
  return ArraySplit(np.concatenate([s.images for s in splits]),
                    np.concatenate([s.labels for s in splits]))
