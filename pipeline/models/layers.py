"""Capsule layers of CapsNet: PrimaryCapsules, ClassCapsules, Decoder."""

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.models import capsule_ops

# The modes a layer's formulation is chosen for: a training step (forward
# and backward) and inference (forward only).
MODES = ('train', 'infer')


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
  `compile_inference` is on).
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
    times the input's memory), so both are training candidates only.
    """
    if mode == 'infer':
      return ('direct', 'space_to_depth', 'fft', 'xla')
    if device != 'GPU':
      return ('direct', 'space_to_depth', 'patch_grad', 'patch_matmul', 'fft')
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
    if name == 'space_to_depth':
      return self._space_to_depth_conv(inputs)
    if name == 'patch_grad':
      return self._patch_grad_conv(inputs)
    if name == 'patch_matmul':
      return self._patch_matmul_conv(inputs)
    if name == 'fft':
      return self._fft_conv(inputs)
    if name == 'xla':
      return self._compiled(inputs)
    return self._direct_conv(inputs)

  def _direct_conv(self, inputs, dtype=None):
    dtype = dtype or self.compute_dtype
    x = tf.nn.conv2d(tf.cast(inputs, dtype), tf.cast(self.conv.kernel, dtype),
                     self.strides, 'VALID')
    return self._add_bias(x)

  def _patch_grad_conv(self, inputs):
    """The direct convolution, with the kernel's gradient computed as
    matmuls over the input's space-to-depth blocks (`_kernel_gradient`).
    The input's gradient is the direct form's. Which backward is faster is
    measured (`pipeline.perf.autotune`).
    """
    s = self.strides

    @tf.custom_gradient
    def conv(x, kernel):
      def grad(dy):
        dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), s, 'VALID')
        return dx, self._kernel_gradient(x, dy)
      return tf.nn.conv2d(x, kernel, s, 'VALID'), grad

    x = conv(tf.cast(inputs, self.compute_dtype),
             tf.cast(self.conv.kernel, self.compute_dtype))
    return self._add_bias(x)

  def _kernel_gradient(self, x, dy):
    """The gradient of the strided convolution's kernel: `[k, k, C, O]`.

    Space-to-depth by the stride s splits the k x k kernel into ceil(k/s)^2
    blocks of s x s offsets; the gradient of each block is one matmul, the
    input's `[batch * h * w, s*s*C]` block at that offset transposed times
    the output's gradient `[batch * h * w, O]`. That is the kernel
    gradient's arithmetic as a few large matmuls, with no k*k copy of the
    input.
    """
    s, k = self.strides, self.kernel_size
    c_in, c_out = int(x.shape[-1]), int(dy.shape[-1])
    out_h, out_w = int(dy.shape[1]), int(dy.shape[2])
    pad_h, pad_w = -int(x.shape[1]) % s, -int(x.shape[2]) % s
    if pad_h or pad_w:
      x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    blocks = tf.nn.space_to_depth(x, s)
    k_s = -(-k // s)
    dy = tf.reshape(dy, [-1, c_out])
    grads = [tf.matmul(tf.reshape(blocks[:, a:a + out_h, b:b + out_w],
                                  [-1, s * s * c_in]), dy, transpose_a=True)
             for a in range(k_s) for b in range(k_s)]
    # [ky, kx, dy, dx, c, o] → [ky, dy, kx, dx, c, o]: a block's channels
    # are its pixels in (dy, dx, c) order.
    grad = tf.reshape(tf.stack(grads), [k_s, k_s, s, s, c_in, c_out])
    grad = tf.transpose(grad, [0, 2, 1, 3, 4, 5])
    return tf.reshape(grad, [k_s * s, k_s * s, c_in, c_out])[:k, :k]

  def _patch_matmul_conv(self, inputs):
    """The convolution as one matmul: the input's k x k patches at the
    stride (`[batch * h * w, k * k * C]`) times the kernel. The kernel's
    gradient is the same patches transposed times the output's gradient;
    the input's gradient is the direct form's.
    """
    k, s = self.kernel_size, self.strides
    c_in, c_out = self.conv.kernel.shape[2], self.conv.kernel.shape[3]

    @tf.custom_gradient
    def conv(x, kernel):
      patches = tf.image.extract_patches(x, [1, k, k, 1], [1, s, s, 1],
                                         [1, 1, 1, 1], 'VALID')
      out_h, out_w = patches.shape[1], patches.shape[2]
      patches = tf.reshape(patches, [-1, k * k * c_in])
      y = tf.matmul(patches, tf.reshape(kernel, [-1, c_out]))

      def grad(dy):
        dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), s, 'VALID')
        dk = tf.matmul(patches, tf.reshape(dy, [-1, c_out]), transpose_a=True)
        return dx, tf.reshape(dk, kernel.shape)
      return tf.reshape(y, [-1, out_h, out_w, c_out]), grad

    x = conv(tf.cast(inputs, self.compute_dtype),
             tf.cast(self.conv.kernel, self.compute_dtype))
    return self._add_bias(x)

  def _fft_conv(self, inputs):
    """The strided convolution by the convolution theorem.

    A VALID correlation of an H x W image with a k x k kernel is, at every
    output position, the circular correlation of size H x W (no position
    wraps around). So: the input's real 2-D FFT over its H x (W/2+1)
    frequencies F (`[F, batch, C]`); the kernel's DFT at those frequencies
    as matmuls over its taps, one axis at a time (`[F, C, O]`, no FFT of a
    padded kernel); per frequency the product X conj(K) as two real batched
    matmuls; and the inverse DFT taken at the strided output positions
    only, as one more matmul. For the paper's layer that is 11.5 GFLOP
    against the direct form's 38 per batch of 100, and its gradient is the
    same matmuls transposed.

    The transforms run in float32 (TF's FFTs take no 16-bit input); the
    per-frequency matmuls in bfloat16 under a bfloat16 policy, else in
    float32: a frequency sums a whole row of the input, past float16's
    range (65,504) on real activations.
    """
    dtype = self.compute_dtype
    matmul_dtype = tf.bfloat16 if dtype == 'bfloat16' else tf.float32
    k, s = self.kernel_size, self.strides
    h, w, c_in = (int(d) for d in inputs.shape[1:])
    c_out = int(self.conv.kernel.shape[3])
    taps, inverse, (out_h, out_w) = _fft_conv_matrices(h, w, k, s)
    f = h * (w // 2 + 1)
    x = tf.signal.rfft2d(tf.transpose(tf.cast(inputs, tf.float32),
                                      [0, 3, 1, 2]))     # [B, C, H, W/2+1]
    x = tf.reshape(tf.transpose(x, [2, 3, 0, 1]), [f, -1, c_in])
    # Real parts over imaginary parts on the batch axis: [F, 2B, C].
    x = tf.cast(tf.concat([tf.math.real(x), tf.math.imag(x)], 1),
                matmul_dtype)
    k_re, k_im = (tf.cast(tf.reshape(part, [f, c_in, c_out]), matmul_dtype)
                  for part in _taps_spectrum(tf.cast(self.conv.kernel,
                                                     tf.float32), taps))
    x_re_k_re, x_im_k_re = tf.split(tf.matmul(x, k_re), 2, 1)
    x_re_k_im, x_im_k_im = tf.split(tf.matmul(x, k_im), 2, 1)
    # Y = X conj(K); the inverse DFT of Y at the output positions.
    y_re = tf.reshape(tf.cast(x_re_k_re + x_im_k_im, tf.float32), [f, -1])
    y_im = tf.reshape(tf.cast(x_im_k_re - x_re_k_im, tf.float32), [f, -1])
    y = tf.matmul(inverse[0], y_re) + tf.matmul(inverse[1], y_im)
    y = tf.transpose(tf.reshape(y, [out_h, out_w, -1, c_out]), [2, 0, 1, 3])
    return self._add_bias(tf.cast(y, dtype))

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

  def _space_to_depth_conv(self, inputs):
    """The same strided convolution as a stride-1 one, on the same weights.

    Space-to-depth by the stride s turns the input into `[H/s, W/s, s*s*C]`
    and the k x k kernel (zero-padded to a multiple of s) into a
    ceil(k/s) x ceil(k/s) one over s*s*C channels. Some CPUs run the
    strided form's backward pass (its input gradient) slowly in 16 bits;
    which form is faster is measured (`pipeline.perf.autotune`).
    """
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
    return self._add_bias(x)

  def reference(self, inputs):
    """The layer's output computed the plainest way, in float32 (the
    yardstick every formulation is checked against)."""
    return self._squashed(self._direct_conv(inputs, tf.float32))

  def get_config(self):
    config = super().get_config()
    config.update(channels=self.channels, dim=self.dim,
                  kernel_size=self.kernel_size, strides=self.strides)
    return config


def _fft_conv_matrices(h, w, k, s):
  """The constant matrices of `PrimaryCapsules._fft_conv`.

  Returns:
    `(taps, inverse, (out_h, out_w))`: `taps`, what `_taps_spectrum` takes
    the DFT of k x k taps with at the H x (W/2+1) frequencies of a real
    H x W FFT: the row DFT's real and imaginary parts `[W/2+1, k]`, and the
    column DFT of a complex input stacked as two real matrices `[H, 2k]`;
    `inverse`, the two matrices that take a spectrum's real and imaginary
    parts `[F, n]` to the real H x W signal at the stride's VALID output
    positions, `[out_h * out_w, F]` each.
  """
  half = w // 2 + 1
  phase_w = 2 * np.pi * np.outer(np.arange(half), np.arange(k)) / w
  phase_h = 2 * np.pi * np.outer(np.arange(h), np.arange(k)) / h
  cos_h, sin_h = np.cos(phase_h), -np.sin(phase_h)
  taps = (np.cos(phase_w), -np.sin(phase_w),
          np.concatenate([cos_h, -sin_h], 1), np.concatenate([sin_h, cos_h], 1))
  out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
  p = s * np.arange(out_h)[:, None, None, None]
  q = s * np.arange(out_w)[None, :, None, None]
  u = np.arange(h)[None, None, :, None]
  v = np.arange(half)[None, None, None, :]
  # A half spectrum stands for its mirror too: every frequency but 0 and
  # (for even W) W/2 counts twice.
  weight = np.where((v == 0) | ((w % 2 == 0) & (v == w // 2)), 1.0, 2.0)
  phi = 2 * np.pi * (u * p / h + v * q / w)
  inverse = ((weight * np.cos(phi) / (h * w)).reshape(out_h * out_w, -1),
             (-weight * np.sin(phi) / (h * w)).reshape(out_h * out_w, -1))
  as_tensors = lambda ms: tuple(tf.constant(m, tf.float32) for m in ms)
  return as_tensors(taps), as_tensors(inverse), (out_h, out_w)


def _taps_spectrum(kernel, taps):
  """The DFT of a `[k, k, ...]` kernel's taps at a real FFT's frequencies,
  as `(real, imaginary)` `[F, n]` (n the kernel's trailing sizes' product).

  Along the width first (`[k, W/2+1, n]`, one small matmul per tap row),
  then along the height over the complex result: about a fifth of the
  arithmetic of one matmul over all k*k taps.
  """
  row_re, row_im, col_re, col_im = taps
  k = int(kernel.shape[0])
  kernel = tf.reshape(kernel, [k, k, -1])
  rows = tf.concat([tf.matmul(row_re, kernel), tf.matmul(row_im, kernel)], 0)
  rows = tf.reshape(rows, [2 * k, -1])  # [re; im] of [k, W/2+1 * n]
  n = int(kernel.shape[2])
  return (tf.reshape(tf.matmul(col_re, rows), [-1, n]),
          tf.reshape(tf.matmul(col_im, rows), [-1, n]))


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
    """The formulations `mode` ('train' or 'infer') may run (on any
    `device`)."""
    del device
    names = list(self.LAYOUTS)
    if self.jit_compile:
      names += [f'{layout}+xla' for layout in self.LAYOUTS]
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
