"""Types shared by the data sources: the error type, splits, descriptions,
and the contract every data set answers (`DataSet`)."""

import dataclasses
import os

import numpy as np

from pipeline.data import augment

# The digit sets stored as IDX files, and that MultiMNIST and affNIST build on.
DIGIT_BASES = ('mnist', 'fashion_mnist')


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


class DataSet:
  """What one data set is: where its splits come from, what they look like,
  what it checks and how its batches are made.

  `pipeline.data.sources.DATASETS` maps each `--dataset` name to one; a new
  data set is an entry there plus the module of its subclass, nothing else.
  The defaults are those of a plain image set: stored 'train' and 'test'
  splits of one shape, shifted by up to `shift_pixels` in training.

  Attributes:
    num_classes: the classes, when the data set fixes them.
    num_targets: objects per image (MultiMNIST: 2).
    viewpoints: whether `--viewpoints` applies (smallNORB).
    synthetic: whether the `synthetic_*` settings are read.
  """
  num_classes = None
  num_targets = 1
  viewpoints = False
  synthetic = False

  def digits(self, spec):
    """The stored data set the splits are read from (`spec.dataset`, or the
    base of a data set built from another's digits)."""
    return spec.dataset

  def check_spec(self, spec):
    """Raises `DataError` for settings this data set cannot honour."""
    digits = self.digits(spec)
    if spec.data_source == 'idx' and digits not in DIGIT_BASES:
      raise DataError(f"data_source='idx' serves {DIGIT_BASES} (and the data "
                      f'sets built on them), not {digits!r}.')
    if spec.data_source == 'idx' and not spec.data_dir:
      raise DataError("data_source='idx' needs data_dir: the directory with "
                      'train-images-idx3-ubyte(.gz) and its siblings.')
    if spec.viewpoints != 'all' and not self.viewpoints:
      raise DataError(f'viewpoints={spec.viewpoints!r} applies to smallnorb '
                      'only.')

  def load(self, spec, split):
    """The stored 'train' or 'test' split, an `ArraySplit` (before any
    validation hold-back)."""
    raise NotImplementedError(f'{type(self).__name__} loads no split.')

  def class_names(self, spec):
    """The classes' names, where the data names them; else empty."""
    del spec
    return ()

  def classes(self, spec):
    """The number of classes."""
    del spec
    return self.num_classes

  def where(self, spec, split):
    """The data set and where `split` comes from, for messages."""
    del split
    if spec.data_source == 'idx':
      return f'{spec.dataset} ({os.path.expanduser(spec.data_dir)})'
    return spec.dataset

  def output_shape(self, spec, stored):
    """`(H, W, C)` of the images the pipeline yields from stored images of
    shape `stored` `(H, W, C)`."""
    del spec
    return tuple(stored)

  def check_splits(self, spec, train, test, where):
    """Raises `DataError` when the loaded splits cannot serve `spec`.

    Args:
      spec: the `DataSpec`.
      train, test: the loaded `ArraySplit`s.
      where: `where(spec, split)` of this data set, for messages.
    """
    if test.images.shape[1:] != train.images.shape[1:]:
      raise DataError(
          f'The test images of {where("test")} are {test.images.shape[1:]} '
          f'but the training images are {train.images.shape[1:]}; both '
          'splits must have one shape.')
    if spec.shift_pixels >= min(train.images.shape[1:3]):
      raise DataError(
          f'shift_pixels {spec.shift_pixels} (--shift_pixels) can move a '
          f'whole {train.images.shape[1]}x{train.images.shape[2]} image out '
          'of view; use fewer pixels than its side (the paper: 2).')

  def batch_fn(self, spec, data, images, num_classes, training):
    """`fn(x, y, seed) -> dict` turning one batch into the model's inputs.

    Args:
      spec: the `DataSpec`.
      data: the split's `ArraySplit` (numpy).
      images: the same images as the uint8 tensor the pipeline gathers
        batches from (a data set that composes examples draws partners
        from it).
      num_classes: the classes.
      training: augment for training.

    Returns:
      A function of the batch's float images `x` `[batch, H, W, C]` in
      [0, 1], its int labels `y` and a `[2]` int64 seed, giving a dict with
      `image` and, where the data set has them, `label` (k-hot) and
      `targets` (what a decoder reconstructs). The pipeline adds the
      one-hot `label` when the dict has none.
    """
    del data, images, num_classes

    def fn(x, y, seed):
      del y
      if training:
        x = augment.random_shift(x, spec.shift_pixels, seed)
      return {'image': x}
    return fn
