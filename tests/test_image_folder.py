"""Tests of pipeline.data.image_folder, and training on a folder end to end."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from pipeline.data import image_folder, sources
from pipeline.data.base import DataError


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array, np.uint8)
  data = (tf.io.encode_png(array) if path.endswith('.png')
          else tf.io.encode_jpeg(array, quality=100))
  tf.io.write_file(path, data)


def _folder(root, classes=('cat', 'dog', 'emu'), per_class=5, size=(12, 12),
            channels=1):
  for c, name in enumerate(classes):
    for i in range(per_class):
      _write(os.path.join(root, name, f'{i:02d}.png'),
             np.full([*size, channels], 40 * (c + 1) + i))
  return root


def test_held_back_split_resize_and_channels(tmp_path):
  root = _folder(str(tmp_path))
  # Other sizes, RGB and JPEG are converted to the requested shape.
  _write(f'{root}/cat/big.png', np.full([30, 20, 3], 200))
  _write(f'{root}/dog/photo.jpg', np.full([7, 9, 3], 90))
  (tmp_path / 'dog' / 'notes.txt').write_text('not an image')
  train, test, names = image_folder.load_image_folder(
      root, image_shape=(12, 12, 1), test_fraction=0.2)
  assert names == ('cat', 'dog', 'emu')
  assert train.images.shape[1:] == (12, 12, 1) and train.images.dtype == np.uint8
  # 6, 6, 5 images: the last 1, 1, 1 by name are held back.
  assert len(train) == 14 and len(test) == 3
  np.testing.assert_array_equal(test.labels, [0, 1, 2])
  big = train.images[list(train.labels).index(0)]  # cat/00.png first
  assert big[0, 0, 0] == 40
  assert 195 <= test.images[0, 0, 0, 0] <= 205  # cat/big.png, grey of 200


def test_train_and_test_subfolders_and_rgb(tmp_path):
  _folder(str(tmp_path / 'train'), channels=3)
  _folder(str(tmp_path / 'test'), classes=('cat', 'emu'), per_class=2,
          channels=3)
  train, test, names = image_folder.load_image_folder(str(tmp_path))
  assert names == ('cat', 'dog', 'emu')
  assert len(train) == 15 and len(test) == 4
  assert train.images.shape[1:] == (12, 12, 3)
  np.testing.assert_array_equal(test.labels, [0, 0, 2, 2])


@pytest.mark.parametrize('make,match', [
    (lambda root: os.makedirs(root), 'has no class folders'),
    (lambda root: _folder(root, classes=('only',)), 'one class folder'),
    (lambda root: (_folder(root), os.makedirs(f'{root}/empty')),
     r'empty holds no images'),
    (lambda root: (_folder(root),
                   open(f'{root}/dog/broken.png', 'wb').write(b'\x89PNG junk')),
     r'dog/broken.png cannot be read as an image'),
    (lambda root: (_folder(root), _write(f'{root}/emu/wide.png',
                                         np.zeros([12, 20, 1]))),
     r'emu/wide.png is 12x20x1 but .*cat/00.png is 12x12x1; pass '
     r'--image_shape'),
    (lambda root: (_folder(str(root) + '/train'),
                   _folder(str(root) + '/test', classes=('cat', 'yak'))),
     'has classes that .* lacks: yak'),
])
def test_bad_folders_are_named(tmp_path, make, match):
  root = str(tmp_path / 'images')
  make(root)
  with pytest.raises(DataError, match=match):
    image_folder.load_image_folder(root)


def test_missing_directory_and_no_test_images(tmp_path):
  with pytest.raises(DataError, match='is not a directory'):
    image_folder.load_image_folder(str(tmp_path / 'nowhere'))
  root = _folder(str(tmp_path / 'few'), per_class=2)
  with pytest.raises(DataError, match='No test images'):
    image_folder.load_image_folder(root, test_fraction=0.2)


def test_source_info_carries_class_names(tmp_path):
  root = _folder(str(tmp_path))
  src = sources.open_source(sources.DataSpec(
      dataset='image_folder', data_dir=root, image_shape=(16, 16, 1),
      shift_pixels=1))
  assert src.info.class_names == ('cat', 'dog', 'emu')
  assert src.info.num_classes == 3 and src.info.image_shape == (16, 16, 1)
  assert src.info.split_sizes == {'train': 12, 'test': 3}
  with pytest.raises(DataError, match='needs data_dir'):
    sources.DataSpec(dataset='image_folder')
  with pytest.raises(DataError, match='C 1 .*or 3'):
    sources.DataSpec(dataset='image_folder', data_dir=root,
                     image_shape=(16, 16, 2))


def test_train_on_a_folder_and_serve_class_names(tmp_path):
  root = _folder(str(tmp_path / 'images'), per_class=10)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', '--dataset=image_folder',
       f'--data_dir={root}', '--image_shape=20,20,1', '--conv_filters=8',
       '--primary_channels=4', '--primary_dim=4', '--class_dim=4',
       '--decoder_units=16,32',
       '--batch_size=8', '--eval_batch_size=8', '--train_steps=2',
       '--steps_per_loop=1', '--eval_every=2', '--checkpoint_every=2',
       '--strategy=one_device', f'--model_dir={tmp_path}/run',
       f'--export_dir={tmp_path}/exports'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  served = tf.saved_model.load(str(tmp_path / 'exports' / '1'))
  out = served.signatures['serving_default'](images=tf.zeros([2, 20, 20, 1]))
  names = [n.decode() for n in out['class_names'].numpy()]
  assert names == [('cat', 'dog', 'emu')[c] for c in out['classes'].numpy()]
  png = tf.io.encode_png(tf.zeros([40, 30, 3], tf.uint8))
  enc = served.signatures['predict_images'](images=tf.stack([png]))
  assert enc['class_names'].shape == (1,)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
