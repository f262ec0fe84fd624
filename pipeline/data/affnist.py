"""Readers of affNIST test sets: the real `.mat` files, or IDX files.

affNIST ships `affNISTdata` structs with `image` (1600 x N uint8: one 40x40
image per column, rows of the image laid end to end) and `label_int` (1 x N).
A directory may hold one file (`test.mat`) or the 32 batches (`1.mat`...).
A directory with `t10k-images-idx3-ubyte(.gz)` instead is read as IDX: the
affNIST-style sets `pipeline.research.make_affnist` writes.
"""

import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

from pipeline.data import augment, idx, stored
from pipeline.data.base import ArraySplit, DataError

AFFNIST_SIZE = 40

# Run in a child process: scipy's MATLAB reader can crash the process
# (segmentation fault) on a malformed file, and a data file must never take
# a training run down with it. The child writes what it read as .npz, or
# its error on stderr (exit 2).
_LOAD_MAT = r"""
import sys
import numpy as np
import scipy.io
try:
  mat = scipy.io.loadmat(sys.argv[1])
except FileNotFoundError:
  sys.exit(3)
except Exception as e:  # scipy raises several types for corrupt files.
  sys.stderr.write(f'{type(e).__name__}: {e}')
  sys.exit(2)
if 'affNISTdata' not in mat:
  sys.stderr.write('no affNISTdata struct (has %s)' % sorted(
      k for k in mat if not k.startswith('__')))
  sys.exit(4)
data = mat['affNISTdata']
try:
  images = np.asarray(data['image'][0, 0])
  labels = np.asarray(data['label_int'][0, 0]).reshape(-1)
except (ValueError, IndexError, KeyError, TypeError) as e:
  sys.stderr.write(f'affNISTdata lacks image/label_int ({e})')
  sys.exit(4)
if images.dtype.kind not in 'biuf' or labels.dtype.kind not in 'biuf':
  sys.stderr.write('affNISTdata image/label_int are not numeric arrays '
                   f'({images.dtype}, {labels.dtype})')
  sys.exit(4)
np.savez(sys.argv[2], images=images, labels=labels)
"""


def _load_mat(path):
  """`(images, labels)` arrays of an affNIST .mat file, read in a child
  process. Raises DataError naming the file for anything else."""
  with tempfile.TemporaryDirectory(prefix='affnist-') as tmp:
    out = os.path.join(tmp, 'arrays.npz')
    proc = subprocess.run([sys.executable, '-c', _LOAD_MAT, path, out],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 3:
      raise DataError(f'affNIST file {path} does not exist.')
    if proc.returncode == 4:
      raise DataError(f'{path}: {proc.stderr.strip()}.')
    if proc.returncode < 0:
      raise DataError(f'{path}: not a readable MATLAB .mat file (its reader '
                      f'crashed on it, signal {-proc.returncode}).')
    if proc.returncode:
      detail = proc.stderr.strip().splitlines()[-1:] or ['unknown error']
      raise DataError(f'{path}: not a readable MATLAB .mat file '
                      f'({detail[0]}).')
    try:
      with np.load(out) as arrays:
        return arrays['images'], arrays['labels']
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f'{path}: not a readable MATLAB .mat file ({e}).'
                      ) from None


def read_affnist_mat(path):
  """Reads one affNIST `.mat` file.

  Returns:
    An `ArraySplit`: uint8 images `[N, 40, 40, 1]`, int64 labels `[N]`.

  Raises:
    DataError: for a missing, unreadable or wrongly laid out file, also
      one that crashes scipy's reader (it runs in a child process).
  """
  images, labels = _load_mat(path)
  if images.ndim != 2 or images.shape[0] != AFFNIST_SIZE * AFFNIST_SIZE:
    raise DataError(f'{path}: image must be 1600 x N, got {images.shape}.')
  if images.shape[1] != labels.shape[0]:
    raise DataError(f'{path}: {images.shape[1]} images but {labels.shape[0]} '
                    'labels.')
  images = images.T.reshape(-1, AFFNIST_SIZE, AFFNIST_SIZE, 1)
  return ArraySplit(images.astype(np.uint8), labels.astype(np.int64))


def holds_test_set(data_dir):
  """Whether `data_dir` holds what `load_affnist_dir` reads: IDX test
  images (whole once there: see `idx.write_idx_split`) or `.mat` files."""
  return (idx.has_split(data_dir, 'test') or
          bool(glob.glob(os.path.join(data_dir, '*.mat'))))


def load_affnist_dir(data_dir):
  """Reads a directory's IDX test files, else every `.mat` file (by name)."""
  if not os.path.isdir(data_dir):
    raise DataError(f'affNIST directory {data_dir} does not exist; pass '
                    '--affnist_dir holding test.mat or the numbered batches, '
                    'or the IDX files of python -m pipeline.research.make_affnist.')
  if idx.has_split(data_dir, 'test'):
    return ArraySplit(*idx.load_idx_split(data_dir, 'test'))
  paths = sorted(glob.glob(os.path.join(data_dir, '*.mat')),
                 key=lambda p: (len(p), p))
  if not paths:
    raise DataError(f'{data_dir} holds neither .mat files of affNIST nor '
                    't10k-images-idx3-ubyte(.gz).')
  splits = [read_affnist_mat(p) for p in paths]
  return ArraySplit(np.concatenate([s.images for s in splits]),
                    np.concatenate([s.labels for s in splits]))


class AffNIST(stored.Stored):
  """Digits of `--base_dataset` placed anywhere on a `--canvas_size`
  canvas for training; tested on the affNIST `.mat` (or IDX) files of
  `--affnist_dir`, else on the base's translated test digits."""

  def __init__(self):
    super().__init__(10)

  def digits(self, spec):
    return spec.base_dataset

  def load(self, spec, split):
    if split == 'test' and spec.affnist_dir:
      return load_affnist_dir(spec.affnist_dir)
    return super().load(spec, split)

  def where(self, spec, split):
    if split == 'test' and spec.affnist_dir:
      return f'affnist ({spec.affnist_dir})'
    return super().where(spec, split)

  def output_shape(self, spec, stored_shape):
    return (spec.canvas_size, spec.canvas_size, stored_shape[2])

  def check_splits(self, spec, train, test, where):
    del train
    side = test.images.shape[1:3]
    if spec.affnist_dir and (side[0] > spec.canvas_size or
                             side[1] > spec.canvas_size):
      raise DataError(
          f'The affNIST test images in {spec.affnist_dir} are {side} but '
          f'canvas_size is {spec.canvas_size}; set --canvas_size to their '
          'size.')

  def batch_fn(self, spec, data, images, num_classes, training):
    del data, images, num_classes, training  # Placed anew in every pass.
    return lambda x, y, seed: {
        'image': augment.random_place(x, spec.canvas_size, seed)}
