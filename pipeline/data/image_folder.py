"""A folder of labelled images (one sub-folder per class) as in-memory splits.

  DIR/<class>/*.png|jpg|jpeg|bmp|gif            test split held back
  DIR/train/<class>/..., DIR/test/<class>/...   the given split

Images of any size are decoded, converted to the requested channels (grey
or RGB) and resized to the requested `(H, W)`; without a requested shape
every image must have the first one's. Problems name the file or folder.
"""

import functools
import math
import os

import numpy as np
import tensorflow as tf

from pipeline.data.base import ArraySplit, DataError, DataSet

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')


def _class_folders(directory):
  if not os.path.isdir(directory):
    raise DataError(f'{directory} is not a directory; --data_dir must name '
                    'a folder with one sub-folder of images per class.')
  names = sorted(n for n in os.listdir(directory)
                 if os.path.isdir(os.path.join(directory, n))
                 and not n.startswith('.'))
  if not names:
    raise DataError(f'{directory} has no class folders; put each class\'s '
                    'images in a sub-folder named after the class.')
  if len(names) == 1:
    raise DataError(f'{directory} has one class folder ({names[0]}); a '
                    'classifier needs at least two.')
  files = {}
  for name in names:
    folder = os.path.join(directory, name)
    found = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
      raise DataError(f'{folder} holds no images ({", ".join(IMAGE_EXTENSIONS)}'
                      ').')
    files[name] = found
  return files


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode(data):
  return tf.io.decode_image(data, expand_animations=False)


def _read(path, shape):
  """The image at `path` as uint8 `[H, W, C]` of `shape` (or its own)."""
  try:
    image = _decode(tf.io.read_file(path))
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
    raise DataError(f'{path} cannot be read as an image '
                    f'({e.message.splitlines()[0][:120]}); remove or replace '
                    'it.') from None
  channels = image.shape[-1]
  want = shape[2] if shape else min(channels, 3)
  if channels in (2, 4):  # Drop alpha.
    image = image[..., :channels - 1]
    channels -= 1
  if want == 1 and channels == 3:
    image = tf.image.rgb_to_grayscale(image)
  elif want == 3 and channels == 1:
    image = tf.image.grayscale_to_rgb(image)
  if shape and tuple(image.shape[:2]) != tuple(shape[:2]):
    image = tf.image.resize(tf.cast(image, tf.float32), shape[:2],
                            antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return image.numpy()


def _load(files_by_class, class_names, shape, first):
  images, labels = [], []
  for label, name in enumerate(class_names):
    for path in files_by_class.get(name, []):
      image = _read(path, shape)
      if first is None:
        first = (path, image.shape)
      elif image.shape != first[1]:
        raise DataError(
            f'{path} is {image.shape[0]}x{image.shape[1]}x{image.shape[2]} '
            f'but {first[0]} is {"x".join(map(str, first[1]))}; pass '
            '--image_shape=H,W,C to resize every image to one shape.')
      images.append(image)
      labels.append(label)
  return images, labels, first


def load_image_folder(directory, image_shape=(), test_fraction=0.2):
  """Reads an image folder into train and test splits.

  Args:
    directory: the folder (see the module docstring for its layouts).
    image_shape: `(H, W, C)` to convert every image to (C: 1 or 3); empty:
      every image keeps its own, which must be the same for all.
    test_fraction: without train/ and test/ sub-folders, the share of each
      class's images (the last ones by file name) held back as the test
      split.

  Returns:
    `(train ArraySplit, test ArraySplit, class names)`.

  Raises:
    DataError: naming the folder or file that is missing, empty, unreadable
      or of another size.
  """
  directory = os.path.expanduser(directory)
  train_dir, test_dir = (os.path.join(directory, n) for n in ('train', 'test'))
  if os.path.isdir(train_dir) and os.path.isdir(test_dir):
    train_files = _class_folders(train_dir)
    class_names = sorted(train_files)
    test_files = _class_folders(test_dir)
    unknown = sorted(set(test_files) - set(class_names))
    if unknown:
      raise DataError(f'{test_dir} has classes that {train_dir} lacks: '
                      f'{", ".join(unknown)}.')
  else:
    files = _class_folders(directory)
    class_names = sorted(files)
    train_files, test_files = {}, {}
    for name, found in files.items():
      held = math.floor(len(found) * test_fraction)
      train_files[name] = found[:len(found) - held]
      test_files[name] = found[len(found) - held:]
  train, train_labels, first = _load(train_files, class_names, image_shape,
                                     None)
  test, test_labels, _ = _load(test_files, class_names, image_shape, first)
  if not test:
    raise DataError(f'No test images in {directory}: add test/ and train/ '
                    'sub-folders, or more images per class (test_fraction '
                    f'{test_fraction} holds back none).')

  def split(images, labels):
    return ArraySplit(np.stack(images), np.asarray(labels, np.int64))

  return (split(train, train_labels), split(test, test_labels),
          tuple(class_names))


class ImageFolder(DataSet):
  """`load_image_folder` of `--data_dir` as a data set: its sub-folders are
  the classes (`--image_shape`, `--test_fraction`). Read once per spec."""

  def check_spec(self, spec):
    super().check_spec(spec)
    if not spec.data_dir:
      raise DataError('dataset=image_folder needs data_dir (--data_dir): the '
                      'folder with one sub-folder of images per class.')

  @functools.lru_cache(maxsize=1)
  def _read(self, spec):
    return load_image_folder(spec.data_dir, spec.image_shape,
                             spec.test_fraction)

  def load(self, spec, split):
    return self._read(spec)[0 if split == 'train' else 1]

  def class_names(self, spec):
    return tuple(self._read(spec)[2])

  def classes(self, spec):
    return len(self.class_names(spec))

  def where(self, spec, split):
    del split
    return f'{spec.dataset} ({os.path.expanduser(spec.data_dir)})'
