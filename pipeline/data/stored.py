"""Plain image sets stored in TensorFlow Datasets, or (the digit sets) as
IDX files: mnist, fashion_mnist, cifar10, svhn_cropped; the base of the data
sets built on stored images."""

import os

from pipeline.data import idx, tfds_source
from pipeline.data.base import ArraySplit, DataSet


class Stored(DataSet):
  """A data set read whole from TFDS (`--data_source=tfds`) or from an
  MNIST-layout IDX directory (`--data_source=idx`, the digit sets).

  Args:
    num_classes: its classes.
  """

  def __init__(self, num_classes):
    self.num_classes = num_classes

  def load(self, spec, split):
    name = self.digits(spec)
    if spec.data_source == 'idx':
      return ArraySplit(*idx.load_idx_split(os.path.expanduser(spec.data_dir),
                                            split))
    return tfds_source.load_tfds_split(name, split, spec.data_dir,
                                       download=spec.download,
                                       viewpoints=spec.viewpoints)
