"""Tests of pipeline.models.layers."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.models import layers


def test_primary_capsules_paper_shape():
  layer = layers.PrimaryCapsules(channels=32, dim=8, kernel_size=9, strides=2)
  out = layer(tf.random.uniform([2, 20, 20, 16]))
  assert out.shape == (2, 1152, 8)
  assert (np.linalg.norm(out.numpy(), axis=-1) < 1).all()


def test_class_capsules_shapes_and_weights():
  layer = layers.ClassCapsules(num_classes=5, dim=6, routing_iterations=2)
  v, c = layer(tf.random.normal([3, 20, 4]))
  assert v.shape == (3, 5, 6)
  assert c.shape == (3, 20, 5)
  assert layer.kernel.shape == (20, 5, 4, 6)
  with_bias = layers.ClassCapsules(num_classes=5, dim=6, use_bias=True)
  with_bias(tf.random.normal([1, 20, 4]))
  assert with_bias.count_params() == 20 * 5 * 4 * 6 + 5 * 6


def test_class_mask_single_and_multi():
  scores = tf.constant([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
  np.testing.assert_array_equal(layers.class_mask(scores, 1).numpy(),
                                [[0, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(layers.class_mask(scores, 2).numpy(),
                                [[[0, 1, 0], [0, 0, 1]],
                                 [[1, 0, 0], [0, 0, 1]]])


def test_decoder_masks_other_classes():
  decoder = layers.Decoder(output_shape=(6, 6, 1), units=(8, 8))
  poses = tf.random.normal([2, 3, 4])
  mask = tf.constant([[1., 0., 0.], [1., 0., 0.]])
  out = decoder(poses, mask)
  assert out.shape == (2, 6, 6, 1)
  # Changing a masked-out capsule leaves the reconstruction unchanged.
  changed = tf.concat([poses[:, :1], poses[:, 1:] + 5.0], axis=1)
  np.testing.assert_allclose(decoder(changed, mask).numpy(), out.numpy(),
                             rtol=1e-6)
  multi = decoder(poses, tf.one_hot([[0, 2], [1, 2]], 3))
  assert multi.shape == (2, 2, 6, 6, 1)
  np.testing.assert_allclose(multi[:, 0].numpy()[0], out.numpy()[0],
                             rtol=1e-5)


@pytest.mark.parametrize('layer', [
    layers.PrimaryCapsules(4, 2, 3, 1), layers.ClassCapsules(3, 4, 2),
    layers.Decoder((4, 4, 1), (8,))])
def test_layer_get_config_round_trip(layer):
  rebuilt = type(layer).from_config(layer.get_config())
  assert rebuilt.get_config() == layer.get_config()


def test_class_capsules_xla_training_path_matches_plain():
  inputs = tf.random.normal([3, 20, 4], seed=9)
  plain = layers.ClassCapsules(num_classes=5, dim=6, routing_iterations=3)
  plain(inputs)
  xla = layers.ClassCapsules(num_classes=5, dim=6, routing_iterations=3,
                             jit_compile=True)
  xla(inputs)
  xla.set_weights(plain.get_weights())
  with tf.GradientTape(persistent=True) as tape:
    v_plain, c_plain = plain(inputs, training=True)
    v_xla, c_xla = xla(inputs, training=True)
    loss_plain = tf.reduce_sum(tf.norm(v_plain, axis=-1))
    loss_xla = tf.reduce_sum(tf.norm(v_xla, axis=-1))
  np.testing.assert_allclose(v_xla.numpy(), v_plain.numpy(), atol=1e-5)
  np.testing.assert_allclose(c_xla.numpy(), c_plain.numpy(), atol=1e-5)
  np.testing.assert_allclose(tape.gradient(loss_xla, xla.kernel).numpy(),
                             tape.gradient(loss_plain, plain.kernel).numpy(),
                             atol=1e-5)


@pytest.mark.parametrize('shape,kernel,strides', [
    ((20, 20, 16), 9, 2),   # the paper's PrimaryCapsules
    ((21, 19, 4), 9, 2),    # odd sides: padded to the stride
    ((20, 20, 4), 8, 3),    # a kernel that is no multiple of the stride
    ((13, 13, 4), 3, 2),
    ((9, 9, 2), 9, 3)])     # one output position
def test_primary_capsules_space_to_depth_equals_strided_conv(shape, kernel,
                                                             strides):
  # The 16-bit path computes the strided convolution as space-to-depth and
  # a stride-1 convolution on the same weights; checked here in float32,
  # values and gradients, against the layer's own strided convolution.
  layer = layers.PrimaryCapsules(channels=3, dim=4, kernel_size=kernel,
                                 strides=strides)
  images = tf.random.uniform([2, *shape], seed=3)
  layer(images)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(images)
    direct = layer.conv(images)
    s2d = layer._space_to_depth_conv(images)  # pylint: disable=protected-access
    loss_direct = tf.reduce_sum(tf.sin(direct))
    loss_s2d = tf.reduce_sum(tf.sin(s2d))
  assert s2d.shape == direct.shape
  np.testing.assert_allclose(s2d.numpy(), direct.numpy(), atol=1e-4)
  for source in (images, layer.conv.kernel, layer.conv.bias):
    np.testing.assert_allclose(tape.gradient(loss_s2d, source).numpy(),
                               tape.gradient(loss_direct, source).numpy(),
                               atol=1e-3)


def test_primary_capsules_bfloat16_matches_float32():
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  images = tf.random.uniform([2, 20, 20, 16], seed=4)
  plain = layers.PrimaryCapsules(channels=4, dim=8, kernel_size=9, strides=2)
  expected = plain(images)
  half = layers.PrimaryCapsules(channels=4, dim=8, kernel_size=9, strides=2,
                                dtype=keras.mixed_precision.Policy(
                                    'mixed_bfloat16'))
  half(images)
  half.set_weights(plain.get_weights())
  got = half(images)
  assert got.dtype == tf.float32
  # bfloat16 keeps 8 bits of mantissa: capsule components of up to ~0.5
  # agree to a few hundredths.
  np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.03)


def test_class_capsules_compile_inference_matches_plain():
  inputs = tf.random.normal([3, 20, 4], seed=5)
  layer = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True)
  plain_v, _ = layer(inputs, training=False)
  layer.compile_inference = True
  compiled_v, _ = layer(inputs, training=False)
  np.testing.assert_allclose(compiled_v.numpy(), plain_v.numpy(), atol=1e-5)


def test_primary_capsules_compile_inference_only_in_inference():
  inputs = tf.random.normal([2, 14, 14, 8], seed=7)
  layer = layers.PrimaryCapsules(channels=4, dim=4, kernel_size=5, strides=2)
  plain = layer(inputs, training=False)
  layer.compile_inference = True
  compiled = layer(inputs, training=False)
  np.testing.assert_allclose(compiled.numpy(), plain.numpy(), atol=1e-5)
  assert layer._compiled.experimental_get_tracing_count() == 1
  # Training keeps the plain convolution (XLA's backward pass is slow).
  def not_in_training(x):
    raise AssertionError(f'the compiled convolution ran in training on {x}')
  layer._compiled = not_in_training
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(inputs, training=True))
  assert all(g is not None for g in tape.gradient(
      loss, layer.trainable_variables))


def test_primary_capsules_compile_inference_keeps_16_bit_convolutions():
  # Stride 1 in bfloat16 takes the plain branch, not the float32 XLA one
  # (whose float32 kernel would not match the 16-bit inputs).
  layer = layers.PrimaryCapsules(channels=4, dim=4, kernel_size=5, strides=1,
                                 dtype='mixed_bfloat16')
  inputs = tf.random.normal([2, 10, 10, 8], seed=9)
  plain = layer(inputs, training=False)
  layer.compile_inference = True
  # (bf16 sums may be ordered differently from one call to the next.)
  np.testing.assert_allclose(layer(inputs, training=False).numpy(),
                             plain.numpy(), atol=0.02)
  assert layer._compiled.experimental_get_tracing_count() == 0


def test_capsnet_compile_inference_reaches_the_primary_capsules():
  from pipeline.models import capsnet  # pylint: disable=g-import-not-at-top
  model = capsnet.CapsNet(conv_filters=8, primary_channels=4, primary_dim=4,
                          class_dim=4, decoder_units=(8, 16),
                          input_shape=(20, 20, 1), num_classes=3,
                          jit_compile=True)
  images = tf.random.uniform([2, 20, 20, 1], seed=8)
  plain = model(images, training=False)['lengths']
  assert model.compile_inference(True)
  assert model.primary.compile_inference
  np.testing.assert_allclose(model(images, training=False)['lengths'],
                             plain, atol=1e-5)
  assert model.primary._compiled.experimental_get_tracing_count() == 1
  assert not model.compile_inference(False)
  assert not model.primary.compile_inference


def test_class_capsules_bfloat16_routing_near_float32_and_compiled_float32():
  inputs = tf.random.normal([3, 40, 8], seed=6)
  full = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True)
  full_v, _ = full(inputs, training=True)
  half = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True,
                              routing_dtype='bfloat16')
  half(inputs)
  half.set_weights(full.get_weights())
  for training in (True, False):   # XLA training path, plain inference
    with tf.GradientTape() as tape:
      v, c = half(inputs, training=training)
      loss = tf.reduce_sum(v)
    assert v.dtype == tf.float32 and c.dtype == tf.float32
    np.testing.assert_allclose(v.numpy(), full_v.numpy(),
                               atol=0.01 * np.abs(full_v.numpy()).max())
    grad = tape.gradient(loss, half.kernel)
    assert grad.dtype == tf.float32 and np.isfinite(grad.numpy()).all()
  # Compiled inference routes in float32: it equals the float32 layer's.
  half.compile_inference = full.compile_inference = True
  np.testing.assert_allclose(half(inputs)[0].numpy(), full(inputs)[0].numpy(),
                             atol=1e-6)
  assert half.get_config()['routing_dtype'] == 'bfloat16'
  with pytest.raises(ValueError, match=r"routing_dtype must be one of .*"
                     r"'float32', 'bfloat16', 'float16'.*got 'int8'"):
    layers.ClassCapsules(routing_dtype='int8')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
