"""Capsule layers of CapsNet: PrimaryCapsules, ClassCapsules, Decoder."""

import tensorflow as tf
import tf_keras as keras

from pipeline.models import capsule_ops
from pipeline.models import convolutions

# The modes a layer's formulation is chosen for: a training step (forward
# and backward) and inference (forward only).
MODES = ('train', 'infer')


# PrimaryCapsules' formulations that are a function of (input, kernel,
# stride) in the compute dtype.
_CONVOLUTIONS = {'space_to_depth': convolutions.space_to_depth_conv,
                 'patch_grad': convolutions.patch_grad_conv,
                 'patch_matmul': convolutions.patch_matmul_conv}


class PrimaryCapsules(keras.layers.Layer):
  """A convolution whose channels are grouped into squashed capsules.

  On the paper's 20x20x256 Conv1 output: 9x9 stride 2 → 6x6 grid of 32
  capsule channels of 8D → 1152 capsules.
  Input `[batch, H, W, C]`; output `[batch, h * w * channels, dim]`.

  The convolution has `FORMULATIONS`, equal up to float rounding, whose
  speed depends on the hardware, the precision and the pass: `direct`
  (the strided convolution), `space_to_depth` (the same convolution as a
  stride-1 one over space-to-depth blocks), `patch_grad` (the direct one,
  whose kernel gradient is matmuls over the input's space-to-depth blocks;
  a training candidate), `patch_matmul` (one matmul over the input's k x k
  patches, which the kernel gradient reuses; a training candidate), `fft`
  (the convolution theorem: a product per frequency, about a third of the
  direct form's multiply-adds for the paper's 9 x 9 kernel on 20 x 20) and
  `xla` (the direct one compiled by XLA; used in inference only while
  `compile_inference` is on); `pipeline.models.convolutions` has the math.
  `set_formulation(mode, name)` picks one per mode; `pipeline.perf.autotune`
  does so by measurement on the machine that runs. The default is `direct`.
  """

  FORMULATIONS = ('direct', 'space_to_depth', 'patch_grad', 'patch_matmul',
                  'fft', 'xla')

  def __init__(self, channels=32, dim=8, kernel_size=9, strides=2, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.dim = dim
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv = keras.layers.Conv2D(
        channels * dim, kernel_size, strides=strides, padding='valid',
        name='conv')
    # Set through `CapsNet.compile_inference`: whether inference calls may
    # run an XLA formulation (exported signatures stay plain TF ops).
    self.compile_inference = False
    self._formulation = {mode: 'direct' for mode in MODES}
    self._plain_infer = None
    self._compiled = tf.function(self._direct_conv, jit_compile=True)

  def formulations(self, mode, device='CPU'):
    """The formulations `mode` ('train' or 'infer') may run on `device`
    ('CPU' or 'GPU').

    XLA's CPU backend has no oneDNN convolution backprop (its generic loops
    run a training step of the paper's layer tens of times slower; see
    docs/benchmark.md), so on a CPU `xla` is an inference candidate only.
    `patch_grad` differs from `direct` only in its backward pass, and
    `patch_matmul` keeps the input's patches for its backward pass (k*k
    times the input's memory), so both are training candidates only. On a
    CPU `space_to_depth` is no training candidate either: it trained slower
    than `direct` in every sitting on every CPU measured (1.04-1.6x; Intel
    Xeon with AMX, AMD Zen 4, Zen 4 capped to AVX2, Zen 5;
    docs/benchmark.md).
    """
    if mode == 'infer':
      return ('direct', 'space_to_depth', 'fft', 'xla')
    if device != 'GPU':
      return ('direct', 'patch_grad', 'patch_matmul', 'fft')
    return self.FORMULATIONS

  def run(self, inputs, name):
    """The layer's output on `inputs` in formulation `name`."""
    return self._squashed(self.convolve(inputs, name))

  def _squashed(self, x):
    """`[batch, h, w, channels * dim]` → squashed float32 capsules."""
    h, w = x.shape[1], x.shape[2]
    x = tf.reshape(x, [-1, h * w * self.channels, self.dim])
    return capsule_ops.squash(tf.cast(x, tf.float32))

  def formulation(self, mode):
    """The formulation `mode` ('train' or 'infer') runs."""
    return self._formulation[mode]

  def set_formulation(self, mode, name):
    """Makes calls in `mode` run formulation `name` (from the next trace).

    Raises:
      ValueError: for an unknown mode or formulation.
    """
    if mode not in MODES or name not in self.FORMULATIONS:
      raise ValueError(f'PrimaryCapsules takes a mode of {MODES} and a '
                       f'formulation of {self.FORMULATIONS}, got {mode!r}, '
                       f'{name!r}.')
    self._formulation[mode] = name
    if mode == 'infer':
      self._plain_infer = None

  def compiles(self, name):
    """Whether formulation `name` runs compiled by XLA."""
    return name == 'xla'

  def set_plain_formulation(self, name):
    """Makes inference that may not compile (`compile_inference` off: an
    export's signatures) run `name`, until the next `set_formulation` of
    'infer'. Unset, it runs the inference formulation, or `direct` in its
    place when that one compiles.

    Raises:
      ValueError: for a formulation that compiles or does not infer.
    """
    if self.compiles(name) or name not in self.formulations('infer', 'GPU'):
      raise ValueError(f'PrimaryCapsules infers without XLA in one of '
                       f'{self.formulations("infer")} but \'xla\', got '
                       f'{name!r}.')
    self._plain_infer = name

  def call(self, inputs, training=None):
    name = self._formulation['train' if training else 'infer']
    if not training and not self.compile_inference:
      name = self._plain_infer or ('direct' if self.compiles(name) else name)
    # Squash (and everything after it up to the decoder) runs in float32.
    return self.run(inputs, name)

  def convolve(self, inputs, name='direct'):
    """The layer's convolution of `inputs` in formulation `name`, in the
    layer's compute dtype: `[batch, h, w, channels * dim]`."""
    if not self.conv.built:
      self.conv.build(inputs.shape)
    if name == 'xla':
      return self._compiled(inputs)
    if name == 'fft':
      return self._fft_conv(inputs)
    if name in _CONVOLUTIONS:
      return self._add_bias(_CONVOLUTIONS[name](*self._operands(inputs),
                                                self.strides))
    return self._direct_conv(inputs)

  def _direct_conv(self, inputs, dtype=None):
    x = tf.nn.conv2d(*self._operands(inputs, dtype), self.strides, 'VALID')
    return self._add_bias(x)

  def _fft_conv(self, inputs):
    # In bfloat16 under a bfloat16 policy, else in float32: a frequency
    # sums the whole map, past float16's range.
    dtype = tf.bfloat16 if self.compute_dtype == 'bfloat16' else tf.float32
    y = convolutions.fft_conv(*self._operands(inputs, dtype), self.strides,
                              dtype)
    return self._add_bias(tf.cast(y, self.compute_dtype))

  def _operands(self, inputs, dtype=None):
    """The input and the kernel in `dtype` (default: the compute dtype)."""
    dtype = dtype or self.compute_dtype
    return tf.cast(inputs, dtype), tf.cast(self.conv.kernel, dtype)

  def _add_bias(self, x):
    """`x` plus the bias, whose gradient is summed in float32.

    TF's own BiasAddGrad sums a 16-bit gradient in 16 bits: over the
    paper's 100 x 6 x 6 positions that is 0.10 off the float32 sum (the
    probe rejected space_to_depth for it on three CPUs; docs/benchmark.md).
    In float32 it is TF's own bias add.
    """
    if x.dtype == tf.float32:
      return tf.nn.bias_add(x, self.conv.bias)

    @tf.custom_gradient
    def add(x, bias):
      def grad(dy):
        axes = list(range(dy.shape.rank - 1))
        return dy, tf.reduce_sum(tf.cast(dy, tf.float32), axes)
      return tf.nn.bias_add(x, tf.cast(bias, x.dtype)), grad
    return add(x, tf.convert_to_tensor(self.conv.bias))

  def reference(self, inputs):
    """The layer's output computed the plainest way, in float32 (the
    yardstick every formulation is checked against)."""
    return self._squashed(self._direct_conv(inputs, tf.float32))

  def reference_formulation(self):
    """The formulation that computes `reference` itself: `direct` in
    float32, none in 16 bits."""
    return 'direct' if self.compute_dtype == 'float32' else None

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
  predictions u_hat = W_ij u_i (W is never tiled across the batch), then
  routing-by-agreement (`capsule_ops.dynamic_routing`). u_hat and routing
  run in `routing_dtype`, float32 by default whatever the layer's compute
  dtype; 'bfloat16' halves the memory traffic of the routing passes over
  u_hat (sums, logits, softmax and squash stay float32).

  The layer has formulations, equal up to float rounding, named
  `<layout>[+xla][/float32]`: the layout of u_hat, `batch_major`
  `[batch, in_caps, classes, dim]` (an einsum), `caps_major`
  `[in_caps, batch, classes * dim]` (one batched matmul over the input
  capsules) or `class_major` `[batch, classes, in_caps, dim]` (the same
  matmul, transposed once, so that the routing's sums and agreements are
  batched matmuls); `+xla` compiles u_hat and the routing passes with XLA (in
  inference only while `compile_inference` is on, so exported signatures
  hold plain TF ops); `/float32` (inference only) routes in float32
  whatever `routing_dtype`. `set_formulation(mode, name)` picks one per
  mode; `pipeline.perf.autotune` does so by measurement. The default is
  `batch_major`, with `+xla` when `jit_compile`.

  Input `[batch, in_caps, in_dim]`; returns `(v [batch, classes, out_dim],
  c [batch, in_caps, classes])`.
  """

  LAYOUTS = ('batch_major', 'caps_major', 'class_major')

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
    default = 'batch_major+xla' if jit_compile else 'batch_major'
    self._formulation = {mode: default for mode in MODES}
    self._plain_infer = None
    # One XLA function per (layout, dtype), made at its first use; kept
    # out of Keras' tracking (a cache, not state to checkpoint or export).
    object.__setattr__(self, '_compiled', {})
    # Set through `CapsNet.compile_inference`: inference calls may run an
    # XLA formulation.
    self.compile_inference = False

  def formulations(self, mode, device='CPU'):
    """The formulations `mode` ('train' or 'infer') may run on `device`
    ('CPU' or 'GPU'): every layout, with and without XLA.

    On a CPU with XLA on, the probe leaves out those that never came within
    1.5x of the fastest on any CPU measured (Intel Xeon with AMX, AMD Zen 4,
    Zen 4 capped to AVX2, Zen 5; docs/benchmark.md): `batch_major` and
    `caps_major` without XLA (2.1-7.3x), and in training `batch_major+xla`
    (1.6-3.2x). `class_major` stays: the fastest layout without XLA, which
    an export runs. `set_formulation` still takes them all.
    """
    names = list(self.LAYOUTS)
    if self.jit_compile:
      names += [f'{layout}+xla' for layout in self.LAYOUTS]
      if device != 'GPU':
        slow = {'batch_major', 'caps_major'}
        if mode == 'train':
          slow.add('batch_major+xla')
        names = [n for n in names if n not in slow]
    if mode == 'infer' and self.routing_dtype != 'float32':
      names += [f'{n}/float32' for n in names]
    return tuple(names)

  def formulation(self, mode):
    """The formulation `mode` ('train' or 'infer') runs."""
    return self._formulation[mode]

  def set_formulation(self, mode, name):
    """Makes calls in `mode` run formulation `name` (from the next trace).

    Raises:
      ValueError: for an unknown mode, or a formulation `mode` does not take.
    """
    if mode not in MODES or name not in self.formulations(mode, 'GPU'):
      raise ValueError(
          f'ClassCapsules takes a mode of {MODES} and there a formulation '
          f'of {self.formulations(mode if mode in MODES else "train")}, got '
          f'{mode!r}, {name!r}.')
    self._formulation[mode] = name
    if mode == 'infer':
      self._plain_infer = None

  def compiles(self, name):
    """Whether formulation `name` runs compiled by XLA."""
    return '+xla' in name

  def set_plain_formulation(self, name):
    """Makes inference that may not compile (`compile_inference` off: an
    export's signatures) run `name`, until the next `set_formulation` of
    'infer'. Unset, it runs the inference formulation without its `+xla`.

    Raises:
      ValueError: for a formulation that compiles or does not infer.
    """
    if self.compiles(name) or name not in self.formulations('infer', 'GPU'):
      plain = tuple(n for n in self.formulations('infer')
                    if not self.compiles(n))
      raise ValueError(f'ClassCapsules infers without XLA in one of {plain}, '
                       f'got {name!r}.')
    self._plain_infer = name

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

  def _capsules(self, inputs, layout='batch_major', dtype=None):
    dtype = dtype or self.routing_dtype
    u = tf.cast(inputs, dtype)
    kernel = tf.cast(self.kernel, dtype)
    bias = None if self.bias is None else tf.cast(self.bias, tf.float32)
    if layout in ('caps_major', 'class_major'):
      routing = (capsule_ops.dynamic_routing_caps_major
                 if layout == 'caps_major' else
                 capsule_ops.dynamic_routing_class_major)
      return routing(u, kernel, self.routing_iterations,
                     stop_inner_gradients=self.stop_inner_gradients,
                     bias=bias)
    u_hat = tf.einsum('bid,iodk->biok', u, kernel)
    return capsule_ops.dynamic_routing(
        u_hat, self.routing_iterations,
        stop_inner_gradients=self.stop_inner_gradients, bias=bias)

  def run(self, inputs, name):
    """The layer's output on `inputs` in formulation `name`."""
    base, _, dtype = name.partition('/')
    layout, _, xla = base.partition('+')
    dtype = dtype or self.routing_dtype
    if not xla:
      return self._capsules(inputs, layout, dtype)
    key = (layout, dtype)
    if key not in self._compiled:
      self._compiled[key] = tf.function(
          lambda x: self._capsules(x, layout, dtype), jit_compile=True)
    return self._compiled[key](inputs)

  def reference(self, inputs):
    """The output computed the plainest way (batch-major, float32, no
    XLA): the yardstick every formulation is checked against."""
    return self._capsules(inputs, 'batch_major', tf.float32)

  def call(self, inputs, training=None):
    name = self._formulation['train' if training else 'infer']
    if not training and not self.compile_inference:
      name = self._plain_infer or name.replace('+xla', '')
    return self.run(inputs, name)

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
