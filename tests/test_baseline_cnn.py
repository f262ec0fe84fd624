"""Tests of pipeline.models.baseline_cnn through the shared trainer and export."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import losses
from pipeline.core import trainer as trainer_lib
from pipeline.models import registry
from pipeline.models.baseline_cnn import BaselineCNN
from pipeline.serving import publish
from pipeline.serving import restore

from helpers import run_trainer, tiny_config

SMALL = dict(conv_channels=(8, 8, 4), fc_units=(16, 8))


def test_paper_layers_and_parameter_count():
  model = BaselineCNN()
  out = model(tf.zeros([2, 28, 28, 1]))
  assert out['lengths'].shape == (2, 10) and out['poses'].shape == (2, 10, 1)
  assert [c.filters for c in model.convs] == [256, 256, 128]
  assert all(c.kernel_size == (5, 5) for c in model.convs)
  assert [d.units for d in model.fcs] == [328, 192]
  # convs 6,656 + 1,638,656 + 819,328; 28 -> 14 -> 7 -> 3 so FC 328 sees
  # 3*3*128 = 1,152 inputs: 378,184; FC 192 63,168; logits 1,930.
  assert model.count_params() == 2_907_922


def test_without_pooling_it_has_the_papers_35_4m_parameters():
  """The paper gives its CNN 35.4M parameters: the count of these layers
  without pooling (FC 328 sees all 28*28*128 activations)."""
  model = BaselineCNN(pool=False)
  out = model(tf.zeros([2, 28, 28, 1]))
  assert out['lengths'].shape == (2, 10) and not model.pools
  dense = 28 * 28 * 128 * 328 + 328 + 328 * 192 + 192 + 192 * 10 + 10
  assert model.count_params() == 6_656 + 1_638_656 + 819_328 + dense
  assert round(model.count_params() / 1e6, 1) == 35.4
  convs = 2 * 28 * 28 * 25 * (1 * 256 + 256 * 256 + 256 * 128)
  assert model.flops_per_example() == convs + 2 * (
      28 * 28 * 128 * 328 + 328 * 192 + 192 * 10)
  assert model.get_config()['pool'] is False
  assert BaselineCNN.from_config(model.get_config()).options.pool is False


def test_outputs_are_softmax_of_logits_and_dropout_only_in_training():
  model = BaselineCNN(input_shape=(12, 12, 1), num_classes=3, **SMALL)
  images = tf.random.uniform([4, 12, 12, 1], seed=1)
  out = model(images)
  np.testing.assert_allclose(out['lengths'].numpy(),
                             tf.nn.softmax(out['logits']).numpy(), atol=1e-6)
  np.testing.assert_array_equal(out['poses'].numpy()[..., 0],
                                out['logits'].numpy())
  np.testing.assert_array_equal(model(images)['logits'].numpy(),
                                out['logits'].numpy())
  trained = [model(images, training=True)['logits'].numpy() for _ in range(2)]
  assert not np.allclose(trained[0], trained[1])


def test_mixed_bfloat16_computes_in_16_bits_with_float32_outputs():
  spec = config_lib.model_spec('baseline_cnn', 'mixed_bfloat16')
  model = registry.build_from_spec(spec, (12, 12, 1), 3)
  assert model.convs[0].compute_dtype == 'bfloat16'
  out = model(tf.zeros([1, 12, 12, 1]))
  assert out['logits'].dtype == tf.float32
  assert out['lengths'].dtype == tf.float32


def test_bad_arguments_and_inputs():
  with pytest.raises(ValueError, match='dropout'):
    BaselineCNN(dropout=1.0)
  model = BaselineCNN(input_shape=(12, 12, 1), num_classes=3, **SMALL)
  with pytest.raises(ValueError, match=r'\[batch, 12, 12, 1\]'):
    model(tf.zeros([1, 28, 28, 1]))


def test_trains_with_cross_entropy_and_exports(tmp_path):
  cfg = tiny_config(tmp_path, train_steps=40, steps_per_loop=10,
                    eval_every=40, checkpoint_every=40, batch_size=16,
                    model=config_lib.model_spec(name='baseline_cnn'))
  trainer = trainer_lib.Trainer(cfg)
  assert isinstance(trainer.model, BaselineCNN)
  batch = next(iter(trainer.train_iterator(0)))
  outputs = trainer.model(batch['image'])
  margin, recon, total = trainer.task.build_losses(
      batch, outputs, trainer.optimizer.iterations)
  np.testing.assert_allclose(margin.numpy(), losses.softmax_cross_entropy(
      batch['label'], outputs['logits']).numpy(), rtol=1e-6)
  np.testing.assert_array_equal(recon.numpy(), 0.0)
  np.testing.assert_allclose(total.numpy(), margin.numpy())
  results = run_trainer(trainer)
  # Chance is 0.25 on the four synthetic classes.
  assert results['accuracy'] > 0.6
  path = publish.export_from_checkpoint(str(tmp_path), str(tmp_path / 'e'))
  sigs = tf.saved_model.load(path).signatures
  assert sorted(sigs) == ['predict_images', 'serving_default']
  images = tf.random.uniform([3, 20, 20, 1], seed=2)
  out = sigs['serving_default'](images=images)
  model, _ = restore.load_checkpointed_model(str(tmp_path))
  np.testing.assert_allclose(out['probabilities'].numpy(),
                             model(images)['lengths'].numpy(), atol=1e-5)
  assert out['poses'].shape == (3, 4, 1)


def test_flops_by_hand_and_contract():
  model = BaselineCNN()
  model(tf.zeros([1, 28, 28, 1]))
  convs = (2 * 28 * 28 * 25 * 1 * 256 + 2 * 14 * 14 * 25 * 256 * 256 +
           2 * 7 * 7 * 25 * 256 * 128)
  dense = 2 * (3 * 3 * 128 * 328 + 328 * 192 + 192 * 10)
  assert model.flops_per_example() == convs + dense
  assert not model.has_decoder and model.pose_shape == (10, 1)
  with pytest.raises(ValueError, match='has no decoder'):
    model.reconstruct(tf.zeros([1, 10, 1]), tf.zeros([1, 10]))


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
