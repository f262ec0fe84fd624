"""Tests of pipeline.models.base through both capsule models."""

import pytest
import tensorflow as tf

from pipeline.models import base
from pipeline.models.capsnet import CapsNet
from pipeline.models.matrix_capsnet import MatrixCapsNet


@pytest.mark.parametrize('cls', [CapsNet, MatrixCapsNet])
def test_shared_checks(cls):
  assert issubclass(cls, base.CapsuleModel)
  with pytest.raises(ValueError, match='input_shape must be'):
    cls(input_shape=(28, 28))
  with pytest.raises(ValueError, match='routing_iterations must be >= 1'):
    cls(routing_iterations=0)
  model = cls(input_shape=(32, 32, 1), num_classes=4)
  with pytest.raises(ValueError, match=rf'{cls.__name__} expects images of '
                     r'shape \[batch, 32, 32, 1\], got \(2, 32, 32, 3\)'):
    model(tf.zeros([2, 32, 32, 3]))
  assert cls.from_config(model.get_config()).get_config() == model.get_config()


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
