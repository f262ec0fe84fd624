"""Capsule layers of CapsNet: PrimaryCapsules, ClassCapsules, Decoder."""

import tensorflow as tf
import tf_keras as keras

from pipeline.models import capsule_ops

class PrimaryCapsules(keras.layers.Layer):
  """A convolution whose channels are grouped into squashed capsules.

  On the paper's 20x20x256 Conv1 output: 9x9 stride 2 → 6x6 grid of 32
  capsule channels of 8D → 1152 capsules.
  Input `[batch, H, W, C]`; output `[batch, h * w * channels, dim]`.
  """

  def __init__(self, channels=32, dim=8, kernel_size=9, strides=2, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.dim = dim
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv = keras.layers.Conv2D(
        channels * dim, kernel_size, strides=strides, padding='valid',
        name='conv')
    # Set through `CapsNet.compile_inference`: in float32, inference calls
    # run the convolution XLA-compiled (see `_compiled_conv`).
    self.compile_inference = False
    self._compiled = tf.function(self._compiled_conv, jit_compile=True)

  def call(self, inputs, training=None):
    if self.strides > 1 and self.compute_dtype in ('bfloat16', 'float16'):
      x = self._space_to_depth_conv(inputs)
    elif (self.compile_inference and not training and self.conv.built and
          self.compute_dtype == 'float32'):
      x = self._compiled(inputs)
    else:
      x = self.conv(inputs)
    h, w = x.shape[1], x.shape[2]
    x = tf.reshape(x, [-1, h * w * self.channels, self.dim])
    # Squash (and everything after it up to the decoder) runs in float32.
    return capsule_ops.squash(tf.cast(x, tf.float32))

  def _compiled_conv(self, inputs):
    """The float32 convolution as XLA compiles it, for inference only.

    On this project's CPUs XLA's float32 convolution runs the forward pass
    of the paper's layer (9x9/2, 256 → 256 channels) 1.1-1.6x faster than
    oneDNN's, but its backward pass some 40x slower, so training keeps
    oneDNN's; in 16 bits oneDNN's (the stride-1 form) is the faster one.
    """
    x = tf.nn.conv2d(inputs, self.conv.kernel, self.strides, 'VALID')
    return tf.nn.bias_add(x, self.conv.bias)

  def _space_to_depth_conv(self, inputs):
    """The same strided convolution as a stride-1 one, on the same weights.

    Space-to-depth by the stride s turns the input into `[H/s, W/s, s*s*C]`
    and the k x k kernel (zero-padded to a multiple of s) into a
    ceil(k/s) x ceil(k/s) one over s*s*C channels. In 16-bit precision
    oneDNN's strided convolution has a slow backward pass on CPUs (its
    input gradient); the stride-1 form runs forward and backward at about
    2.2x its speed on this project's CPU (9x9/2 over 256 channels, batch
    100). In float32 the direct convolution is the faster one.
    """
    if not self.conv.built:
      self.conv.build(inputs.shape)
    s, k = self.strides, self.kernel_size
    h, w = int(inputs.shape[1]), int(inputs.shape[2])
    out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
    pad_h, pad_w = -h % s, -w % s
    x = tf.cast(inputs, self.compute_dtype)
    if pad_h or pad_w:
      x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    x = tf.nn.space_to_depth(x, s)
    kernel = tf.cast(self.conv.kernel, self.compute_dtype)
    k_s = -(-k // s)
    kernel = tf.pad(kernel, [[0, k_s * s - k], [0, k_s * s - k], [0, 0],
                             [0, 0]])
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    # [ky, dy, kx, dx, c, o] → [ky, kx, dy, dx, c, o]: space_to_depth puts
    # a block's pixels in (dy, dx, c) order on the channel axis.
    kernel = tf.reshape(kernel, [k_s, s, k_s, s, c_in, c_out])
    kernel = tf.transpose(kernel, [0, 2, 1, 3, 4, 5])
    kernel = tf.reshape(kernel, [k_s, k_s, s * s * c_in, c_out])
    x = tf.nn.conv2d(x, kernel, 1, 'VALID')[:, :out_h, :out_w]
    return tf.nn.bias_add(x, tf.cast(self.conv.bias, self.compute_dtype))

  def get_config(self):
    config = super().get_config()
    config.update(channels=self.channels, dim=self.dim,
                  kernel_size=self.kernel_size, strides=self.strides)
    return config


# What u_hat and the routing passes may be computed in.
ROUTING_DTYPES = ('float32', 'bfloat16', 'float16')


class ClassCapsules(keras.layers.Layer):
  """Fully connected capsules with dynamic routing.

  One `[in_dim, out_dim]` transform per (input capsule, class) pair gives the
  predictions u_hat = W_ij u_i in a single einsum (a batched matmul over the
  input capsules; W is never tiled across the batch), then
  `capsule_ops.dynamic_routing`. u_hat and routing run in `routing_dtype`,
  float32 by default whatever the layer's compute dtype; 'bfloat16' halves
  the memory traffic of the routing passes over u_hat, the part of the
  layer's time that does not shrink otherwise (sums, logits, softmax and
  squash stay float32). It applies to training steps and plain inference;
  compiled inference (`compile_inference`) always routes in float32.

  Input `[batch, in_caps, in_dim]`; returns `(v [batch, classes, out_dim],
  c [batch, in_caps, classes])`.
  """

  def __init__(self, num_classes=10, dim=16, routing_iterations=3,
               stop_inner_gradients=False, use_bias=False, jit_compile=False,
               routing_dtype='float32', **kwargs):
    super().__init__(**kwargs)
    if routing_dtype not in ROUTING_DTYPES:
      raise ValueError(f'routing_dtype must be one of {ROUTING_DTYPES}, got '
                       f'{routing_dtype!r}.')
    self.routing_dtype = routing_dtype
    self.num_classes = num_classes
    self.dim = dim
    self.routing_iterations = routing_iterations
    self.stop_inner_gradients = stop_inner_gradients
    self.use_bias = use_bias
    self.jit_compile = jit_compile
    # XLA fuses u_hat and the routing passes over it (memory-bound chains of
    # small ops); used in training steps only, so exported signatures hold
    # plain TF ops that any TF Serving build runs.
    self._compiled = tf.function(self._capsules, jit_compile=True)
    # Compiled inference routes in float32 whatever `routing_dtype`: XLA's
    # forward pass alone is slower with 16-bit u_hat on CPU (0.71x, measured
    # at the paper's shapes), where training steps and plain TF inference
    # gain (1.26x, 1.29x).
    # A float32 layer's is the training function itself: one compilation.
    self._compiled_float32 = self._compiled
    if routing_dtype != 'float32':
      self._compiled_float32 = tf.function(
          lambda inputs: self._capsules(inputs, tf.float32), jit_compile=True)
    # Set through `CapsNet.compile_inference`: inference calls compiled too.
    self.compile_inference = False

  def build(self, input_shape):
    in_caps, in_dim = int(input_shape[-2]), int(input_shape[-1])
    self.kernel = self.add_weight(
        name='kernel', shape=[in_caps, self.num_classes, in_dim, self.dim],
        initializer=keras.initializers.RandomNormal(stddev=0.01))
    self.bias = None
    if self.use_bias:
      self.bias = self.add_weight(
          name='bias', shape=[self.num_classes, self.dim],
          initializer='zeros')
    super().build(input_shape)

  def _capsules(self, inputs, dtype=None):
    dtype = dtype or self.routing_dtype
    u = tf.cast(inputs, dtype)
    kernel = tf.cast(self.kernel, dtype)
    u_hat = tf.einsum('bid,iodk->biok', u, kernel)
    bias = None if self.bias is None else tf.cast(self.bias, tf.float32)
    return capsule_ops.dynamic_routing(
        u_hat, self.routing_iterations,
        stop_inner_gradients=self.stop_inner_gradients, bias=bias)

  def call(self, inputs, training=None):
    if self.jit_compile and training:
      return self._compiled(inputs)
    if self.jit_compile and self.compile_inference:
      return self._compiled_float32(inputs)
    return self._capsules(inputs)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, dim=self.dim,
                  routing_iterations=self.routing_iterations,
                  stop_inner_gradients=self.stop_inner_gradients,
                  use_bias=self.use_bias, jit_compile=self.jit_compile,
                  routing_dtype=self.routing_dtype)
    return config


def class_mask(scores, num_targets):
  """One-hot masks of the `num_targets` highest entries of `scores`.

  Args:
    scores: `[batch, classes]` (k-hot labels or capsule lengths).
    num_targets: how many masks per example.

  Returns:
    `[batch, classes]` when `num_targets` is 1, else
    `[batch, num_targets, classes]`, float32.
  """
  classes = scores.shape[-1]
  if num_targets == 1:
    return tf.one_hot(tf.argmax(scores, axis=-1), classes)
  _, idx = tf.math.top_k(scores, k=num_targets)
  return tf.one_hot(idx, classes)


class Decoder(keras.layers.Layer):
  """FC 512-1024-(H*W*C) sigmoid reconstruction from masked class capsules.

  `call(poses, mask)`: poses `[batch, classes, dim]`, mask `[batch, classes]`
  → `[batch, H, W, C]`; or mask `[batch, n, classes]` (one one-hot per
  target, as MultiMNIST needs) → `[batch, n, H, W, C]`, each target
  reconstructed separately.
  """

  def __init__(self, output_shape=(28, 28, 1), units=(512, 1024), **kwargs):
    super().__init__(**kwargs)
    self.image_shape = tuple(int(d) for d in output_shape)
    self.units = tuple(int(u) for u in units)
    self.hidden = [keras.layers.Dense(u, activation='relu', name=f'fc{i + 1}')
                   for i, u in enumerate(self.units)]
    self.out = keras.layers.Dense(
        self.image_shape[0] * self.image_shape[1] * self.image_shape[2],
        activation='sigmoid', name=f'fc{len(self.units) + 1}')

  def call(self, poses, mask):
    poses = tf.cast(poses, self.compute_dtype)
    mask = tf.cast(mask, self.compute_dtype)
    classes, dim = poses.shape[-2], poses.shape[-1]
    if mask.shape.rank == 2:
      x = tf.reshape(poses * mask[:, :, None], [-1, classes * dim])
      out_shape = [-1, *self.image_shape]
    else:
      x = poses[:, None] * mask[..., None]
      x = tf.reshape(x, [-1, mask.shape[1], classes * dim])
      out_shape = [-1, mask.shape[1], *self.image_shape]
    for layer in self.hidden:
      x = layer(x)
    return tf.reshape(self.out(x), out_shape)

  def get_config(self):
    config = super().get_config()
    config.update(output_shape=self.image_shape, units=self.units)
    return config
