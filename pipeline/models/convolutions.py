"""Formulations of a strided VALID convolution, equal up to float rounding.

PrimaryCapsules runs one of these (or TF's own `tf.nn.conv2d`); which is
fastest depends on the hardware, the precision and the pass, and is
measured on the machine that runs (`pipeline.perf.autotune`). Each takes
`x` `[batch, H, W, C]` and a `kernel` `[k, k, C, O]` in one dtype and
returns `[batch, (H - k) // s + 1, (W - k) // s + 1, O]` in it, without a
bias.
"""

from typing import NamedTuple

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


def fft_conv(x, kernel, s, dtype=tf.float32):
  """The strided convolution by the convolution theorem.

  A VALID correlation of an H x W image with a k x k kernel is, at every
  output position, the circular correlation of size H x W (no position
  wraps around), whose DFT at each frequency is X conj(K): the input's
  DFT times the kernel's conjugate DFT. So, at the H x (W/2+1)
  frequencies F of a real signal:

  - the input's DFT (`real_dft2`) and the kernel's (`taps_spectrum`), each
    as two small matmuls with constant matrices (`fft_matrices`);
  - per frequency the complex product over channels in three real
    products, not four (Gauss's: with X = a + ib and conj(K) = c + iD,
    `(a+b) c`, `a (D-c)` and `b (c+D)`), as one batched matmul
    `[3F, B, C] x [3F, C, O]`;
  - the inverse DFT of the sum taken only at the strided output positions,
    the three products' recombination folded into its matrix: one matmul
    `[out_h * out_w, 3F] x [3F, B * O]`.

  Every matmul runs in `dtype` (summing in float32 inside, as TF's 16-bit
  matmuls do on CPUs and GPUs); its constant matrices are rounded to it.

  For the paper's PrimaryCapsules that is 8.7 GFLOP of products and 3.5
  of transforms per batch of 100, against the direct form's 38. The
  gradient is of matmuls and transposes only (TF's own, but for the
  products' kernel gradient: `_products`). Every transform is a matmul,
  not TF's `rfft2d`: at 20 x 20 a DFT as two small matmuls costs little
  more arithmetic than an FFT, and `rfft2d`'s gradient (`irfft2d` and the
  re-layouts around it) took twice as long as the whole transform does as
  matmuls, forward and backward, on the CPU measured (docs/benchmark.md).

  Args:
    x: `[batch, H, W, C]`.
    kernel: `[k, k, C, O]`.
    s: the stride.
    dtype: float32 or bfloat16; the output's too. Not float16: a frequency
      sums the whole map, past float16's range (65,504) where the direct
      convolution is not.
  """
  k = int(kernel.shape[0])
  h, w, c_in = (int(d) for d in x.shape[1:])
  c_out = int(kernel.shape[3])
  m = fft_matrices(h, w, k, s, dtype)
  x = real_dft2(tf.cast(x, dtype), m.analysis)  # [3F, B, C]
  kernel = taps_spectrum(tf.cast(kernel, dtype), m.taps)
  y = _products(x, tf.reshape(kernel, [-1, c_in, c_out]))  # [3F, B, O]
  y = tf.matmul(m.inverse, tf.reshape(y, [3 * h * (w // 2 + 1), -1]))
  out_h, out_w = m.out_shape
  return tf.transpose(tf.reshape(y, [out_h, out_w, -1, c_out]), [2, 0, 1, 3])


@tf.custom_gradient
def _products(x, kernel):
  """`tf.matmul(x, kernel)` of `[n, m, k] x [n, k, o]`, whose kernel
  gradient multiplies a transposed copy of `x`: TF's own gradient
  (`matmul(x, dy, transpose_a=True)`) ran 2-3x slower in float32 at
  `fft_conv`'s shapes on the CPU measured (docs/benchmark.md)."""
  def grad(dy):
    return (tf.matmul(dy, kernel, transpose_b=True),
            tf.matmul(tf.transpose(x, [0, 2, 1]), dy))
  return tf.matmul(x, kernel), grad


class FourierMatrices(NamedTuple):
  """The constant matrices of `fft_conv`.

  The three parts of a spectrum X conj(K) (X = a + ib, conj(K) = c + iD)
  are Gauss's: input a+b with kernel c, a with D-c, b with c+D. Spectra
  are laid out `[3F, ...]` with F = H x (W/2+1) frequencies, in the order
  (frequency u over the height, part, frequency v over the width).

  analysis: what `real_dft2` takes the input's parts with: over the
    height, `[H * 2, H]` (rows: frequency u, then the cosine and the sine
    part); then over the width and those two parts, `[3 * (W/2+1), 2W]`
    (rows: part a+b, a, b; then frequency v).
  taps: what `taps_spectrum` takes the kernel's parts with: the row DFT's
    real and imaginary parts `[W/2+1, k]`, then over the height of that
    complex result `[H * 3, 2k]` (rows: frequency u, then part c, D-c,
    c+D).
  inverse: `[out_h * out_w, 3F]`, taking the three products to the real
    H x W signal at the stride's VALID output positions.
  out_shape: `(out_h, out_w)`.
  """
  analysis: tuple
  taps: tuple
  inverse: tf.Tensor
  out_shape: tuple


def fft_matrices(h, w, k, s, dtype=tf.float32):
  """The constant matrices of `fft_conv` for an H x W input, a k x k
  kernel and stride s, in `dtype`: a `FourierMatrices`."""
  half = w // 2 + 1
  # e^{-i theta} = a + ib over the height, e^{-i phi} = c + id over the
  # width, for each frequency (row) and position (column).
  theta = 2 * np.pi * np.outer(np.arange(h), np.arange(h)) / h
  phi = 2 * np.pi * np.outer(np.arange(half), np.arange(w)) / w
  a, b, c, d = np.cos(theta), -np.sin(theta), np.cos(phi), -np.sin(phi)
  over_h = np.stack([a, b], 1).reshape(2 * h, h)
  # (A + iB)(c + id): real part Ac - Bd, imaginary part Ad + Bc.
  real, imag = np.concatenate([c, -d], 1), np.concatenate([d, c], 1)
  over_w = np.concatenate([real + imag, real, imag], 0)

  # The kernel's DFT: over its tap columns (as in `taps_spectrum`), then
  # over its rows; its conjugate's parts c and D (= -imaginary) then
  # Gauss's c, D - c, c + D.
  phase_w = 2 * np.pi * np.outer(np.arange(half), np.arange(k)) / w
  phase_h = 2 * np.pi * np.outer(np.arange(h), np.arange(k)) / h
  cos_h, sin_h = np.cos(phase_h), np.sin(phase_h)
  col_re = np.concatenate([cos_h, sin_h], 1)
  col_im = np.concatenate([-sin_h, cos_h], 1)
  col = np.stack([col_re, -col_im - col_re, col_re - col_im], 1)
  taps = (np.cos(phase_w), -np.sin(phase_w), col.reshape(3 * h, 2 * k))

  out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
  p = s * np.arange(out_h)[:, None, None, None]
  q = s * np.arange(out_w)[None, :, None, None]
  u = np.arange(h)[None, None, :, None]
  v = np.arange(half)[None, None, None, :]
  # A half spectrum stands for its mirror too: every frequency but 0 and
  # (for even W) W/2 counts twice.
  weight = np.where((v == 0) | ((w % 2 == 0) & (v == w // 2)), 1.0, 2.0)
  angle = 2 * np.pi * (u * p / h + v * q / w)
  inv_re = weight * np.cos(angle) / (h * w)  # [out_h, out_w, H, W/2+1]
  inv_im = -weight * np.sin(angle) / (h * w)
  # Real part k1 - k3, imaginary part k1 + k2 of the products k1, k2, k3.
  inverse = np.stack([inv_re + inv_im, inv_im, -inv_re], 3)
  as_tensors = lambda ms: tuple(tf.constant(m, dtype) for m in ms)
  return FourierMatrices(
      as_tensors((over_h, over_w)), as_tensors(taps),
      tf.constant(inverse.reshape(out_h * out_w, -1), dtype), (out_h, out_w))


def real_dft2(x, analysis):
  """The input's three spectrum parts for `fft_conv`: `[3F, B, C]` from
  `x` `[B, H, W, C]` (order in `FourierMatrices`). Two matmuls: over the
  height (one `[2H, H] x [H, W*B*C]`), then per height frequency over the
  width and the cosine and sine parts (H of `[3(W/2+1), 2W] x [2W, B*C]`).
  `analysis` is `fft_matrices(...).analysis`."""
  over_h, over_w = analysis
  h, w, c = (int(d) for d in x.shape[1:])
  x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [h, -1])  # [H, W*B*C]
  x = tf.reshape(tf.matmul(over_h, x), [h, 2 * w, -1])  # [u, (a|b, x), n]
  x = tf.matmul(over_w, x)  # [u, (part, v), B*C]
  return tf.reshape(x, [3 * h * (w // 2 + 1), -1, c])


def taps_spectrum(kernel, taps):
  """The three parts of a `[k, k, ...]` kernel's conjugate DFT for
  `fft_conv`: `[3F, n]` (n the kernel's trailing sizes' product; order in
  `FourierMatrices`).

  Along the width first (`[k, W/2+1, n]`, one small matmul per tap row),
  then along the height over the complex result, one matmul: about a
  quarter of the arithmetic of one matmul over all k*k taps.
  """
  row_re, row_im, col = taps
  k = int(kernel.shape[0])
  kernel = tf.reshape(kernel, [k, k, -1])
  rows = tf.concat([tf.matmul(row_re, kernel), tf.matmul(row_im, kernel)], 0)
  rows = tf.reshape(rows, [2 * k, -1])  # [re; im] of [k, W/2+1 * n]
  return tf.reshape(tf.matmul(col, rows), [-1, int(kernel.shape[2])])
