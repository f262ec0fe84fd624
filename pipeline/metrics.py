"""Accuracy as the pipeline counts it, written once for training and scoring.

An example is a hit when its k highest class scores are exactly its k true
classes (k = 1 for one object, 2 for MultiMNIST pairs). An example with no
true class (a label outside the classes, one-hot encoded to zeros) is never
a hit.
"""

import tensorflow as tf


def predicted_classes(scores, k):
  """k-hot `[batch, classes]` of the `k` highest `scores` per example.

  Args:
    scores: `[batch, classes]` class scores (capsule lengths, softmax).
    k: int scalar or int `[batch]`: how many classes each example predicts.

  Returns:
    `[batch, classes]` of 0/1 in the dtype of `scores`.
  """
  scores = tf.convert_to_tensor(scores)
  k = tf.cast(k, tf.int32)
  if k.shape.rank == 0:
    k = tf.fill(tf.shape(scores)[:1], k)
  # Rank of each class by score; a class is predicted when its rank < k.
  ranks = tf.argsort(tf.argsort(-scores, axis=-1), axis=-1)
  return tf.cast(ranks < k[:, None], scores.dtype)


def accuracy_hits(labels, scores):
  """Per-example 1.0 when the top-k scores are exactly the k labels.

  Args:
    labels: `[batch, classes]` one-hot or k-hot.
    scores: `[batch, classes]` class scores.

  Returns:
    `[batch]` float32 of 0/1; 0 for an example without a true class.
  """
  labels = tf.convert_to_tensor(labels)
  k = tf.cast(tf.reduce_sum(labels, axis=-1), tf.int32)
  predicted = predicted_classes(tf.cast(scores, labels.dtype), k)
  exact = tf.reduce_all(tf.equal(predicted, labels), axis=-1)
  return tf.cast(tf.logical_and(exact, k > 0), tf.float32)
