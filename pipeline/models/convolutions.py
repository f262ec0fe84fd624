"""Formulations of a strided VALID convolution, equal up to float rounding.

PrimaryCapsules runs one of these (or TF's own `tf.nn.conv2d`); which is
fastest depends on the hardware, the precision and the pass, and is
measured on the machine that runs (`pipeline.perf.autotune`). Each takes
`x` `[batch, H, W, C]` and a `kernel` `[k, k, C, O]` in one dtype and
returns `[batch, (H - k) // s + 1, (W - k) // s + 1, O]` in it, without a
bias.
"""

import numpy as np
import tensorflow as tf


def space_to_depth_conv(x, kernel, s):
  """The strided convolution as a stride-1 one, on the same weights.

  Space-to-depth by the stride s turns the input into `[H/s, W/s, s*s*C]`
  and the k x k kernel (zero-padded to a multiple of s) into a
  ceil(k/s) x ceil(k/s) one over s*s*C channels. Some CPUs run the strided
  form's backward pass (its input gradient) slowly in 16 bits.
  """
  k = int(kernel.shape[0])
  h, w = int(x.shape[1]), int(x.shape[2])
  out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
  pad_h, pad_w = -h % s, -w % s
  if pad_h or pad_w:
    x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
  x = tf.nn.space_to_depth(x, s)
  k_s = -(-k // s)
  kernel = tf.pad(kernel, [[0, k_s * s - k], [0, k_s * s - k], [0, 0],
                           [0, 0]])
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  # [ky, dy, kx, dx, c, o] → [ky, kx, dy, dx, c, o]: space_to_depth puts
  # a block's pixels in (dy, dx, c) order on the channel axis.
  kernel = tf.reshape(kernel, [k_s, s, k_s, s, c_in, c_out])
  kernel = tf.transpose(kernel, [0, 2, 1, 3, 4, 5])
  kernel = tf.reshape(kernel, [k_s, k_s, s * s * c_in, c_out])
  return tf.nn.conv2d(x, kernel, 1, 'VALID')[:, :out_h, :out_w]


def patch_grad_conv(x, kernel, s):
  """TF's strided convolution, with the kernel's gradient computed as
  matmuls over the input's space-to-depth blocks (`kernel_gradient`). The
  input's gradient is TF's own."""
  k = int(kernel.shape[0])

  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), s, 'VALID')
      return dx, kernel_gradient(x, dy, k, s)
    return tf.nn.conv2d(x, kernel, s, 'VALID'), grad
  return conv(x, kernel)


def kernel_gradient(x, dy, k, s):
  """The gradient of the strided convolution's kernel: `[k, k, C, O]`.

  Space-to-depth by the stride s splits the k x k kernel into ceil(k/s)^2
  blocks of s x s offsets; the gradient of each block is one matmul, the
  input's `[batch * h * w, s*s*C]` block at that offset transposed times
  the output's gradient `[batch * h * w, O]`. That is the kernel
  gradient's arithmetic as a few large matmuls, with no k*k copy of the
  input.
  """
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


def patch_matmul_conv(x, kernel, s):
  """The convolution as one matmul: the input's k x k patches at the
  stride (`[batch * h * w, k * k * C]`) times the kernel. The kernel's
  gradient is the same patches transposed times the output's gradient
  (so they stay in memory for the backward pass, k*k times the input);
  the input's gradient is TF's own.
  """
  k = int(kernel.shape[0])
  c_in, c_out = int(kernel.shape[2]), int(kernel.shape[3])

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
  return conv(x, kernel)


def fft_conv(x, kernel, s, matmul_dtype=tf.float32):
  """The strided convolution by the convolution theorem, in float32.

  A VALID correlation of an H x W image with a k x k kernel is, at every
  output position, the circular correlation of size H x W (no position
  wraps around). So: the input's real 2-D FFT over its H x (W/2+1)
  frequencies F (`[F, batch, C]`); the kernel's DFT at those frequencies
  as matmuls over its taps, one axis at a time (`[F, C, O]`, no FFT of a
  padded kernel); per frequency the product X conj(K) as two real batched
  matmuls, in `matmul_dtype`; and the inverse DFT taken at the strided
  output positions only, as one more matmul. For the paper's
  PrimaryCapsules that is 11.5 GFLOP against the direct form's 38 per
  batch of 100, and its gradient is the same matmuls transposed (TF's own
  gradients of `rfft2d` and `matmul`).

  Args:
    x: `[batch, H, W, C]` float32 (TF's FFTs take no 16-bit input).
    kernel: `[k, k, C, O]` float32.
    s: the stride.
    matmul_dtype: the dtype of the per-frequency products. Not float16: a
      frequency sums the whole map, past float16's range (65,504) where
      the direct convolution is not.
  """
  k = int(kernel.shape[0])
  h, w, c_in = (int(d) for d in x.shape[1:])
  c_out = int(kernel.shape[3])
  taps, inverse, (out_h, out_w) = fft_matrices(h, w, k, s)
  f = h * (w // 2 + 1)
  x = tf.signal.rfft2d(tf.transpose(x, [0, 3, 1, 2]))  # [B, C, H, W/2+1]
  x = tf.reshape(tf.transpose(x, [2, 3, 0, 1]), [f, -1, c_in])
  # Real parts over imaginary parts on the batch axis: [F, 2B, C].
  x = tf.cast(tf.concat([tf.math.real(x), tf.math.imag(x)], 1), matmul_dtype)
  k_re, k_im = (tf.cast(tf.reshape(part, [f, c_in, c_out]), matmul_dtype)
                for part in taps_spectrum(kernel, taps))
  x_re_k_re, x_im_k_re = tf.split(tf.matmul(x, k_re), 2, 1)
  x_re_k_im, x_im_k_im = tf.split(tf.matmul(x, k_im), 2, 1)
  # Y = X conj(K); the inverse DFT of Y at the output positions.
  y_re = tf.reshape(tf.cast(x_re_k_re + x_im_k_im, tf.float32), [f, -1])
  y_im = tf.reshape(tf.cast(x_im_k_re - x_re_k_im, tf.float32), [f, -1])
  y = tf.matmul(inverse[0], y_re) + tf.matmul(inverse[1], y_im)
  return tf.transpose(tf.reshape(y, [out_h, out_w, -1, c_out]), [2, 0, 1, 3])


def fft_matrices(h, w, k, s):
  """The constant matrices of `fft_conv`.

  Returns:
    `(taps, inverse, (out_h, out_w))`: `taps`, what `taps_spectrum` takes
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
          np.concatenate([cos_h, -sin_h], 1),
          np.concatenate([sin_h, cos_h], 1))
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


def taps_spectrum(kernel, taps):
  """The DFT of a `[k, k, ...]` kernel's taps at a real FFT's frequencies,
  as `(real, imaginary)` `[F, n]` (n the kernel's trailing sizes' product).

  Along the width first (`[k, W/2+1, n]`, one small matmul per tap row),
  then along the height over the complex result: about a quarter of the
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
