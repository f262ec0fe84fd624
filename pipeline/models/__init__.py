"""Capsule models, the paper's baseline CNN, and the registry that builds
them by name."""

import inspect

import tensorflow as tf
import tf_keras as keras

from pipeline.models.baseline_cnn import BaselineCNN
from pipeline.models.capsnet import CapsNet
from pipeline.models.matrix_capsnet import MatrixCapsNet

MODELS = {'capsnet': CapsNet, 'matrix_capsnet': MatrixCapsNet,
          'baseline_cnn': BaselineCNN}


def build_model(name, input_shape, num_classes, **kwargs):
  """Builds the model registered as `name` for data of the given shape.

  Args:
    name: a key of `MODELS`.
    input_shape: `(H, W, C)` of the input images.
    num_classes: number of classes.
    **kwargs: model-specific options.

  Returns:
    A `tf_keras.Model` whose call returns a dict with `lengths` and `poses`.

  Raises:
    ValueError: for an unknown name.
  """
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  return MODELS[name](input_shape=input_shape, num_classes=num_classes,
                      **kwargs)


def accepted_options(name, options):
  """The entries of `options` that model `name`'s constructor takes."""
  params = inspect.signature(MODELS[name].__init__).parameters
  return {k: v for k, v in options.items() if k in params}


def build_from_spec(spec, image_shape, num_classes, num_targets=1):
  """Builds the model a `config.ModelSpec` describes and creates its weights.

  Args:
    spec: a `pipeline.config.ModelSpec`.
    image_shape: `(H, W, C)` of the inputs.
    num_classes: number of classes.
    num_targets: objects per image; each gets its own reconstruction
      (MultiMNIST: 2).

  Returns:
    The built model. With a mixed precision, its layers compute in 16 bits
    (variables stay float32); routing, squash and the outputs are float32.
  """
  previous = keras.mixed_precision.global_policy()
  # Layers take the global policy when they are constructed; set it only for
  # this model so other models in the process keep theirs.
  keras.mixed_precision.set_global_policy(spec.precision)
  try:
    options = dict(spec.kwargs(), num_reconstructions=num_targets)
    model = build_model(spec.name, tuple(image_shape), num_classes,
                        **accepted_options(spec.name, options))
  finally:
    keras.mixed_precision.set_global_policy(previous)
  model(tf.zeros([1, *image_shape]), training=False)
  return model
