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
  # Against numpy's FFT: the taps' spectrum is the real 2-D FFT of the
  # kernel zero-padded to H x W, and the inverse takes a real signal's half
  # spectrum back to the signal at the stride's VALID output positions.
  taps, (i_re, i_im), (out_h, out_w) = convolutions.fft_matrices(h, w, k, s)
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(k, k, 3))
  padded = np.zeros((h, w, 3))
  padded[:k, :k] = kernel
  want = np.fft.rfft2(padded, axes=(0, 1)).reshape(-1, 3)
  got_re, got_im = convolutions.taps_spectrum(
      tf.constant(kernel, tf.float32), taps)
  np.testing.assert_allclose(got_re.numpy() + 1j * got_im.numpy(), want,
                             atol=1e-4)
  signal = rng.normal(size=(h, w))
  spectrum = np.fft.rfft2(signal).reshape(-1, 1)
  back = i_re.numpy() @ spectrum.real + i_im.numpy() @ spectrum.imag
  assert (out_h, out_w) == ((h - k) // s + 1, (w - k) // s + 1)
  np.testing.assert_allclose(back.reshape(out_h, out_w),
                             signal[:h - k + 1:s, :w - k + 1:s], atol=1e-4)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
