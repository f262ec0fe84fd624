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
def test_primary_capsules_formulations_equal_the_strided_conv(shape, kernel,
                                                              strides):
  # Every formulation (space-to-depth: a stride-1 convolution on the same
  # weights; XLA) computes the strided convolution: values and gradients
  # against Keras' own Conv2D, in float32.
  layer = layers.PrimaryCapsules(channels=3, dim=4, kernel_size=kernel,
                                 strides=strides)
  images = tf.random.uniform([2, *shape], seed=3)
  layer(images)
  for name in layer.FORMULATIONS:
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(images)
      direct = layer.conv(images)
      got = layer.convolve(images, name)
      loss_direct = tf.reduce_sum(tf.sin(direct))
      loss_got = tf.reduce_sum(tf.sin(got))
    assert got.shape == direct.shape, name
    np.testing.assert_allclose(got.numpy(), direct.numpy(), atol=1e-4,
                               err_msg=name)
    for source in (images, layer.conv.kernel, layer.conv.bias):
      np.testing.assert_allclose(tape.gradient(loss_got, source).numpy(),
                                 tape.gradient(loss_direct, source).numpy(),
                                 atol=1e-3, err_msg=name)
    np.testing.assert_allclose(layer.run(images, name).numpy(),
                               layer.reference(images).numpy(), atol=1e-4,
                               err_msg=name)


def _float32_and_bfloat16_primary(images):
  """Two PrimaryCapsules built on `images` with the same weights: one in
  float32, one in mixed bfloat16."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  plain = layers.PrimaryCapsules(channels=4, dim=8, kernel_size=9, strides=2)
  plain(images)
  half = layers.PrimaryCapsules(channels=4, dim=8, kernel_size=9, strides=2,
                                dtype=keras.mixed_precision.Policy(
                                    'mixed_bfloat16'))
  half(images)
  half.set_weights(plain.get_weights())
  return plain, half


def test_primary_capsules_reference_formulation_is_direct_in_float32_only():
  # The probe takes `direct`'s value from the reference's run: it must be
  # the very same computation, and there is none such in 16 bits.
  images = tf.random.uniform([2, 20, 20, 16], seed=4)
  plain, half = _float32_and_bfloat16_primary(images)
  assert plain.reference_formulation() == 'direct'
  np.testing.assert_array_equal(plain.run(images, 'direct').numpy(),
                                plain.reference(images).numpy())
  assert half.reference_formulation() is None


def test_primary_capsules_bfloat16_matches_float32():
  images = tf.random.uniform([2, 20, 20, 16], seed=4)
  plain, half = _float32_and_bfloat16_primary(images)
  expected = plain(images)
  for name in ('direct', 'space_to_depth'):
    half.set_formulation('train', name)
    got = half(images, training=True)
    assert got.dtype == tf.float32
    # bfloat16 keeps 8 bits of mantissa: capsule components of up to ~0.5
    # agree to a few hundredths.
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.03,
                               err_msg=name)


def test_primary_capsules_bfloat16_gradients_match_float32():
  # In bf16 every training formulation's gradients (input, kernel, bias)
  # are as close to float32 as the direct form's. Over 100 x 6 x 6
  # positions, a bias gradient summed in bf16 (TF's BiasAddGrad) is 0.1
  # off: the probe rejected space_to_depth and patch_grad for it.
  images = tf.random.uniform([100, 20, 20, 8], seed=4)
  plain, half = _float32_and_bfloat16_primary(images)
  cotangent = tf.random.normal([100, 6 * 6 * 4, 8], seed=5)

  def grads(layer, name):
    with tf.GradientTape() as tape:
      tape.watch(images)
      loss = tf.reduce_sum(layer.run(images, name) * cotangent)
    return [tf.cast(g, tf.float32).numpy() for g in tape.gradient(
        loss, [images, layer.conv.kernel, layer.conv.bias])]

  want = grads(plain, 'direct')
  # Every training formulation a GPU may probe too (XLA's CPU convolution
  # backprop aside: correct but slow here).
  for name in [n for n in half.formulations('train', 'GPU') if n != 'xla']:
    for source, got, ref in zip(('input', 'kernel', 'bias'),
                                grads(half, name), want):
      error = np.abs(got - ref).max() / np.abs(ref).max()
      assert error <= 0.02, (name, source, error)


def test_class_capsules_formulations_match_the_reference():
  inputs = tf.random.normal([3, 20, 4], seed=5)
  layer = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True,
                               use_bias=True)
  layer(inputs)
  layer.bias.assign(tf.random.normal([5, 6], stddev=0.1, seed=1))
  want_v, want_c = layer.reference(inputs)
  assert set(layer.formulations('train', 'GPU')) == {
      f'{layout}{xla}' for layout in ('batch_major', 'caps_major',
                                      'class_major') for xla in ('', '+xla')}
  for name in layer.formulations('infer', 'GPU'):
    with tf.GradientTape() as tape:
      v, c = layer.run(inputs, name)
      loss = tf.reduce_sum(v * tf.range(6, dtype=tf.float32))
    np.testing.assert_allclose(v.numpy(), want_v.numpy(), atol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(c.numpy(), want_c.numpy(), atol=1e-5,
                               err_msg=name)
    with tf.GradientTape() as ref_tape:
      ref = tf.reduce_sum(layer.reference(inputs)[0] *
                          tf.range(6, dtype=tf.float32))
    np.testing.assert_allclose(
        tape.gradient(loss, layer.kernel).numpy(),
        ref_tape.gradient(ref, layer.kernel).numpy(), atol=1e-5, err_msg=name)


def test_class_capsules_on_a_cpu_probes_no_layout_that_never_won_there():
  layer = layers.ClassCapsules(num_classes=3, dim=4, jit_compile=True)
  assert layer.formulations('train', 'CPU') == (
      'class_major', 'caps_major+xla', 'class_major+xla')
  assert layer.formulations('infer', 'CPU') == (
      'class_major', 'batch_major+xla', 'caps_major+xla', 'class_major+xla')
  assert len(layer.formulations('train', 'GPU')) == 6
  # Left out of the probe, not out of reach.
  layer.set_formulation('train', 'batch_major')
  assert layer.formulation('train') == 'batch_major'
  half = layers.ClassCapsules(num_classes=3, dim=4, jit_compile=True,
                              routing_dtype='bfloat16')
  assert half.formulations('infer', 'CPU') == (
      'class_major', 'batch_major+xla', 'caps_major+xla', 'class_major+xla',
      'class_major/float32', 'batch_major+xla/float32',
      'caps_major+xla/float32', 'class_major+xla/float32')


def test_class_capsules_without_jit_compile_offers_no_xla():
  layer = layers.ClassCapsules(num_classes=3, dim=4)
  assert layer.formulations('train') == ('batch_major', 'caps_major',
                                         'class_major')
  assert layer.formulation('train') == 'batch_major'
  with pytest.raises(ValueError, match="formulation of .*'caps_major'.*"
                     "got 'train', 'caps_major\\+xla'"):
    layer.set_formulation('train', 'caps_major+xla')


def test_primary_capsules_xla_runs_in_inference_only_when_compiled():
  inputs = tf.random.normal([2, 14, 14, 8], seed=7)
  layer = layers.PrimaryCapsules(channels=4, dim=4, kernel_size=5, strides=2)
  plain = layer(inputs, training=False)
  layer.set_formulation('infer', 'xla')
  # Not compiled for inference (an export): the plain convolution runs.
  layer(inputs, training=False)
  assert layer._compiled.experimental_get_tracing_count() == 0
  layer.compile_inference = True
  compiled = layer(inputs, training=False)
  np.testing.assert_allclose(compiled.numpy(), plain.numpy(), atol=1e-5)
  assert layer._compiled.experimental_get_tracing_count() == 1
  # On a CPU, XLA is no training candidate (its convolution backprop is
  # generic loops); on a GPU it is.
  assert 'xla' not in layer.formulations('train', 'CPU')
  assert 'xla' in layer.formulations('train', 'GPU')
  # space_to_depth never trained faster than direct on a CPU measured: the
  # probe leaves it out there, not on a GPU nor in inference.
  assert 'space_to_depth' not in layer.formulations('train', 'CPU')
  assert 'space_to_depth' in layer.formulations('train', 'GPU')
  assert 'space_to_depth' in layer.formulations('infer', 'CPU')
  # `patch_grad` changes only the backward pass, and `patch_matmul` keeps
  # k*k copies of the input for it: training candidates only.
  for device in ('CPU', 'GPU'):
    for name in ('patch_grad', 'patch_matmul'):
      assert name in layer.formulations('train', device)
      assert name not in layer.formulations('infer', device)
  # `fft` is plain TF ops, forward and backward: a candidate of both.
  for device in ('CPU', 'GPU'):
    for mode in ('train', 'infer'):
      assert 'fft' in layer.formulations(mode, device)
  with pytest.raises(ValueError, match='formulation of'):
    layer.set_formulation('train', 'winograd')


def test_fft_in_float16_does_not_overflow_on_large_activations():
  # A frequency sums the whole 20 x 20 map: activations of ~150 (whose
  # direct convolution float16 holds) pass float16's 65,504 there, so
  # under a float16 policy the per-frequency products run in float32.
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  images = 300.0 * tf.random.uniform([2, 20, 20, 256], seed=6)
  plain = layers.PrimaryCapsules(channels=4, dim=8)
  plain(images)
  half = layers.PrimaryCapsules(channels=4, dim=8, dtype=keras.mixed_precision
                                .Policy('mixed_float16'))
  half(images)
  half.set_weights(plain.get_weights())
  want = plain.convolve(images, 'direct').numpy()
  direct = tf.cast(half.convolve(images, 'direct'), tf.float32).numpy()
  got = tf.cast(half.convolve(images, 'fft'), tf.float32).numpy()
  assert np.isfinite(direct).all() and np.isfinite(got).all()
  np.testing.assert_allclose(got, want, atol=0.01 * np.abs(want).max())



@pytest.mark.parametrize('compiled,plain,other', [
    ('xla', 'space_to_depth', 'direct'),
    ('batch_major+xla', 'class_major', 'batch_major')])
def test_inference_without_xla_runs_the_plain_formulation_chosen(
    compiled, plain, other, monkeypatch):
  # An export (compile_inference off) runs the plain formulation autotune
  # chose for inference; unset, the inference one without its XLA.
  if compiled == 'xla':
    layer = layers.PrimaryCapsules(channels=4, dim=4, kernel_size=5,
                                   strides=2)
    inputs = tf.random.normal([2, 14, 14, 8], seed=8)
  else:
    layer = layers.ClassCapsules(num_classes=3, dim=4, jit_compile=True)
    inputs = tf.random.normal([2, 6, 4], seed=8)
  layer(inputs)
  ran = []
  real_run = layer.run
  monkeypatch.setattr(layer, 'run',
                      lambda x, name: ran.append(name) or real_run(x, name))
  layer.set_formulation('infer', compiled)
  layer(inputs, training=False)
  assert ran.pop() == other
  layer.set_plain_formulation(plain)
  layer(inputs, training=False)
  assert ran.pop() == plain
  layer.compile_inference = True
  layer(inputs, training=False)
  assert ran.pop() == compiled
  layer(inputs, training=True)
  assert ran.pop() == layer.formulation('train')
  # A new inference choice forgets the old plain one.
  layer.compile_inference = False
  layer.set_formulation('infer', compiled)
  layer(inputs, training=False)
  assert ran.pop() == other
  with pytest.raises(ValueError, match='without XLA'):
    layer.set_plain_formulation(compiled)
  with pytest.raises(ValueError, match='without XLA'):
    layer.set_plain_formulation('winograd')


def test_capsnet_compile_inference_reaches_the_capsule_layers():
  from pipeline.models import capsnet  # pylint: disable=g-import-not-at-top
  model = capsnet.CapsNet(conv_filters=8, primary_channels=4, primary_dim=4,
                          class_dim=4, decoder_units=(8, 16),
                          input_shape=(20, 20, 1), num_classes=3,
                          jit_compile=True)
  images = tf.random.uniform([2, 20, 20, 1], seed=8)
  plain = model(images, training=False)['lengths']
  model.primary.set_formulation('infer', 'xla')
  assert model.compile_inference(True)
  assert model.primary.compile_inference
  assert model.class_capsules.compile_inference
  np.testing.assert_allclose(model(images, training=False)['lengths'],
                             plain, atol=1e-5)
  assert model.primary._compiled.experimental_get_tracing_count() == 1
  assert not model.compile_inference(False)
  assert not model.primary.compile_inference
  parts = model.tunable_parts(images)
  assert sorted(parts) == ['class_capsules', 'primary_capsules']
  assert parts['class_capsules'][1].shape == (2, 4 * 4, 4)


def test_class_capsules_bfloat16_routing_near_float32():
  inputs = tf.random.normal([3, 40, 8], seed=6)
  full = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True)
  full_v, _ = full(inputs, training=True)
  half = layers.ClassCapsules(num_classes=5, dim=6, jit_compile=True,
                              routing_dtype='bfloat16')
  half(inputs)
  half.set_weights(full.get_weights())
  for name in half.formulations('train', 'GPU'):
    with tf.GradientTape() as tape:
      v, c = half.run(inputs, name)
      loss = tf.reduce_sum(v)
    assert v.dtype == tf.float32 and c.dtype == tf.float32
    np.testing.assert_allclose(v.numpy(), full_v.numpy(),
                               atol=0.01 * np.abs(full_v.numpy()).max(),
                               err_msg=name)
    grad = tape.gradient(loss, half.kernel)
    assert grad.dtype == tf.float32 and np.isfinite(grad.numpy()).all()
  # Inference may also route in float32: then it equals the float32 layer.
  assert 'caps_major+xla/float32' in half.formulations('infer')
  np.testing.assert_allclose(
      half.run(inputs, 'caps_major+xla/float32')[0].numpy(),
      full(inputs)[0].numpy(), atol=1e-5)
  assert half.get_config()['routing_dtype'] == 'bfloat16'
  with pytest.raises(ValueError, match=r"routing_dtype must be one of .*"
                     r"'float32', 'bfloat16', 'float16'.*got 'int8'"):
    layers.ClassCapsules(routing_dtype='int8')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
