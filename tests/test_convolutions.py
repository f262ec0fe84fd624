"""Tests of pipeline.models.convolutions."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.models import convolutions

FORMS = {'space_to_depth': convolutions.space_to_depth_conv,
         'patch_grad': convolutions.patch_grad_conv,
         'patch_matmul': convolutions.patch_matmul_conv,
         'fft': convolutions.fft_conv}


@pytest.mark.parametrize('name', sorted(FORMS))
@pytest.mark.parametrize('shape,k,s', [((2, 20, 20, 6), 9, 2),
                                       ((3, 21, 19, 4), 8, 3)])
def test_each_formulation_is_the_strided_conv_with_its_gradients(name, shape,
                                                                 k, s):
  x = tf.random.uniform(shape, seed=1)
  kernel = tf.random.normal([k, k, shape[-1], 5], seed=2)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    want = tf.nn.conv2d(x, kernel, s, 'VALID')
    got = FORMS[name](x, kernel, s)
    loss_want = tf.reduce_sum(tf.sin(want))
    loss_got = tf.reduce_sum(tf.sin(got))
  assert got.shape == want.shape
  scale = np.abs(want.numpy()).max()
  np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5 * scale)
  for source in (x, kernel):
    g_want = tape.gradient(loss_want, source).numpy()
    np.testing.assert_allclose(tape.gradient(loss_got, source).numpy(),
                               g_want, atol=1e-4 * np.abs(g_want).max())


@pytest.mark.parametrize('h,w,k,s', [(20, 20, 9, 2), (21, 19, 9, 2),
                                     (20, 20, 8, 3), (9, 9, 9, 3)])
def test_fft_conv_matrices_are_the_dft_and_its_strided_inverse(h, w, k, s):
  # Against numpy's FFT, in the three parts of Gauss's product (X = a + ib
  # times conj(K) = c + iD): the input's parts a+b, a, b of its real 2-D
  # FFT; the kernel's c, D-c, c+D of the real 2-D FFT of the kernel
  # zero-padded to H x W; and the inverse takes the products k1, k2, k3 of
  # a spectrum (real part k1 - k3, imaginary part k1 + k2) back to the
  # real signal at the stride's VALID output positions.
  m = convolutions.fft_matrices(h, w, k, s)
  half = w // 2 + 1
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, h, w, 3))
  spectrum = np.fft.rfft2(images, axes=(1, 2)).transpose(1, 2, 0, 3)
  a, b = spectrum.real, spectrum.imag  # [H, W/2+1, B, C]
  got = convolutions.real_dft2(tf.constant(images, tf.float32), m.analysis)
  got = got.numpy().reshape(h, 3, half, 2, 3)
  for part, want in enumerate((a + b, a, b)):
    np.testing.assert_allclose(got[:, part], want, atol=1e-4)

  kernel = rng.normal(size=(k, k, 3))
  padded = np.zeros((h, w, 3))
  padded[:k, :k] = kernel
  spectrum = np.fft.rfft2(padded, axes=(0, 1))  # [H, W/2+1, n]
  c, d_conj = spectrum.real, -spectrum.imag
  got = convolutions.taps_spectrum(tf.constant(kernel, tf.float32), m.taps)
  got = got.numpy().reshape(h, 3, half, 3)
  for part, want in enumerate((c, d_conj - c, c + d_conj)):
    np.testing.assert_allclose(got[:, part], want, atol=1e-4)

  signal = rng.normal(size=(h, w))
  spectrum = np.fft.rfft2(signal)
  k1 = rng.normal(size=spectrum.shape)
  products = np.stack([k1, spectrum.imag - k1, k1 - spectrum.real], 1)
  back = m.inverse.numpy() @ products.reshape(-1)
  out_h, out_w = m.out_shape
  assert (out_h, out_w) == ((h - k) // s + 1, (w - k) // s + 1)
  np.testing.assert_allclose(back.reshape(out_h, out_w),
                             signal[:h - k + 1:s, :w - k + 1:s], atol=1e-4)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
