"""A small learnable data set generated in memory, in any image shape.

Each class is a stroke at its own angle plus a blob at its own place; each
example is its class pattern, randomly moved, dimmed and noised. Good enough
for a model to learn in a few hundred steps, with no files and no network.
"""

import numpy as np

from pipeline.data.base import ArraySplit, DataError, DataSet


def _class_templates(shape, num_classes):
  h, w, c = shape
  yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w),
                       indexing='ij')
  templates = np.zeros([num_classes, h, w, c], np.float32)
  for k in range(num_classes):
    angle = np.pi * k / num_classes
    stroke = np.exp(-((np.sin(angle) * xx - np.cos(angle) * yy) / 0.12) ** 2)
    stroke *= (xx ** 2 + yy ** 2) < 0.6
    by, bx = 0.5 * np.sin(2 * np.pi * k / num_classes), 0.5 * np.cos(
        2 * np.pi * k / num_classes)
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / 0.03)
    pattern = np.clip(stroke + blob, 0, 1)
    for ch in range(c):
      # Channels differ a little so multi-channel shapes are not redundant.
      templates[k, :, :, ch] = pattern * (1.0 - 0.2 * ch / max(c, 1))
  return templates


def synthetic_split(shape=(28, 28, 1), num_classes=10, size=1000, seed=0):
  """Generates `size` labelled examples.

  Args:
    shape: `(H, W, C)` of the images.
    num_classes: number of classes (>= 2).
    size: number of examples.
    seed: the generator seed; the same seed gives the same data.

  Returns:
    An `ArraySplit` of uint8 images and int64 labels, classes balanced.

  Raises:
    DataError: for a shape that is not (H, W, C) with H, W >= 8.
  """
  shape = tuple(int(d) for d in shape)
  if len(shape) != 3 or min(shape[:2]) < 8 or shape[2] < 1:
    raise DataError(f'synthetic image shape must be (H, W, C) with H, W >= 8 '
                    f'and C >= 1, got {shape}.')
  if num_classes < 2:
    raise DataError(f'num_classes must be >= 2, got {num_classes}.')
  rng = np.random.default_rng(seed)
  templates = _class_templates(shape, num_classes)
  labels = np.arange(size, dtype=np.int64) % num_classes
  rng.shuffle(labels)
  max_shift = max(1, shape[0] // 10)
  images = np.empty((size,) + shape, np.float32)
  for n, label in enumerate(labels):
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    pattern = np.roll(templates[label], (dy, dx), axis=(0, 1))
    images[n] = pattern * rng.uniform(0.6, 1.0)
  images += rng.normal(0.0, 0.08, images.shape).astype(np.float32)
  images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
  return ArraySplit(images, labels)


class Synthetic(DataSet):
  """`synthetic_split` as a data set: `--synthetic_shape`,
  `--synthetic_classes`, `--synthetic_size` (train, test); nothing read."""

  synthetic = True

  def classes(self, spec):
    return spec.synthetic_classes

  def load(self, spec, split):
    n = spec.synthetic_size[0 if split == 'train' else 1]
    return synthetic_split(spec.synthetic_shape, spec.synthetic_classes, n,
                           seed=0 if split == 'train' else 1)
