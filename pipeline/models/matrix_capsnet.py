"""Matrix capsules with EM routing (Hinton, Sabour, Frosst 2018).

ReLU Conv1 (A, 5x5, stride 2) → PrimaryCaps (B types of 4x4 poses plus a
sigmoid activation, 1x1) → ConvCaps1 (C, K=3, stride 2) → ConvCaps2 (D, K=3,
stride 1) → class capsules (transforms shared across positions, with
Coordinate Addition). On 32x32 inputs the grid goes 14 → 6 → 4 (VALID).
With A=B=C=D=32 and 5 classes on 2-channel input: 317,194 parameters (the
paper's "310K").
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline import settings
from pipeline.models import base
from pipeline.models import capsule_ops

POSE = 4  # Poses are 4x4 matrices.


def _patch_table(height, width, kernel, stride):
  """Input positions `[out_h * out_w, kernel * kernel]` of every patch."""
  out_h = (height - kernel) // stride + 1
  out_w = (width - kernel) // stride + 1
  table = np.empty([out_h * out_w, kernel * kernel], np.int32)
  for oy in range(out_h):
    for ox in range(out_w):
      rows = oy * stride + np.arange(kernel)
      cols = ox * stride + np.arange(kernel)
      table[oy * out_w + ox] = (rows[:, None] * width + cols[None, :]).ravel()
  return table, out_h, out_w


class PrimaryMatrixCapsules(keras.layers.Layer):
  """1x1 convolutions to B capsule types: 4x4 poses and sigmoid activations.

  Input `[batch, H, W, A]` → poses `[batch, H, W, B, 16]`, activations
  `[batch, H, W, B]`.
  """

  def __init__(self, types=32, **kwargs):
    super().__init__(**kwargs)
    self.types = types
    self.pose_conv = keras.layers.Conv2D(types * POSE * POSE, 1, name='pose')
    self.activation_conv = keras.layers.Conv2D(types, 1, activation='sigmoid',
                                               name='activation')

  def call(self, inputs):
    poses = self.pose_conv(inputs)
    h, w = poses.shape[1], poses.shape[2]
    poses = tf.reshape(tf.cast(poses, tf.float32),
                       [-1, h, w, self.types, POSE * POSE])
    return poses, tf.cast(self.activation_conv(inputs), tf.float32)


class ConvMatrixCapsules(keras.layers.Layer):
  """Convolutional capsules routed by EM over K x K x B-child patches.

  Transforms `[K, K, B, C, 4, 4]` are shared across positions. A child in
  several patches has its assignments normalised over all their parents.
  """

  def __init__(self, types=32, kernel_size=3, strides=1, routing_iterations=3,
               final_lambda=0.01, recompute_routing=False, **kwargs):
    super().__init__(**kwargs)
    self.recompute_routing = recompute_routing
    self.types = types
    self.kernel_size = kernel_size
    self.strides = strides
    self.routing_iterations = routing_iterations
    self.final_lambda = final_lambda

  def build(self, input_shape):
    _, h, w, in_types, _ = input_shape
    k = self.kernel_size
    table, self.out_h, self.out_w = _patch_table(h, w, k, self.strides)
    if self.out_h < 1 or self.out_w < 1:
      raise ValueError(f'{self.name}: a {h}x{w} capsule grid is smaller than '
                       f'the {k}x{k} kernel.')
    self.in_types = in_types
    self.positions = tf.constant(table)
    self.child_ids = tf.constant(
        (table[:, :, None] * in_types + np.arange(in_types)).reshape(-1))
    self.num_children = h * w * in_types
    self.kernel = self.add_weight(
        name='kernel', shape=[k * k, in_types, self.types, POSE, POSE],
        initializer=keras.initializers.RandomNormal(stddev=0.5))
    self.beta_u = self.add_weight(name='beta_u', shape=[self.types],
                                  initializer='zeros')
    self.beta_a = self.add_weight(name='beta_a', shape=[self.types],
                                  initializer='zeros')
    super().build(input_shape)

  def call(self, poses, activations, training=None):
    batch = tf.shape(poses)[0]
    h, w = poses.shape[1], poses.shape[2]
    flat_poses = tf.reshape(poses, [batch, h * w, self.in_types, POSE, POSE])
    flat_act = tf.reshape(activations, [batch, h * w, self.in_types])
    patch_poses = tf.gather(flat_poses, self.positions, axis=1)
    patch_act = tf.gather(flat_act, self.positions, axis=1)
    votes = tf.einsum('bpkixy,kicyz->bpkicxz', patch_poses,
                      tf.cast(self.kernel, tf.float32))
    positions = self.out_h * self.out_w
    k2 = self.kernel_size ** 2
    votes = tf.reshape(votes, [batch, positions, k2 * self.in_types,
                               self.types, POSE * POSE])
    patch_act = tf.reshape(patch_act, [batch, positions, k2 * self.in_types])
    out_poses, out_act, _ = capsule_ops.em_routing(
        votes, patch_act, self.beta_u, self.beta_a, self.routing_iterations,
        child_ids=self.child_ids, num_children=self.num_children,
        final_lambda=self.final_lambda,
        recompute=bool(self.recompute_routing and training))
    return (tf.reshape(out_poses, [batch, self.out_h, self.out_w, self.types,
                                   POSE * POSE]),
            tf.reshape(out_act, [batch, self.out_h, self.out_w, self.types]))


class ClassMatrixCapsules(keras.layers.Layer):
  """Class capsules: one transform per (child type, class), shared across
  positions, with Coordinate Addition (the scaled centre of each child's
  position added to the first two elements of its vote's right column)."""

  def __init__(self, num_classes, routing_iterations=3, final_lambda=0.01,
               recompute_routing=False, **kwargs):
    super().__init__(**kwargs)
    self.recompute_routing = recompute_routing
    self.num_classes = num_classes
    self.routing_iterations = routing_iterations
    self.final_lambda = final_lambda

  def build(self, input_shape):
    _, h, w, in_types, _ = input_shape
    self.in_types = in_types
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w,
                         indexing='ij')
    offsets = np.zeros([h * w, 1, 1, POSE, POSE], np.float32)
    offsets[:, 0, 0, 0, POSE - 1] = ys.ravel()
    offsets[:, 0, 0, 1, POSE - 1] = xs.ravel()
    self.coordinates = tf.constant(offsets)
    self.kernel = self.add_weight(
        name='kernel', shape=[in_types, self.num_classes, POSE, POSE],
        initializer=keras.initializers.RandomNormal(stddev=0.5))
    self.beta_u = self.add_weight(name='beta_u', shape=[self.num_classes],
                                  initializer='zeros')
    self.beta_a = self.add_weight(name='beta_a', shape=[self.num_classes],
                                  initializer='zeros')
    super().build(input_shape)

  def call(self, poses, activations, training=None):
    batch = tf.shape(poses)[0]
    h, w = poses.shape[1], poses.shape[2]
    flat = tf.reshape(poses, [batch, h * w, self.in_types, POSE, POSE])
    votes = tf.einsum('bpixy,icyz->bpicxz', flat,
                      tf.cast(self.kernel, tf.float32)) + self.coordinates
    votes = tf.reshape(votes, [batch, 1, h * w * self.in_types,
                               self.num_classes, POSE * POSE])
    act = tf.reshape(activations, [batch, 1, h * w * self.in_types])
    out_poses, out_act, _ = capsule_ops.em_routing(
        votes, act, self.beta_u, self.beta_a, self.routing_iterations,
        final_lambda=self.final_lambda,
        recompute=bool(self.recompute_routing and training))
    return out_poses[:, 0], out_act[:, 0]


@dataclasses.dataclass(frozen=True)
class MatrixCapsNetConfig:
  """MatrixCapsNet's options: its constructor's arguments besides the data
  shape, each declared once (`pipeline.settings`). The defaults are the
  paper's A=B=C=D=32 smallNORB model."""
  channels_a: int = settings.setting(
      32, 'Channels of the first convolution (A).', low=1)
  types_b: int = settings.setting(
      32, 'Primary capsule types (B).', low=1)
  types_c: int = settings.setting(
      32, 'Types of the first convolutional capsules (C).',
      low=1)
  types_d: int = settings.setting(
      32, 'Types of the second convolutional capsules (D).',
      low=1)
  routing_iterations: int = settings.setting(
      3, 'Routing iterations (paper: 3).', low=1,
      high=capsule_ops.MAX_ROUTING_ITERATIONS,
      why=capsule_ops.ROUTING_ITERATIONS_WHY)
  final_lambda: float = settings.setting(
      0.01, 'Inverse temperature of the last EM iteration.',
      low=0.0)
  recompute_routing: bool = settings.setting(
      False, 'Recompute each EM iteration in the backward '
      'pass instead of keeping its temporaries (less memory, slower step).',
      on_resume='recomputing EM routing in the backward pass changes memory '
                'and the order of float operations, not the model')

  def __post_init__(self):
    settings.check(self)


class MatrixCapsNet(base.CapsuleModel):
  """The smallNORB model of the EM routing paper.

  `call(images, labels=None, training=False)` returns `lengths` (the class
  capsules' activations, `[batch, classes]`) and `poses` (`[batch, classes,
  16]`, the flattened 4x4 pose matrices). It has no decoder.

  `recompute_routing=True` trains with each EM iteration compiled with XLA
  and recomputed in the backward pass instead of kept (see
  `capsule_ops.em_routing`): the same values and gradients in less memory
  for a slightly slower step (figures with their machine: docs/models.md).
  Inference is unchanged.
  """

  def __init__(self, input_shape=(32, 32, 2), num_classes=5, **kwargs):
    """`**kwargs`: `MatrixCapsNetConfig` fields (checked there), then
    Keras's own (e.g. `name`)."""
    options = self._take_options(MatrixCapsNetConfig, kwargs)
    super().__init__(**kwargs)
    o = self.options = options
    self._set_shape(input_shape, num_classes)
    self._config = dict(input_shape=self.image_shape,
                        num_classes=self.num_classes, **dataclasses.asdict(o))
    channels_a, types_b, types_c, types_d = (o.channels_a, o.types_b,
                                             o.types_c, o.types_d)
    routing_iterations, final_lambda = o.routing_iterations, o.final_lambda
    recompute_routing = o.recompute_routing
    self.conv1 = keras.layers.Conv2D(channels_a, 5, strides=2,
                                     activation='relu', name='conv1')
    self.primary = PrimaryMatrixCapsules(types_b, name='primary_caps')
    self.conv_caps1 = ConvMatrixCapsules(types_c, 3, 2,
                                         routing_iterations, final_lambda,
                                         recompute_routing, name='conv_caps1')
    self.conv_caps2 = ConvMatrixCapsules(types_d, 3, 1,
                                         routing_iterations, final_lambda,
                                         recompute_routing, name='conv_caps2')
    self.class_capsules = ClassMatrixCapsules(num_classes, routing_iterations,
                                              final_lambda, recompute_routing,
                                              name='class_caps')

  def call(self, images, labels=None, training=False):
    del labels  # No decoder: the labels mask nothing.
    x = self.conv1(self._check_images(images))
    poses, act = self.primary(x)
    poses, act = self.conv_caps1(poses, act, training=training)
    poses, act = self.conv_caps2(poses, act, training=training)
    poses, act = self.class_capsules(poses, act, training=training)
    return {'lengths': act, 'poses': poses}

  @property
  def pose_shape(self):
    return (self.num_classes, POSE * POSE)

  def flops_per_example(self):
    """Forward FLOPs per example: the convolutions, the 4x4 vote products
    and, per EM iteration, the M-step's weighted means and variances and
    the E-step's log-likelihoods (about 8 FLOPs per vote element)."""
    h, w, _ = self.image_shape
    total = 0
    for conv in (self.conv1, self.primary.pose_conv,
                 self.primary.activation_conv):
      flops, oh, ow = base.conv_flops(conv, h, w)
      total += flops
      if conv is self.conv1:
        h, w = oh, ow
    per_vote = 2 * POSE * POSE * POSE
    for caps in (self.conv_caps1, self.conv_caps2):
      votes = caps.out_h * caps.out_w * caps.kernel_size ** 2 * (
          caps.in_types * caps.types)
      total += votes * (per_vote + 8 * POSE * POSE * caps.routing_iterations)
    grid = self.conv_caps2.out_h * self.conv_caps2.out_w
    caps = self.class_capsules
    votes = grid * caps.in_types * caps.num_classes
    total += votes * (per_vote + 8 * POSE * POSE * caps.routing_iterations)
    return int(total)
