"""Data sets from TensorFlow Datasets, loaded into memory as uint8 arrays."""

import socket

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.data.base import ArraySplit, DataError

# TFDS name → (image keys stacked as channels, label key).
TFDS_DATASETS = {
    'mnist': (('image',), 'label'),
    'fashion_mnist': (('image',), 'label'),
    'cifar10': (('image',), 'label'),
    'svhn_cropped': (('image',), 'label'),
    'smallnorb': (('image', 'image2'), 'label_category'),
}
# smallNORB's 96x96 stereo pairs are downsampled once, at load, as the paper did.
SMALLNORB_SIZE = 48
# The EM paper's novel-viewpoint experiments: train on the familiar
# viewpoints of the training split, test on the novel ones of the test split.
# Azimuth labels 0..17 are 0, 20, ..., 340 degrees: familiar are 300-40;
# elevation labels 0..8 are 30..70 degrees: familiar are the 3 lowest.
VIEWPOINTS = {
    'all': None,
    'azimuth': ('label_azimuth', (15, 16, 17, 0, 1, 2)),
    'elevation': ('label_elevation', (0, 1, 2)),
}
# TFDS downloads through its storage bucket first; a failed name lookup means
# no network, and TFDS itself would retry for minutes instead of failing.
_PROBE_HOST = ('storage.googleapis.com', 443)

_OFFLINE_HINT = (
    'For offline work use local IDX files: --data_source=idx '
    '--data_dir=/usr/share/datasets/fashion-mnist (Debian package '
    'dataset-fashion-mnist), or --dataset=synthetic.')


def _network_reachable(timeout=3.0):
  try:
    socket.create_connection(_PROBE_HOST, timeout=timeout).close()
    return True
  except OSError:
    return False


def _load_numpy(name, split, data_dir, download, keys):
  # Large batches, concatenated: batch_size=-1 aborts the process under
  # tfds.testing.mock_data (std::length_error in TFDS 4.9.10).
  ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
  ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(8192)
  parts = list(tfds.as_numpy(ds))
  return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def load_tfds_split(name, split, data_dir=None, download=True,
                    viewpoints='all'):
  """Loads a whole TFDS split into memory.

  Args:
    name: one of `TFDS_DATASETS`.
    split: a TFDS split ('train', 'test', or a slice such as 'train[:90%]').
    data_dir: TFDS data directory (None: TFDS's default).
    download: allow downloading and preparing the data set when missing.
    viewpoints: smallNORB only: 'all', or a novel-viewpoint experiment
      ('azimuth', 'elevation'): a 'train...' split keeps the familiar
      viewpoints, any other split the novel ones.

  Returns:
    An `ArraySplit` with uint8 images `[N, H, W, C]` (smallNORB: the two
    cameras as channels, 48x48) and int64 labels.

  Raises:
    DataError: for an unknown name, or data that is not prepared and cannot
      be downloaded (the message names the offline alternative).
  """
  if name not in TFDS_DATASETS:
    raise DataError(f'Unknown TFDS data set {name!r}; choose one of '
                    f'{sorted(TFDS_DATASETS)}.')
  if viewpoints not in VIEWPOINTS:
    raise DataError(f'viewpoints must be one of {sorted(VIEWPOINTS)}, got '
                    f'{viewpoints!r}.')
  if viewpoints != 'all' and name != 'smallnorb':
    raise DataError(f'viewpoints={viewpoints!r} applies to smallnorb only.')
  image_keys, label_key = TFDS_DATASETS[name]
  keys = image_keys + (label_key,)
  if VIEWPOINTS[viewpoints]:
    keys += (VIEWPOINTS[viewpoints][0],)
  try:
    data = _load_numpy(name, split, data_dir, False, keys)
  except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
    if not download:
      raise DataError(f'TFDS data set {name} is not prepared in {data_dir} '
                      f'and downloading is off. {_OFFLINE_HINT}') from e
    if not _network_reachable():
      raise DataError(
          f'TFDS data set {name} is not prepared in {data_dir or "~/tensorflow_datasets"} '
          f'and this machine cannot download it (no network). {_OFFLINE_HINT}'
      ) from e
    data = _load_numpy(name, split, data_dir, True, keys)
  if VIEWPOINTS[viewpoints]:
    key, familiar = VIEWPOINTS[viewpoints]
    keep = np.isin(data[key], familiar)
    if not split.startswith('train'):
      keep = ~keep
    data = {k: v[keep] for k, v in data.items()}
  images = np.concatenate([data[k] for k in image_keys], axis=-1)
  if name == 'smallnorb':
    images = tf.image.resize(images, [SMALLNORB_SIZE, SMALLNORB_SIZE],
                             method='area')
    images = np.round(images.numpy()).clip(0, 255).astype(np.uint8)
  return ArraySplit(images.astype(np.uint8), data[label_key].astype(np.int64))
