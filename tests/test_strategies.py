"""Tests of pipeline.core.strategies."""

import pytest
import tensorflow as tf

from pipeline.core import strategies


def test_make_strategy():
  assert isinstance(strategies.make_strategy('one_device'),
                    tf.distribute.OneDeviceStrategy)
  mirrored = strategies.make_strategy('mirrored')
  # Every local GPU where there are some, else conftest's two logical CPUs.
  gpus = len(tf.config.list_physical_devices('GPU'))
  assert mirrored.num_replicas_in_sync == (gpus or 2)
  with pytest.raises(ValueError, match='strategy must be one of'):
    strategies.make_strategy('tpu')


def test_single_process_strategies_are_chief():
  assert strategies.is_chief(tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert strategies.is_chief(strategies.make_strategy('mirrored'))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
