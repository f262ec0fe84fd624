"""Tests of pipeline.models.capsnet and the models registry."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import losses
from pipeline.models import registry
from pipeline.models.capsnet import CapsNet

from helpers import TINY_MODEL


def _params(model, decoder=True):
  return sum(w.shape.num_elements() for w in model.weights
             if decoder or '/decoder/' not in w.name)


def test_paper_parameter_counts():
  model = CapsNet()
  model(tf.zeros([1, 28, 28, 1]))
  assert model.count_params() == 8_215_568
  assert _params(model, decoder=False) == 6_804_224
  with_bias = CapsNet(class_bias=True)
  with_bias(tf.zeros([1, 28, 28, 1]))
  assert with_bias.count_params() == 8_215_568 + 160


def test_output_shapes_mnist():
  model = CapsNet()
  out = model(tf.zeros([3, 28, 28, 1]))
  assert out['lengths'].shape == (3, 10)
  assert out['poses'].shape == (3, 10, 16)
  assert out['reconstructions'].shape == (3, 28, 28, 1)
  assert out['coupling'].shape == (3, 1152, 10)


@pytest.mark.parametrize('shape,targets', [
    ((36, 36, 1), 2), ((40, 40, 1), 1), ((32, 32, 2), 1)])
def test_other_input_shapes(shape, targets):
  model = CapsNet(input_shape=shape, num_reconstructions=targets,
                  **TINY_MODEL)
  labels = tf.one_hot([1, 2], 10) + (tf.one_hot([3, 4], 10)
                                     if targets == 2 else 0)
  out = model(tf.zeros([2, *shape]), labels, training=True)
  expected = (2, targets, *shape) if targets > 1 else (2, *shape)
  assert out['reconstructions'].shape == expected
  assert out['lengths'].shape == (2, 10)


def test_batch_size_not_fixed():
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  fn = tf.function(lambda x: model(x)['lengths'],
                   input_signature=[tf.TensorSpec([None, 20, 20, 1])])
  assert fn(tf.zeros([1, 20, 20, 1])).shape == (1, 4)
  assert fn(tf.zeros([5, 20, 20, 1])).shape == (5, 4)


def test_reconstruction_mask_label_in_training_prediction_at_inference():
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  images = tf.random.uniform([4, 20, 20, 1], seed=1)
  model(images)
  # Untrained capsules are so short that every reconstruction is sigmoid(0);
  # longer ones make the masks visible in the output.
  caps = model.class_capsules
  caps.kernel.assign(caps.kernel * 300.0)
  out = model(images)
  predicted = tf.argmax(out['lengths'], -1)
  other = tf.one_hot((predicted + 1) % 4, 4)
  by_label = model(images, other, training=True)['reconstructions']
  expected_label = model.reconstruct(out['poses'], other)
  expected_pred = model.reconstruct(out['poses'], tf.one_hot(predicted, 4))
  np.testing.assert_allclose(by_label.numpy(), expected_label.numpy(),
                             atol=1e-6)
  at_inference = model(images, other, training=False)['reconstructions']
  np.testing.assert_allclose(at_inference.numpy(), expected_pred.numpy(),
                             atol=1e-6)
  assert np.abs(by_label.numpy() - at_inference.numpy()).max() > 0


def test_few_steps_lower_loss():
  keras.utils.set_random_seed(0)
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  images = tf.random.uniform([16, 20, 20, 1], seed=2)
  labels = tf.one_hot(tf.range(16) % 4, 4)
  opt = keras.optimizers.Adam(3e-3)

  def loss_fn():
    out = model(images, labels, training=True)
    return tf.reduce_mean(
        losses.margin_loss(labels, out['lengths']) +
        5e-4 * losses.reconstruction_loss(images, out['reconstructions']))

  first = float(loss_fn())
  for _ in range(15):
    opt.minimize(loss_fn, model.trainable_variables)
  assert float(loss_fn()) < 0.7 * first


def test_bad_inputs_name_expected_and_given_shapes():
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  with pytest.raises(ValueError, match=r'\[batch, 20, 20, 1\].*\(2, 20, 20\)'):
    model(tf.zeros([2, 20, 20]))
  with pytest.raises(ValueError, match=r'\[batch, 20, 20, 1\].*\(2, 20, 20, 3\)'):
    model(tf.zeros([2, 20, 20, 3]))
  with pytest.raises(ValueError, match=r'\[batch, 4\].*\(2, 10\)'):
    model(tf.zeros([2, 20, 20, 1]), tf.zeros([2, 10]), training=True)


def test_get_config_rebuilds_same_model():
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  model(tf.zeros([1, 20, 20, 1]))
  rebuilt = CapsNet.from_config(model.get_config())
  rebuilt(tf.zeros([1, 20, 20, 1]))
  assert rebuilt.count_params() == model.count_params()
  assert rebuilt.get_config() == model.get_config()


def test_registry():
  model = registry.build_model('capsnet', (20, 20, 1), 4, **TINY_MODEL)
  assert isinstance(model, CapsNet)
  with pytest.raises(ValueError, match='Unknown model'):
    registry.build_model('resnet', (20, 20, 1), 4)
  with pytest.raises(ValueError, match='routing_iterations'):
    CapsNet(routing_iterations=0)


def test_paper_model_flops_and_contract():
  model = CapsNet()
  model(tf.zeros([1, 28, 28, 1]))
  # Conv1 16.6M + PrimaryCaps 382.2M + u_hat 2.9M + routing 2.2M + decoder
  # 2.8M multiply-adds x 2: the 0.41 GFLOP the performance issue quotes.
  assert model.flops_per_example() == pytest.approx(0.4068e9, rel=1e-3)
  assert model.has_decoder and model.pose_shape == (10, 16)
  assert not CapsNet(use_decoder=False).has_decoder



def test_a_blank_image_gives_finite_gradients():
  model = CapsNet(input_shape=(20, 20, 1), num_classes=4, **TINY_MODEL)
  images = tf.concat([tf.zeros([1, 20, 20, 1]),
                      tf.random.uniform([3, 20, 20, 1], seed=2)], 0)
  labels = tf.one_hot([0, 1, 2, 3], 4)
  with tf.GradientTape() as tape:
    outputs = model(images, labels, training=True)
    loss = tf.reduce_sum(outputs['lengths']) + tf.reduce_sum(
        outputs['reconstructions'])
  grads = tape.gradient(loss, model.trainable_variables)
  assert all(np.isfinite(g.numpy()).all() for g in grads)



def test_images_too_small_for_the_kernels_are_named():
  with pytest.raises(ValueError, match=r'16x16 images are too small .* at '
                     'least 17 pixels a side'):
    CapsNet(input_shape=(16, 16, 1))
  CapsNet(input_shape=(17, 17, 1))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
