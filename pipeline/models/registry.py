"""The registry: a model's name → its model class, its config dataclass and
the task that trains it.

A new model family is one entry here (beside its model, config and task
modules); nothing else names it.
"""

import collections
import dataclasses

from pipeline.models import base
from pipeline.models.baseline_cnn import BaselineCNN, BaselineCNNConfig
from pipeline.models.capsnet import CapsNet, CapsNetConfig
from pipeline.models.matrix_capsnet import MatrixCapsNet, MatrixCapsNetConfig
from pipeline.tasks.baseline_cnn import BaselineCNNTask
from pipeline.tasks.capsnet import CapsNetTask
from pipeline.tasks.matrix_capsnet import MatrixCapsNetTask

Entry = collections.namedtuple('Entry', 'model_class config_class task_class')

MODELS = {
    'capsnet': Entry(CapsNet, CapsNetConfig, CapsNetTask),
    'matrix_capsnet': Entry(MatrixCapsNet, MatrixCapsNetConfig,
                            MatrixCapsNetTask),
    'baseline_cnn': Entry(BaselineCNN, BaselineCNNConfig, BaselineCNNTask),
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
  """Builds the model a `config.ModelSpec` describes and creates its weights
  (`base.build` with the registered class; see there)."""
  return base.build(entry(spec.name).model_class, spec, image_shape,
                    num_classes, num_targets)


def get_task(config):
  """The task of `config.model.name`, given its model class.

  Raises:
    ValueError: for an unknown model name, listing the known ones.
  """
  registered = entry(config.model.name)
  return registered.task_class(config, registered.model_class)
