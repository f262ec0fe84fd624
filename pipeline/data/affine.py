"""An affNIST-style test set made from any 28x28 split (affNIST, paper 5.2).

affNIST puts each MNIST test digit through a random affine transform on a
40x40 canvas. `affine_split` does the same to any images, with the ranges
the results experiment uses: rotation within ±20°, shear within ±0.2, scale
0.8–1.2 per axis, then a random translation that keeps the object's
bounding box on the canvas. One `numpy.random.Generator` seeded once draws
every parameter, so a seed always gives the same images; `pipeline.research.make_affnist`
writes them as IDX files.
"""

import dataclasses
import math

import numpy as np
import scipy.ndimage

from pipeline.data.base import ArraySplit, DataError


@dataclasses.dataclass(frozen=True)
class AffineRanges:
  """Ranges of the random transforms (uniform within each)."""
  max_rotation_degrees: float = 20.0
  max_shear: float = 0.2
  min_scale: float = 0.8
  max_scale: float = 1.2

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if not math.isfinite(value):
        raise DataError(f'{name} must be a finite number, got {value}.')
    if not 0 < self.min_scale <= self.max_scale:
      raise DataError(f'Need 0 < min_scale <= max_scale, got '
                      f'{self.min_scale}, {self.max_scale}.')
    if self.max_rotation_degrees < 0 or self.max_shear < 0:
      raise DataError('max_rotation_degrees and max_shear must be >= 0.')


def affine_matrix(rotation_degrees, shear, scale_y, scale_x):
  """The 2x2 map (row, column) of rotation · shear · scale."""
  t = np.deg2rad(rotation_degrees)
  rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  shear_m = np.array([[1.0, 0.0], [shear, 1.0]])
  return rotation @ shear_m @ np.diag([scale_y, scale_x])


def warp(image, matrix, canvas_size):
  """Centres a `[H, W]` float image on the canvas and maps it by `matrix`.

  The transform is about the canvas centre; bilinear sampling, zero outside.
  """
  h, w = image.shape
  canvas = np.zeros([canvas_size, canvas_size], np.float64)
  top, left = (canvas_size - h) // 2, (canvas_size - w) // 2
  canvas[top:top + h, left:left + w] = image
  centre = (canvas_size - 1) / 2.0
  inverse = np.linalg.inv(matrix)
  offset = centre - inverse @ np.array([centre, centre])
  return scipy.ndimage.affine_transform(canvas, inverse, offset=offset,
                                        order=1, mode='constant', cval=0.0)


def translate_within(image, rng):
  """Shifts the nonzero pixels' bounding box to a random place on the canvas."""
  rows = np.flatnonzero(image.any(axis=1))
  cols = np.flatnonzero(image.any(axis=0))
  if rows.size == 0:
    return image
  size = image.shape[0]
  dy = rng.integers(-rows[0], size - rows[-1])
  dx = rng.integers(-cols[0], size - cols[-1])
  out = np.zeros_like(image)
  src = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  out[rows[0] + dy:rows[-1] + 1 + dy, cols[0] + dx:cols[-1] + 1 + dx] = src
  return out


def affine_split(images, labels, canvas_size=40, seed=0,
                 ranges=AffineRanges()):
  """Transforms every image at random; the same seed gives the same split.

  Args:
    images: uint8 `[N, H, W, 1]` (or `[N, H, W]`), H, W <= canvas_size.
    labels: `[N]`.
    canvas_size: side of the output canvas.
    seed: seed of the one generator that draws every parameter.
    ranges: an `AffineRanges`.

  Returns:
    `(ArraySplit of uint8 [N, S, S, 1] images and int64 labels, params)`,
    params a dict of `[N]` arrays: rotation_degrees, shear, scale_y,
    scale_x.
  """
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[..., 0]
  if images.ndim != 3 or max(images.shape[1:]) > canvas_size:
    raise DataError(f'Expected images [N, H, W] no larger than the '
                    f'{canvas_size}x{canvas_size} canvas, got {images.shape}.')
  rng = np.random.default_rng(seed)
  n = len(images)
  params = {
      'rotation_degrees': rng.uniform(-ranges.max_rotation_degrees,
                                      ranges.max_rotation_degrees, n),
      'shear': rng.uniform(-ranges.max_shear, ranges.max_shear, n),
      'scale_y': rng.uniform(ranges.min_scale, ranges.max_scale, n),
      'scale_x': rng.uniform(ranges.min_scale, ranges.max_scale, n),
  }
  out = np.zeros([n, canvas_size, canvas_size, 1], np.uint8)
  for i in range(n):
    matrix = affine_matrix(params['rotation_degrees'][i], params['shear'][i],
                           params['scale_y'][i], params['scale_x'][i])
    warped = warp(images[i].astype(np.float64), matrix, canvas_size)
    warped = np.clip(np.round(warped), 0, 255).astype(np.uint8)
    out[i, ..., 0] = translate_within(warped, rng)
  return ArraySplit(out, np.asarray(labels, np.int64)), params
