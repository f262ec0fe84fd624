"""MultiMNIST (paper section 6): two shifted digits of different classes overlaid.

Pairs are drawn per batch with TF ops: each example's partner comes from a
different class, chosen uniformly; both digits land independently at up to 4
pixels from the centre of a 36x36 canvas.
"""

import numpy as np
import tensorflow as tf

from pipeline.data import augment, stored
from pipeline.data.base import DataError

# The canvas side of the paper's MultiMNIST.
CANVAS_SIZE = 36


def class_table(labels, num_classes):
  """Indices of each class's examples, padded: `([C, max_count], [C])`.

  Raises:
    DataError: if a class has no example (no partner could be drawn).
  """
  labels = np.asarray(labels)
  members = [np.flatnonzero(labels == k) for k in range(num_classes)]
  counts = np.array([len(m) for m in members], np.int64)
  if (counts == 0).any():
    raise DataError('MultiMNIST needs examples of every class; classes '
                    f'{np.flatnonzero(counts == 0).tolist()} have none.')
  table = np.zeros([num_classes, counts.max()], np.int64)
  for k, m in enumerate(members):
    table[k, :len(m)] = m
  return tf.constant(table), tf.constant(counts)


def partner_indices(labels, table, num_classes, seed):
  """Draws, for each label `[batch]`, an example index of another class."""
  table, counts = table
  n = tf.shape(labels)[0]
  step = tf.random.stateless_uniform([n], seed, 1, num_classes, tf.int64)
  other = (labels + step) % num_classes
  u = tf.random.stateless_uniform([n], seed + 1)
  pos = tf.cast(u * tf.cast(tf.gather(counts, other), tf.float32), tf.int64)
  pos = tf.minimum(pos, tf.gather(counts, other) - 1)
  return tf.gather_nd(table, tf.stack([other, pos], axis=1))


def compose_pairs(first, second, first_labels, second_labels, num_classes,
                  canvas_size, mode, seed):
  """Places two digit batches on the canvas and overlays them.

  Returns:
    A dict: `image` `[batch, S, S, C]`, `label` k-hot `[batch, classes]`,
    `targets` `[batch, 2, S, S, C]` (each digit alone, as placed).
  """
  a = augment.random_place(first, canvas_size, seed)
  b = augment.random_place(second, canvas_size, seed + 11)
  return {
      'image': augment.overlay(a, b, mode),
      'label': tf.one_hot(first_labels, num_classes) +
               tf.one_hot(second_labels, num_classes),
      'targets': tf.stack([a, b], axis=1),
  }


class MultiMNIST(stored.Stored):
  """Two digits of `--base_dataset` of different classes on a 36x36 canvas
  (`--overlay` max or sum): k-hot labels, and each digit alone as the
  decoder's targets."""

  num_targets = 2

  def __init__(self):
    super().__init__(10)

  def digits(self, spec):
    return spec.base_dataset

  def output_shape(self, spec, stored_shape):
    return (CANVAS_SIZE, CANVAS_SIZE, stored_shape[2])

  def check_splits(self, spec, train, test, where):
    del spec, train, test, where  # Any digit shape fits the canvas.

  def batch_fn(self, spec, data, images, num_classes, training):
    del training  # Every pass composes pairs anew from its seed.
    table = class_table(data.labels, num_classes)
    labels = tf.constant(data.labels)

    def fn(x, y, seed):
      partner = partner_indices(y, table, num_classes, seed + 3)
      second = tf.cast(tf.gather(images, partner), tf.float32) / 255.0
      return compose_pairs(x, second, y, tf.gather(labels, partner),
                           num_classes, CANVAS_SIZE, spec.overlay, seed)
    return fn
