"""Data sets by name: where their examples come from and what they look like.

`DATASETS` is the registry: a `--dataset` name to its `base.DataSet` (its
loading, shapes, checks and batches). `open_source(spec)` gives a
`DataSource`: its `info` (shape, classes, split sizes) and its splits as
in-memory uint8 arrays, which `input_pipeline` turns into batches.
"""

import dataclasses
import functools

import numpy as np

from pipeline import settings
from pipeline.data import tfds_source
from pipeline.data.affnist import AffNIST
from pipeline.data.base import ArraySplit, DataError, DatasetInfo, DIGIT_BASES
from pipeline.data.image_folder import ImageFolder
from pipeline.data.multimnist import MultiMNIST
from pipeline.data.smallnorb import SmallNORB
from pipeline.data.stored import Stored
from pipeline.data.synthetic import Synthetic

DATASETS = {
    'mnist': Stored(10), 'fashion_mnist': Stored(10), 'cifar10': Stored(10),
    'svhn_cropped': Stored(10), 'smallnorb': SmallNORB(),
    'synthetic': Synthetic(), 'multimnist': MultiMNIST(),
    'affnist': AffNIST(), 'image_folder': ImageFolder(),
}
DATA_SOURCES = ('tfds', 'idx')
SPLITS = ('train', 'validation', 'test')


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
    if DATASETS[self.dataset].synthetic:
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
    DATASETS[self.dataset].check_spec(self)
    if self.image_shape and (len(self.image_shape) != 3 or
                             min(self.image_shape) < 1 or
                             self.image_shape[2] not in (1, 3)):
      raise DataError('image_shape (--image_shape) takes H,W,C with C 1 '
                      f'(grey) or 3 (RGB), got {self.image_shape}.')
    if not 0 < self.test_fraction < 1:
      raise DataError('test_fraction (--test_fraction) must lie in (0, 1), '
                      f'got {self.test_fraction}.')


class DataSource:
  """The splits of one data set, loaded once and kept in memory.

  Attributes:
    kind: the data set's `base.DataSet` (`DATASETS[spec.dataset]`).
  """

  def __init__(self, spec):
    self.spec = spec
    self.kind = DATASETS[spec.dataset]
    train = self._raw('train')
    self.class_names = self.kind.class_names(spec)
    self.num_classes = self.kind.classes(spec)
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
    self.kind.check_splits(spec, train, test, self._where)
    sizes = {'train': len(train) - spec.validation_size, 'test': len(test)}
    if spec.validation_size:
      sizes['validation'] = spec.validation_size
    self.info = DatasetInfo(
        name=spec.dataset,
        image_shape=self.kind.output_shape(spec, train.images.shape[1:]),
        num_classes=self.num_classes, split_sizes=sizes,
        num_targets=self.kind.num_targets, class_names=self.class_names)

  def _where(self, split='train'):
    """The data set and where the split comes from, for messages."""
    return self.kind.where(self.spec, split)

  @functools.lru_cache(maxsize=None)
  def _raw(self, split):
    return self.kind.load(self.spec, split)

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
