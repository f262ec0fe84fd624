"""Capsule models and the registry that builds them by name."""

from pipeline.models.capsnet import CapsNet

MODELS = {'capsnet': CapsNet}


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
