"""Tests of pipeline.data.tfds_source, on tfds.testing.mock_data only."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.data import tfds_source
from pipeline.data.base import DataError


def test_mnist_through_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    split = tfds_source.load_tfds_split('mnist', 'train')
  assert split.images.shape == (12, 28, 28, 1)
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64


def test_smallnorb_stereo_channels_downsampled():
  with tfds.testing.mock_data(num_examples=3):
    split = tfds_source.load_tfds_split('smallnorb', 'test')
  assert split.images.shape == (3, 48, 48, 2)
  assert split.labels.max() < 5


def test_unknown_name():
  with pytest.raises(DataError, match='Unknown TFDS data set'):
    tfds_source.load_tfds_split('imagenet2012', 'train')


def test_not_prepared_without_download_names_offline_alternative(tmp_path):
  with pytest.raises(DataError, match='data_source=idx') as e:
    tfds_source.load_tfds_split('mnist', 'train', str(tmp_path),
                                download=False)
  assert 'not prepared' in str(e.value)


def test_not_prepared_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_network_reachable', lambda: False)
  with pytest.raises(DataError, match='cannot download it'):
    tfds_source.load_tfds_split('mnist', 'train', str(tmp_path))


@pytest.mark.parametrize('viewpoints,key,familiar', [
    ('azimuth', 'label_azimuth', {15, 16, 17, 0, 1, 2}),
    ('elevation', 'label_elevation', {0, 1, 2})])
def test_smallnorb_novel_viewpoint_splits(viewpoints, key, familiar):
  with tfds.testing.mock_data(num_examples=60):
    everything = tfds.as_numpy(tfds.load('smallnorb', split='test').batch(100))
    views = np.concatenate([b[key] for b in everything])
    train = tfds_source.load_tfds_split('smallnorb', 'train',
                                        viewpoints=viewpoints)
    test = tfds_source.load_tfds_split('smallnorb', 'test',
                                       viewpoints=viewpoints)
  novel = ~np.isin(views, list(familiar))
  assert len(test) == novel.sum()
  assert 0 < len(train) < 60


def test_viewpoints_only_for_smallnorb():
  with pytest.raises(DataError, match='smallnorb only'):
    tfds_source.load_tfds_split('mnist', 'train', viewpoints='azimuth')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
