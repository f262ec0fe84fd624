"""Data sets by name: where their examples come from and what they look like.

`open_source(spec)` gives a `DataSource`: its `info` (shape, classes, split
sizes) and its splits as in-memory uint8 arrays, which `input_pipeline`
turns into batches.
"""

import dataclasses
import functools
import os

import numpy as np

from pipeline import settings
from pipeline.data import affnist, idx, image_folder, synthetic, tfds_source
from pipeline.data.base import ArraySplit, DataError, DatasetInfo

# Data set name → number of classes.
DATASETS = {
    'mnist': 10, 'fashion_mnist': 10, 'cifar10': 10, 'svhn_cropped': 10,
    'smallnorb': 5, 'synthetic': None, 'multimnist': 10, 'affnist': 10,
    'image_folder': None,
}
DATA_SOURCES = ('tfds', 'idx')
# Data sets built from the digits of another (MultiMNIST, affNIST training).
DIGIT_BASES = ('mnist', 'fashion_mnist')
SPLITS = ('train', 'validation', 'test')
MULTIMNIST_SIZE = 36
SMALLNORB_CROP = 32


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which data, from where, and how it is augmented.

  Attributes:
    dataset: a key of `DATASETS`.
    data_dir: TFDS data dir, or the IDX directory with `data_source='idx'`.
    data_source: 'tfds' or 'idx' (mnist / fashion_mnist and the data sets
      built on them only).
    base_dataset: digits of 'multimnist' and 'affnist' ('mnist' or
      'fashion_mnist').
    shift_pixels: training shift augmentation, in pixels per axis.
    canvas_size: affNIST training canvas side (the digit lands anywhere).
    affnist_dir: directory of affNIST `.mat` files; its images become the
      affnist 'test' split (else the test split is translated base digits).
    overlay: MultiMNIST overlay mode, 'max' or 'sum'.
    validation_size: examples held back from the end of 'train' as
      'validation' (0: no validation split).
    download: allow TFDS to download when the data is not prepared.
    synthetic_shape: `(H, W, C)` of the 'synthetic' images.
    synthetic_classes: classes of 'synthetic'.
    synthetic_size: `(train, test)` examples of 'synthetic'.
    viewpoints: smallNORB: 'all', or the EM paper's novel-viewpoint split
      'azimuth' / 'elevation' (train on familiar viewpoints, test on novel).
    image_shape: image_folder: `(H, W, C)` every image is converted to
      (C: 1 or 3); empty: the images' own shape, which must be one.
    test_fraction: image_folder without train/ and test/ sub-folders: the
      share of each class's images held back as the test split.
  """
  dataset: str = settings.setting('synthetic', 'Data set.',
                                  choices=sorted(DATASETS))
  data_dir: str = settings.setting(
      None, 'TFDS data dir, or the IDX directory with --data_source=idx.',
      on_resume='the data is read from another place; the run continues '
                'correctly only if it holds the same data')
  data_source: str = settings.setting(
      'tfds', 'Where mnist/fashion_mnist come from.', choices=DATA_SOURCES,
      on_resume='the data is read through another source; the run '
                'continues correctly only if it gives the same data')
  base_dataset: str = settings.setting(
      'mnist', 'Digits of multimnist / affnist.', choices=DIGIT_BASES)
  shift_pixels: int = settings.setting(
      2, 'Training shift augmentation in pixels (paper: 2).', low=0)
  canvas_size: int = settings.setting(
      40, 'affNIST canvas side for the translated digits.', low=1)
  affnist_dir: str = settings.setting(
      None, 'Directory of affNIST .mat files (its test split).',
      on_resume='the affNIST test split changes; training does not')
  overlay: str = settings.setting(
      'max', 'MultiMNIST overlay of the two digits.', choices=('max', 'sum'))
  validation_size: int = settings.setting(
      0, 'Training examples held back as the validation split.', low=0)
  download: bool = settings.setting(
      True, 'Let TFDS download data that is not prepared.',
      on_resume='changes only whether TFDS may download')
  synthetic_shape: tuple = settings.setting(
      (28, 28, 1), 'H,W,C of the synthetic data set.', low=1, length=(3,))
  synthetic_classes: int = settings.setting(
      10, 'Classes of the synthetic data set.', low=1)
  synthetic_size: tuple = settings.setting(
      (2000, 500), 'train,test examples of the synthetic data set.', low=0,
      length=(2,))
  viewpoints: str = settings.setting(
      'all', 'smallnorb: all, or a novel-viewpoint split (train on familiar '
      'azimuths/elevations, test on novel ones).',
      choices=sorted(tfds_source.VIEWPOINTS))
  image_shape: tuple = settings.setting(
      (), "image_folder: H,W,C every image is converted to (C: 1 grey or 3 "
      "RGB). Empty: the images' own shape.")
  test_fraction: float = settings.setting(
      0.2, 'image_folder without train/ and test/ sub-folders: share of each '
      'class held back as the test split.')

  def idle_fields(self):
    """The fields this data set does not read (the synthetic set's size and
    shape, for a real one): not worth telling runs apart by."""
    if self.dataset == 'synthetic':
      return ()
    return ('synthetic_shape', 'synthetic_classes', 'synthetic_size')

  def __post_init__(self):
    if self.dataset not in DATASETS:
      raise DataError(f'Unknown data set {self.dataset!r}; choose one of '
                      f'{sorted(DATASETS)}.')
    try:
      settings.check(self)  # Each field's type, choices and range.
    except settings.SettingError as e:
      raise DataError(str(e)) from None
    digits = self.base_dataset if self.dataset in ('multimnist',
                                                   'affnist') else self.dataset
    if self.data_source == 'idx' and digits not in DIGIT_BASES:
      raise DataError(f"data_source='idx' serves {DIGIT_BASES} (and the data "
                      f'sets built on them), not {digits!r}.')
    if self.data_source == 'idx' and not self.data_dir:
      raise DataError("data_source='idx' needs data_dir: the directory with "
                      'train-images-idx3-ubyte(.gz) and its siblings.')
    if self.viewpoints != 'all' and self.dataset != 'smallnorb':
      raise DataError(f'viewpoints={self.viewpoints!r} applies to smallnorb '
                      'only.')
    if self.dataset == 'image_folder' and not self.data_dir:
      raise DataError('dataset=image_folder needs data_dir (--data_dir): the '
                      'folder with one sub-folder of images per class.')
    if self.image_shape and (len(self.image_shape) != 3 or
                             min(self.image_shape) < 1 or
                             self.image_shape[2] not in (1, 3)):
      raise DataError('image_shape (--image_shape) takes H,W,C with C 1 '
                      f'(grey) or 3 (RGB), got {self.image_shape}.')
    if not 0 < self.test_fraction < 1:
      raise DataError('test_fraction (--test_fraction) must lie in (0, 1), '
                      f'got {self.test_fraction}.')


class DataSource:
  """The splits of one data set, loaded once and kept in memory."""

  def __init__(self, spec):
    self.spec = spec
    self.kind = spec.dataset if spec.dataset in (
        'multimnist', 'affnist', 'smallnorb') else 'plain'
    train = self._raw('train')
    self.class_names = ()
    if spec.dataset == 'image_folder':
      self.class_names = self._folder()[2]
      self.num_classes = len(self.class_names)
    else:
      self.num_classes = (spec.synthetic_classes
                          if spec.dataset == 'synthetic'
                          else DATASETS[spec.dataset])
    if not len(train):
      raise DataError(f'The train split of {self._where()} holds no examples.')
    test = self.split('test')
    if not len(test):
      raise DataError(f'The test split of {self._where("test")} holds no '
                      'examples; evaluation needs at least one.')
    for name, data in (('train', train), ('test', test)):
      bad = (data.labels < 0) | (data.labels >= self.num_classes)
      if bad.any():
        raise DataError(
            f'The {name} split of {self._where(name)} has labels outside '
            f'[0, {self.num_classes}): '
            f'{np.unique(data.labels[bad])[:5].tolist()} '
            f'({int(bad.sum())} examples). Fix or replace those files.')
    if spec.validation_size >= len(train):
      raise DataError(f'validation_size {spec.validation_size} must be less '
                      f'than the {len(train)} training examples.')
    if self.kind == 'plain':
      if test.images.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f'The test images of {self._where("test")} are '
            f'{test.images.shape[1:]} but the training images are '
            f'{train.images.shape[1:]}; both splits must have one shape.')
      if spec.shift_pixels >= min(train.images.shape[1:3]):
        raise DataError(
            f'shift_pixels {spec.shift_pixels} (--shift_pixels) can move a '
            f'whole {train.images.shape[1]}x{train.images.shape[2]} image out '
            'of view; use fewer pixels than its side (the paper: 2).')
    if self.kind == 'affnist' and spec.affnist_dir:
      test_shape = self.split('test').images.shape[1:3]
      if test_shape[0] > spec.canvas_size or test_shape[1] > spec.canvas_size:
        raise DataError(
            f'The affNIST test images in {spec.affnist_dir} are {test_shape} '
            f'but canvas_size is {spec.canvas_size}; set --canvas_size to '
            'their size.')
    sizes = {'train': len(train) - spec.validation_size,
             'test': len(self.split('test'))}
    if spec.validation_size:
      sizes['validation'] = spec.validation_size
    self.info = DatasetInfo(
        name=spec.dataset, image_shape=self._output_shape(train.images.shape),
        num_classes=self.num_classes, split_sizes=sizes,
        num_targets=2 if self.kind == 'multimnist' else 1,
        class_names=self.class_names)

  def _where(self, split='train'):
    """The data set and where the split comes from, for messages."""
    spec = self.spec
    if spec.dataset == 'affnist' and split == 'test' and spec.affnist_dir:
      return f'affnist ({spec.affnist_dir})'
    if spec.dataset == 'image_folder' or (
        spec.data_source == 'idx' and spec.dataset != 'synthetic'):
      return f'{spec.dataset} ({os.path.expanduser(spec.data_dir)})'
    return spec.dataset

  def _output_shape(self, stored):
    h, w, c = stored[1:]
    if self.kind == 'multimnist':
      return (MULTIMNIST_SIZE, MULTIMNIST_SIZE, c)
    if self.kind == 'affnist':
      return (self.spec.canvas_size, self.spec.canvas_size, c)
    if self.kind == 'smallnorb':
      return (SMALLNORB_CROP, SMALLNORB_CROP, c)
    return (h, w, c)

  @functools.lru_cache(maxsize=None)
  def _folder(self):
    return image_folder.load_image_folder(
        self.spec.data_dir, self.spec.image_shape, self.spec.test_fraction)

  @functools.lru_cache(maxsize=None)
  def _raw(self, split):
    spec = self.spec
    if spec.dataset == 'image_folder':
      return self._folder()[0 if split == 'train' else 1]
    if spec.dataset == 'synthetic':
      n = spec.synthetic_size[0 if split == 'train' else 1]
      return synthetic.synthetic_split(
          spec.synthetic_shape, spec.synthetic_classes, n,
          seed=0 if split == 'train' else 1)
    name = spec.dataset
    if name in ('multimnist', 'affnist'):
      if name == 'affnist' and split == 'test' and spec.affnist_dir:
        return affnist.load_affnist_dir(spec.affnist_dir)
      name = spec.base_dataset
    if spec.data_source == 'idx':
      return ArraySplit(*idx.load_idx_split(os.path.expanduser(spec.data_dir),
                                            split))
    return tfds_source.load_tfds_split(name, split, spec.data_dir,
                                       download=spec.download,
                                       viewpoints=spec.viewpoints)

  def split(self, name):
    """Returns the `ArraySplit` of 'train', 'validation' or 'test'."""
    if name not in SPLITS:
      raise DataError(f'split must be one of {SPLITS}, got {name!r}.')
    if name == 'test':
      return self._raw('test')
    train = self._raw('train')
    cut = len(train) - self.spec.validation_size
    if name == 'train':
      return ArraySplit(train.images[:cut], train.labels[:cut])
    if not self.spec.validation_size:
      raise DataError("There is no 'validation' split: set validation_size "
                      '(--validation_size) to hold examples back from train.')
    return ArraySplit(train.images[cut:], train.labels[cut:])


def open_source(spec):
  """Loads the data set described by `spec` (a `DataSpec`)."""
  return DataSource(spec)
