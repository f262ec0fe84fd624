"""What the capsule models share: input checks and the config round trip."""

import tensorflow as tf
import tf_keras as keras


class CapsuleModel(keras.Model):
  """Base of the capsule models.

  Subclasses call `_set_shape(...)` first in `__init__`, keep their
  constructor arguments in `self._config`, and check inputs with
  `_check_images` at the start of `call`.
  """

  def _set_shape(self, input_shape, num_classes, routing_iterations=None):
    """Checks and keeps the input shape and classes (and routing, if any)."""
    self.image_shape = tuple(int(d) for d in input_shape)
    if len(self.image_shape) != 3:
      raise ValueError(
          f'input_shape must be (height, width, channels), got {input_shape}.')
    if routing_iterations is not None and routing_iterations < 1:
      raise ValueError(
          f'routing_iterations must be >= 1, got {routing_iterations}.')
    self.num_classes = int(num_classes)

  def _check_images(self, images):
    """Returns `images` as a tensor; raises if not `[batch, H, W, C]`."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or tuple(images.shape[1:]) != self.image_shape:
      raise ValueError(
          f'{type(self).__name__} expects images of shape '
          f'[batch, {", ".join(map(str, self.image_shape))}], got '
          f'{images.shape}. Build the model with input_shape matching the '
          'data (the data set description gives it).')
    return images

  def get_config(self):
    return dict(self._config)

  @classmethod
  def from_config(cls, config):
    return cls(**config)
