"""The model registry: a model's name → its class and its config dataclass."""

import collections
import dataclasses

import tensorflow as tf
import tf_keras as keras

from pipeline.models.baseline_cnn import BaselineCNN, BaselineCNNConfig
from pipeline.models.capsnet import CapsNet, CapsNetConfig
from pipeline.models.matrix_capsnet import MatrixCapsNet, MatrixCapsNetConfig

# `reconstructs_targets`: the constructor takes `num_reconstructions` (one
# reconstruction per object of a multi-object image).
Entry = collections.namedtuple('Entry', 'model_class config_class '
                               'reconstructs_targets')

MODELS = {
    'capsnet': Entry(CapsNet, CapsNetConfig, True),
    'matrix_capsnet': Entry(MatrixCapsNet, MatrixCapsNetConfig, False),
    'baseline_cnn': Entry(BaselineCNN, BaselineCNNConfig, False),
}


def entry(name: str) -> Entry:
  """The registry entry of model `name`.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  return MODELS[name]


def option_names(name: str) -> tuple:
  """The options (config fields) model `name` takes, in declaration order."""
  return tuple(f.name for f in dataclasses.fields(entry(name).config_class))


def build_model(name, input_shape, num_classes, **kwargs):
  """Builds the model registered as `name` for data of the given shape.

  Args:
    name: a key of `MODELS`.
    input_shape: `(H, W, C)` of the input images.
    num_classes: number of classes.
    **kwargs: the model's own options (fields of its config class).

  Returns:
    A `base.CapsuleModel` whose call returns a dict with `lengths` and
    `poses`.

  Raises:
    ValueError: for an unknown name.
  """
  return entry(name).model_class(input_shape=input_shape,
                                 num_classes=num_classes, **kwargs)


def build_from_spec(spec, image_shape, num_classes, num_targets=1):
  """Builds the model a `config.ModelSpec` describes and creates its weights.

  Args:
    spec: a `pipeline.config.ModelSpec`.
    image_shape: `(H, W, C)` of the inputs.
    num_classes: number of classes.
    num_targets: objects per image; a model with a decoder reconstructs
      each (MultiMNIST: 2).

  Returns:
    The built model. With a mixed precision, its layers compute in 16 bits
    (variables stay float32); routing, squash and the outputs are float32.
  """
  previous = keras.mixed_precision.global_policy()
  # Layers take the global policy when they are constructed; set it only for
  # this model so other models in the process keep theirs.
  keras.mixed_precision.set_global_policy(spec.precision)
  try:
    options = spec.kwargs()
    if entry(spec.name).reconstructs_targets:
      options['num_reconstructions'] = num_targets
    model = build_model(spec.name, tuple(image_shape), num_classes, **options)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  model(tf.zeros([1, *image_shape]), training=False)
  return model
