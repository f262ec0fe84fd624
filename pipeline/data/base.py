"""Types shared by the data sources: the error type, splits, descriptions."""

import dataclasses

import numpy as np


class DataError(ValueError):
  """Data that is missing, malformed or not what the flags asked for."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about a data set.

  Attributes:
    name: the data set name.
    image_shape: `(H, W, C)` of the images the pipeline yields.
    num_classes: number of classes.
    split_sizes: examples per split (a generated training stream counts the
      examples it draws from).
    num_targets: objects per image (2 for MultiMNIST, else 1).
    class_names: the classes' names where the data names them (an image
      folder's sub-folders), else empty.
  """
  name: str
  image_shape: tuple
  num_classes: int
  split_sizes: dict
  num_targets: int = 1
  class_names: tuple = ()


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split held in memory: `images` uint8 `[N, H, W, C]`, `labels` `[N]`."""
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4:
      raise DataError(f'images must be [N, H, W, C], got {self.images.shape}.')
    if self.images.dtype != np.uint8:
      raise DataError(f'images must be uint8, got {self.images.dtype}.')
    if len(self.images) != len(self.labels):
      raise DataError(f'{len(self.images)} images but {len(self.labels)} '
                      'labels.')

  def __len__(self):
    return len(self.labels)
