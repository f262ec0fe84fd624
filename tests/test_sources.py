"""Tests of pipeline.data.sources."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.data import sources
from pipeline.data.base import DataError

from helpers import write_idx_dir


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
  monkeypatch.setitem(sources.DATASETS, 'mnist', 3)
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
