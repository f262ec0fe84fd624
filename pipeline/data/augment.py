"""Batched augmentations in TF ops: shifts, canvas placement, overlays, crops.

Every function works on a whole batch `[batch, H, W, C]` with stateless random
ops seeded by a `[2]` int tensor, so the input pipeline is deterministic when
asked to be, and has no Python in its hot path.
"""

import tensorflow as tf


def random_crop_batch(images, size, max_offset, seed):
  """Crops a `size` window from each image at its own random offset.

  Args:
    images: `[batch, H, W, C]`.
    size: `(h, w)` of the window.
    max_offset: `(oy, ox)`: offsets are uniform in `[0, oy] x [0, ox]`.
    seed: `[2]` int seed for the stateless draw.

  Returns:
    `[batch, h, w, C]`.
  """
  batch = tf.shape(images)[0]
  offsets_y = tf.random.stateless_uniform(
      [batch], seed, minval=0, maxval=max_offset[0] + 1, dtype=tf.int32)
  offsets_x = tf.random.stateless_uniform(
      [batch], seed + 1, minval=0, maxval=max_offset[1] + 1, dtype=tf.int32)
  return crop_batch(images, size, offsets_y, offsets_x)


def crop_batch(images, size, offsets_y, offsets_x):
  """Crops `[batch, H, W, C]` at per-example offsets `[batch]` (gathers)."""
  rows = offsets_y[:, None] + tf.range(size[0])[None, :]
  cols = offsets_x[:, None] + tf.range(size[1])[None, :]
  images = tf.gather(images, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)


def random_shift(images, max_shift, seed):
  """Shifts each image by up to `max_shift` pixels per axis, zero padded.

  The paper's MNIST augmentation (max_shift=2). All (2k+1)^2 offsets are
  equally likely; content shifted past the border is cut off.
  """
  if max_shift <= 0:
    return images
  k = int(max_shift)
  padded = tf.pad(images, [[0, 0], [k, k], [k, k], [0, 0]])
  return random_crop_batch(padded, images.shape[1:3], (2 * k, 2 * k), seed)


def random_place(images, canvas_size, seed):
  """Puts each image at a uniformly random position on a zero canvas.

  Args:
    images: `[batch, H, W, C]` with H, W <= canvas_size.
    canvas_size: side of the square canvas (40 for affNIST, 36 MultiMNIST).
    seed: `[2]` int seed.

  Returns:
    `[batch, canvas_size, canvas_size, C]`; the whole image stays visible.
  """
  dy = canvas_size - images.shape[1]
  dx = canvas_size - images.shape[2]
  if dy < 0 or dx < 0:
    raise ValueError(f'canvas_size {canvas_size} is smaller than the images '
                     f'{images.shape[1:3]}.')
  padded = tf.pad(images, [[0, 0], [dy, dy], [dx, dx], [0, 0]])
  return random_crop_batch(padded, (canvas_size, canvas_size), (dy, dx), seed)


def overlay(first, second, mode='max'):
  """Overlays two image batches: pixel-wise 'max' or clipped 'sum'."""
  if mode == 'max':
    return tf.maximum(first, second)
  if mode == 'sum':
    return tf.minimum(first + second, 1.0)
  raise ValueError(f"overlay mode must be 'max' or 'sum', got {mode!r}.")


def brightness_contrast(images, seed, max_brightness=32.0 / 255.0,
                        contrast_range=(0.5, 1.5)):
  """Random brightness then contrast per image (smallNORB training)."""
  batch = tf.shape(images)[0]
  delta = tf.random.stateless_uniform([batch, 1, 1, 1], seed,
                                      -max_brightness, max_brightness)
  factor = tf.random.stateless_uniform([batch, 1, 1, 1], seed + 1,
                                       contrast_range[0], contrast_range[1])
  images = images + delta
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return (images - mean) * factor + mean


def standardize(images):
  """Per-image zero mean and unit variance (`[batch, H, W, C]`)."""
  return tf.image.per_image_standardization(images)
