"""Losses of the capsule papers (margin, reconstruction, spread) and the
baseline CNN's softmax cross-entropy."""

import tensorflow as tf


def _float_pair(labels, scores, name):
  """Both as float32; raises unless they are alike `[batch, classes]`."""
  labels = tf.cast(labels, tf.float32)
  scores = tf.cast(scores, tf.float32)
  if not labels.shape.is_compatible_with(scores.shape):
    raise ValueError(
        f'labels {labels.shape} and {name} {scores.shape} must both be '
        '[batch, classes]; pass one-hot or k-hot labels.')
  return labels, scores


def margin_loss(labels, lengths, m_plus=0.9, m_minus=0.1, down_weight=0.5):
  """The CapsNet margin loss, per example (paper eq. 4).

  L = sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2

  Args:
    labels: one-hot or k-hot targets `[batch, classes]`.
    lengths: capsule lengths `[batch, classes]`.
    m_plus: the margin a present class must exceed.
    m_minus: the margin an absent class must stay below.
    down_weight: lambda, the weight of the absent-class term.

  Returns:
    `[batch]` float32 losses, summed over classes.

  Raises:
    ValueError: if the shapes of `labels` and `lengths` differ.
  """
  labels, lengths = _float_pair(labels, lengths, 'lengths')
  present = labels * tf.square(tf.nn.relu(m_plus - lengths))
  absent = (1.0 - labels) * tf.square(tf.nn.relu(lengths - m_minus))
  return tf.reduce_sum(present + down_weight * absent, axis=-1)


def reconstruction_loss(images, reconstructions):
  """Sum of squared pixel errors per example (the paper's SSE).

  Args:
    images: targets `[batch, ...]`.
    reconstructions: decoder outputs of the same shape.

  Returns:
    `[batch]` float32 losses. Weight them (paper: 0.0005) in the total.
  """
  diff = tf.cast(reconstructions, tf.float32) - tf.cast(images, tf.float32)
  return tf.reduce_sum(tf.reshape(tf.square(diff), [tf.shape(diff)[0], -1]),
                       axis=-1)


def spread_loss(labels, activations, margin):
  """The EM-routing paper's spread loss, per example.

  L = sum_{i != t} max(0, m - (a_t - a_i))^2, with the margin m annealed
  from 0.2 to 0.9 over training (see `spread_margin`).

  Args:
    labels: one-hot `[batch, classes]`.
    activations: class capsule activations `[batch, classes]`.
    margin: m, a scalar.

  Returns:
    `[batch]` float32 losses.
  """
  labels, activations = _float_pair(labels, activations, 'activations')
  target = tf.reduce_sum(labels * activations, axis=-1, keepdims=True)
  gaps = tf.square(tf.nn.relu(margin - (target - activations)))
  return tf.reduce_sum((1.0 - labels) * gaps, axis=-1)


def spread_margin(step, anneal_steps, start=0.2, end=0.9):
  """The spread-loss margin at `step`: linear from `start` to `end`."""
  progress = tf.minimum(tf.cast(step, tf.float32) / float(anneal_steps), 1.0)
  return start + (end - start) * progress


def softmax_cross_entropy(labels, logits):
  """The baseline CNN's softmax cross-entropy, per example.

  k-hot labels (two objects in MultiMNIST) become a target distribution
  with equal mass on each present class.

  Args:
    labels: one-hot or k-hot targets `[batch, classes]`.
    logits: unnormalised class scores `[batch, classes]`.

  Returns:
    `[batch]` float32 losses.
  """
  labels, logits = _float_pair(labels, logits, 'logits')
  targets = labels / tf.maximum(tf.reduce_sum(labels, -1, keepdims=True), 1.0)
  return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
