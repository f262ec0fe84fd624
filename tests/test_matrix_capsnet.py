"""Tests of pipeline.models.matrix_capsnet and the spread loss."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline import losses
from pipeline.core import trainer as trainer_lib
from pipeline.models import matrix_capsnet
from pipeline.models.matrix_capsnet import MatrixCapsNet
from pipeline.serving import publish

from helpers import run_trainer, tiny_config

SMALL = dict(channels_a=4, types_b=4, types_c=4, types_d=4)


def test_paper_shapes_and_parameter_count():
  model = MatrixCapsNet()
  out = model(tf.zeros([2, 32, 32, 2]))
  assert out['lengths'].shape == (2, 5) and out['poses'].shape == (2, 5, 16)
  assert model.conv_caps1.out_h == 6 and model.conv_caps2.out_h == 4
  # Conv1 1,632 + PrimaryCaps 16,896 + 1,056 + ConvCaps1 147,520 +
  # ConvCaps2 147,520 + class capsules 2,570.
  assert model.count_params() == 317_194
  assert ((out['lengths'].numpy() > 0) & (out['lengths'].numpy() < 1)).all()


def test_patch_table():
  table, h, w = matrix_capsnet._patch_table(5, 5, 3, 2)  # pylint: disable=protected-access
  assert (h, w) == (2, 2)
  assert table[0].tolist() == [0, 1, 2, 5, 6, 7, 10, 11, 12]
  assert table[3].tolist() == [12, 13, 14, 17, 18, 19, 22, 23, 24]


def test_coordinate_addition_changes_votes_by_position():
  layer = matrix_capsnet.ClassMatrixCapsules(3)
  layer(tf.zeros([1, 2, 2, 1, 16]), tf.ones([1, 2, 2, 1]))
  coords = layer.coordinates.numpy()
  np.testing.assert_allclose(coords[:, 0, 0, 0, 3], [0.25, 0.25, 0.75, 0.75])
  np.testing.assert_allclose(coords[:, 0, 0, 1, 3], [0.25, 0.75, 0.25, 0.75])
  assert np.count_nonzero(coords) == 8


def test_spread_loss_hand_computed():
  labels = tf.constant([[0., 1., 0.]])
  act = tf.constant([[0.5, 0.6, 0.1]])
  # m=0.2: class 0: max(0, 0.2-(0.6-0.5))^2 = 0.01; class 2: 0.2-0.5 < 0.
  np.testing.assert_allclose(losses.spread_loss(labels, act, 0.2).numpy(),
                             [0.01], atol=1e-7)
  assert float(losses.spread_margin(0, 100)) == pytest.approx(0.2)
  assert float(losses.spread_margin(50, 100)) == pytest.approx(0.55)
  assert float(losses.spread_margin(500, 100)) == pytest.approx(0.9)


def test_few_steps_lower_spread_loss():
  keras.utils.set_random_seed(1)
  model = MatrixCapsNet(input_shape=(20, 20, 1), num_classes=3, **SMALL)
  images = tf.random.uniform([6, 20, 20, 1], seed=3)
  labels = tf.one_hot([0, 1, 2, 0, 1, 2], 3)
  opt = keras.optimizers.Adam(0.005)

  def loss_fn():
    out = model(images)
    return tf.reduce_mean(losses.spread_loss(labels, out['lengths'], 0.5))

  first = float(loss_fn())
  for _ in range(30):
    opt.minimize(loss_fn, model.trainable_variables)
  assert float(loss_fn()) < 0.6 * first


def test_export_and_reload(tmp_path):
  model = MatrixCapsNet(input_shape=(20, 20, 1), num_classes=3, **SMALL)
  images = tf.random.uniform([2, 20, 20, 1], seed=4)
  expected = model(images)['lengths'].numpy()
  path = publish.export_model(model, (20, 20, 1), str(tmp_path))
  sigs = tf.saved_model.load(path).signatures
  assert 'decode' not in sigs
  out = sigs['serving_default'](images=images)
  np.testing.assert_allclose(out['probabilities'].numpy(), expected,
                             atol=1e-5)


def test_recompute_routing_trains_to_the_same_gradients_and_exports_plain(
    tmp_path):
  images = tf.random.uniform([3, 20, 20, 1], seed=6)
  models = [MatrixCapsNet(input_shape=(20, 20, 1), num_classes=3,
                          recompute_routing=r, **SMALL) for r in (False, True)]
  models[0](images)
  models[1](images)
  models[1].set_weights(models[0].get_weights())
  grads = []
  for model in models:
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(images, training=True)['lengths'] *
                           [1.0, 2.0, 3.0])
    grads.append(tape.gradient(loss, model.trainable_variables))
  for plain, recomputed in zip(*grads):   # XLA's float32 summation order
    np.testing.assert_allclose(recomputed.numpy(), plain.numpy(), atol=1e-4,
                               rtol=1e-3)
  np.testing.assert_allclose(models[1](images)['lengths'].numpy(),
                             models[0](images)['lengths'].numpy(), atol=1e-6)
  assert models[1].get_config()['recompute_routing'] is True
  # Inference never recomputes: serving calls no XLA-compiled function.
  path = publish.export_model(models[1], (20, 20, 1), str(tmp_path))
  serving = tf.saved_model.load(path).signatures['serving_default']
  assert not [fn.signature.name
              for fn in serving.graph.as_graph_def().library.function
              if fn.attr['_XlaMustCompile'].b]


def test_bad_input_shape():
  model = MatrixCapsNet(input_shape=(20, 20, 1), num_classes=3, **SMALL)
  with pytest.raises(ValueError, match=r'\[batch, 20, 20, 1\]'):
    model(tf.zeros([1, 32, 32, 2]))


def test_trains_and_exports_through_the_trainer(tmp_path):
  cfg = tiny_config(tmp_path, batch_size=4, train_steps=2, eval_every=2,
                    model=config_lib.model_spec(name='matrix_capsnet'))
  trainer = trainer_lib.Trainer(cfg)
  assert isinstance(trainer.model, MatrixCapsNet)
  batch = next(iter(trainer.train_iterator(0)))
  outputs = trainer.model(batch['image'])
  margin, recon, total = trainer.task.build_losses(
      batch, outputs, trainer.optimizer.iterations)
  np.testing.assert_allclose(margin.numpy(), losses.spread_loss(
      batch['label'], outputs['lengths'], 0.2).numpy(), rtol=1e-6)
  np.testing.assert_array_equal(recon.numpy(), 0.0)
  np.testing.assert_allclose(total.numpy(), margin.numpy())
  results = run_trainer(trainer)
  assert results['examples'] == 32
  path = publish.export_from_checkpoint(str(tmp_path), str(tmp_path / 'e'))
  out = tf.saved_model.load(path).signatures['serving_default'](
      images=tf.zeros([1, 20, 20, 1]))
  assert out['probabilities'].shape == (1, 4)


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
