"""Tests of pipeline.data.sources: the data set registry and DataSource."""

import ast
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.data import input_pipeline
from pipeline.data import sources
from pipeline.data.base import ArraySplit, DataError, DataSet
from pipeline.data.stored import Stored

from conftest import REPO
from helpers import write_idx_dir


class Inverted(DataSet):
  """A data set of its own, for the registry tests: 12x12 images of two
  classes (dark or light), inverted in every batch, with a reconstruction
  target of its own."""
  num_classes = 2

  def load(self, spec, split):
    n = 12 if split == 'train' else 6
    labels = np.arange(n) % 2
    images = np.repeat((labels * 200 + 20).astype(np.uint8), 144)
    return ArraySplit(images.reshape(n, 12, 12, 1), labels)

  def output_shape(self, spec, stored):
    return (10, 10, stored[2])

  def batch_fn(self, spec, data, images, num_classes, training):
    return lambda x, y, seed: {'image': 1.0 - x[:, 1:11, 1:11],
                               'targets': x}


def test_a_new_data_set_is_one_entry(monkeypatch):
  """A `DataSet` put in the registry (under a known name: the flag's choices
  are fixed at import) is loaded, described and batched by the unchanged
  DataSource and input pipeline."""
  monkeypatch.setitem(sources.DATASETS, 'cifar10', Inverted())
  src = sources.open_source(sources.DataSpec(dataset='cifar10',
                                             validation_size=2))
  assert src.info.image_shape == (10, 10, 1)
  assert src.info.num_classes == 2
  assert src.info.split_sizes == {'train': 10, 'validation': 2, 'test': 6}
  assert "cifar10" in src._where()  # pylint: disable=protected-access
  batch = next(iter(input_pipeline.make_dataset(src, 'test', 6, False)))
  assert batch['image'].shape == (6, 10, 10, 1)
  assert batch['targets'].shape == (6, 12, 12, 1)
  np.testing.assert_allclose(batch['image'][:, 0, 0, 0].numpy(),
                             1.0 - (np.arange(6) % 2 * 200 + 20) / 255.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(batch['label'].numpy(),
                                tf.one_hot(np.arange(6) % 2, 2).numpy())


def _names_in(tree):
  return {node.value for node in ast.walk(tree)
          if isinstance(node, ast.Constant) and node.value in sources.DATASETS}


def test_no_generic_code_names_a_data_set():
  """Only the registry and each data set's own module name data sets: the
  DataSource, the input pipeline and the training core ask the entry."""
  with open(os.path.join(REPO, 'pipeline', 'data', 'sources.py')) as f:
    tree = ast.parse(f.read())
  [source] = [n for n in tree.body
              if isinstance(n, ast.ClassDef) and n.name == 'DataSource']
  assert not _names_in(source)
  paths = [os.path.join(REPO, 'pipeline', 'data', 'input_pipeline.py')] + (
      glob.glob(os.path.join(REPO, 'pipeline', 'core', '*.py')))
  for path in paths:
    with open(path) as f:
      assert not _names_in(ast.parse(f.read())), path


def test_every_entry_answers_the_contract():
  for name, kind in sources.DATASETS.items():
    assert isinstance(kind, DataSet), name
    assert kind.num_targets >= 1, name


def test_idx_source_info_and_validation_split(tmp_path):
  written = write_idx_dir(tmp_path, n_train=40, n_test=20)
  src = sources.open_source(sources.DataSpec(
      dataset='fashion_mnist', data_source='idx', data_dir=str(tmp_path),
      validation_size=10))
  assert src.info.image_shape == (28, 28, 1)
  assert src.info.num_classes == 10
  assert src.info.split_sizes == {'train': 30, 'validation': 10, 'test': 20}
  np.testing.assert_array_equal(src.split('validation').images[..., 0],
                                written['train'][0][30:])
  np.testing.assert_array_equal(src.split('train').labels,
                                written['train'][1][:30])


@pytest.mark.parametrize('dataset,shape,targets', [
    ('multimnist', (36, 36, 1), 2), ('affnist', (40, 40, 1), 1)])
def test_derived_data_sets(tmp_path, dataset, shape, targets):
  write_idx_dir(tmp_path)
  src = sources.open_source(sources.DataSpec(
      dataset=dataset, base_dataset='mnist', data_source='idx',
      data_dir=str(tmp_path)))
  assert src.info.image_shape == shape
  assert src.info.num_targets == targets


def test_smallnorb_info_through_mock_data():
  with tfds.testing.mock_data(num_examples=10):
    src = sources.open_source(sources.DataSpec(dataset='smallnorb'))
  assert src.info.image_shape == (32, 32, 2)
  assert src.info.num_classes == 5


@pytest.mark.parametrize('kwargs,match', [
    (dict(dataset='imagenet'), 'Unknown data set'),
    (dict(dataset='mnist', data_source='s3'), 'data_source'),
    (dict(dataset='cifar10', data_source='idx', data_dir='/x'), 'idx'),
    (dict(dataset='mnist', data_source='idx'), 'needs data_dir'),
    (dict(dataset='multimnist', base_dataset='cifar10'), 'base_dataset'),
    (dict(shift_pixels=-1), 'shift_pixels'),
    (dict(validation_size=-1), 'validation_size'),
    (dict(overlay='mean'), 'overlay'),
    (dict(viewpoints='azimuth'), 'smallnorb only'),
    (dict(dataset='smallnorb', viewpoints='roll'), 'viewpoints must be'),
])
def test_bad_specs(kwargs, match):
  with pytest.raises(DataError, match=match):
    sources.DataSpec(**kwargs)


def test_split_errors(tmp_path):
  src = sources.open_source(sources.DataSpec(synthetic_size=(40, 10)))
  with pytest.raises(DataError, match="no 'validation' split"):
    src.split('validation')
  with pytest.raises(DataError, match='split must be one of'):
    src.split('dev')
  with pytest.raises(DataError, match='validation_size 40'):
    sources.open_source(sources.DataSpec(synthetic_size=(40, 10),
                                         validation_size=40))


def test_labels_outside_class_count(tmp_path, monkeypatch):
  write_idx_dir(tmp_path)
  spec = sources.DataSpec(dataset='synthetic', synthetic_classes=3,
                          synthetic_size=(30, 9))
  src = sources.open_source(spec)
  assert src.split('train').labels.max() == 2
  bad = sources.DataSpec(dataset='mnist', data_source='idx',
                         data_dir=str(tmp_path))
  # Ten label values do not fit a three-class description.
  monkeypatch.setitem(sources.DATASETS, 'mnist', Stored(3))
  with pytest.raises(DataError, match=r'has labels outside \[0, 3\)'):
    sources.open_source(bad)



def _rewrite_labels(directory, prefix, labels):
  import gzip  # pylint: disable=g-import-not-at-top
  from helpers import idx_bytes  # pylint: disable=g-import-not-at-top
  with open(f'{directory}/{prefix}-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(gzip.compress(idx_bytes(np.asarray(labels, np.uint8))))


@pytest.mark.parametrize('prefix,split', [('t10k', 'test'),
                                          ('train', 'train')])
def test_labels_outside_the_classes_are_refused_naming_split_and_files(
    tmp_path, prefix, split):
  write_idx_dir(tmp_path, n_train=40, n_test=20)
  n = 20 if split == 'test' else 40
  _rewrite_labels(tmp_path, prefix, [3] * (n - 1) + [12])
  with pytest.raises(DataError, match=rf'The {split} split of fashion_mnist '
                     rf'\({tmp_path}\) has labels outside \[0, 10\): \[12\]'):
    sources.open_source(sources.DataSpec(
        dataset='fashion_mnist', data_source='idx', data_dir=str(tmp_path)))


def test_a_test_split_of_another_image_size_is_refused_at_load(tmp_path):
  write_idx_dir(tmp_path, n_train=40, n_test=20, size=28)
  other = tmp_path / 'other'
  write_idx_dir(other, n_train=40, n_test=20, size=24)
  for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'):
    (tmp_path / name).write_bytes((other / name).read_bytes())
  with pytest.raises(DataError, match=r'test images .* are \(24, 24, 1\) but '
                     r'the training images are \(28, 28, 1\)'):
    sources.open_source(sources.DataSpec(
        dataset='fashion_mnist', data_source='idx', data_dir=str(tmp_path)))


def test_empty_splits_and_whole_image_shifts_are_refused():
  spec = dict(dataset='synthetic', synthetic_shape=(12, 12, 1))
  with pytest.raises(DataError, match='test split of synthetic holds no'):
    sources.open_source(sources.DataSpec(synthetic_size=(8, 0), **spec))
  with pytest.raises(DataError, match='train split of synthetic holds no'):
    sources.open_source(sources.DataSpec(synthetic_size=(0, 8), **spec))
  with pytest.raises(DataError, match=r'shift_pixels 12 .* whole 12x12'):
    sources.open_source(sources.DataSpec(synthetic_size=(8, 8),
                                         shift_pixels=12, **spec))
  assert sources.open_source(sources.DataSpec(
      synthetic_size=(8, 8), shift_pixels=11, **spec)).info.image_shape == (
          12, 12, 1)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
