"""Tests of pipeline.core.trainer on tiny models and data."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline.core import controller as controller_lib

from pipeline.core import trainer as trainer_lib
from pipeline.data import sources

from helpers import run_trainer, TINY_MODEL, tiny_config

NO_SHIFT = sources.DataSpec(dataset='synthetic', synthetic_shape=(20, 20, 1),
                            synthetic_classes=4, synthetic_size=(128, 32),
                            shift_pixels=0)


def _weights(trainer):
  return [w.numpy() for w in trainer.model.trainable_weights]


def test_one_device_and_two_replica_mirrored_steps_agree(tmp_path):
  one = trainer_lib.Trainer(
      tiny_config(tmp_path / 'one', data=NO_SHIFT, train_steps=1,
                  steps_per_loop=1),
      strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  two = trainer_lib.Trainer(
      tiny_config(tmp_path / 'two', data=NO_SHIFT, train_steps=1,
                  steps_per_loop=1),
      strategy=tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
  assert two.strategy.num_replicas_in_sync == 2
  two.model.set_weights(one.model.get_weights())
  before = _weights(one)
  for t in (one, two):
    t.train_loop(t.train_iterator(0), tf.constant(1, tf.int64))
  after_one, after_two = _weights(one), _weights(two)
  assert any(not np.allclose(a, b) for a, b in zip(before, after_one))
  for a, b in zip(after_one, after_two):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('test_size', [25, 23, 40])
def test_evaluation_over_replicas_counts_each_example_once(tmp_path,
                                                           test_size):
  """A split that leaves a replica a short or empty last batch (25 over
  2 replicas of 10: [10, 10], [5, 0]) is padded to whole batches that weigh
  0, and scores as on one device."""
  data = dataclasses.replace(NO_SHIFT, synthetic_size=(128, test_size))
  one = trainer_lib.Trainer(
      tiny_config(tmp_path / 'one', data=data, eval_batch_size=20),
      strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  two = trainer_lib.Trainer(
      tiny_config(tmp_path / 'two', data=data, eval_batch_size=20),
      strategy=tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
  two.model.set_weights(one.model.get_weights())
  a, b = one.evaluate('test'), two.evaluate('test')
  assert a['examples'] == b['examples'] == test_size
  assert a['accuracy'] == pytest.approx(b['accuracy'], abs=1e-6)
  assert a['loss'] == pytest.approx(b['loss'], rel=1e-4)


def test_train_writes_checkpoints_metrics_and_run_files(tmp_path):
  cfg = tiny_config(tmp_path, train_steps=6, eval_every=3)
  results = run_trainer(trainer_lib.Trainer(cfg))
  assert results['examples'] == 32
  assert 0.0 <= results['accuracy'] <= 1.0
  assert results['error_rate'] == pytest.approx(1 - results['accuracy'])
  with open(tmp_path / 'metrics.json') as f:
    metrics = json.load(f)
  assert [h['step'] for h in metrics['history']] == [3, 6]
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith(
      'ckpt-6')
  for name in ('config.json', 'info.json'):
    assert os.path.exists(tmp_path / name)


def test_resume_equals_straight_run(tmp_path):
  straight = trainer_lib.Trainer(tiny_config(tmp_path / 'a', train_steps=4))
  run_trainer(straight)
  first = trainer_lib.Trainer(tiny_config(tmp_path / 'b', train_steps=2))
  run_trainer(first)
  resumed = trainer_lib.Trainer(tiny_config(tmp_path / 'b', train_steps=4))
  assert controller_lib.Controller(resumed).restore() is not None
  assert resumed.step == 2
  run_trainer(resumed)
  assert resumed.step == 4
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_learns_synthetic_data(tmp_path):
  cfg = tiny_config(tmp_path, train_steps=80, steps_per_loop=10,
                    eval_every=80, checkpoint_every=80, batch_size=16,
                    learning_rate=0.01)
  results = run_trainer(trainer_lib.Trainer(cfg))
  # Chance is 0.25 on four classes.
  assert results['accuracy'] > 0.8


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  run_trainer(trainer_lib.Trainer(tiny_config(tmp_path, train_steps=2)))
  good = tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))
  bad = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=6))
  losses = bad.task.build_losses
  # The resumed run's losses turn infinite (as a diverging run's would).
  bad.task.build_losses = lambda *args: [
      x * float('inf') for x in losses(*args)]
  with pytest.raises(trainer_lib.NonFiniteLossError, match='at step 3'):
    run_trainer(bad)
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')) == good


def test_one_replica_going_non_finite_skips_the_step_on_every_replica(
    tmp_path):
  # The verdict travels in the gradients' all-reduce: replica 1's NaN loss
  # stops both replicas on the same step, with no weight changed.
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  trainer = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=6),
                                strategy=strategy)
  trainer.run_steps(2)
  before = [v.numpy() for v in trainer.model.trainable_variables]
  losses = trainer.task.build_losses

  def nan_on_replica_1(*args):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    scale = tf.where(tf.equal(replica, 1), float('nan'), 1.0)
    return [x * scale for x in losses(*args)]

  trainer.task.build_losses = nan_on_replica_1
  trainer.train_loop = tf.function(trainer._train_loop_fn)  # pylint: disable=protected-access
  with pytest.raises(trainer_lib.NonFiniteLossError, match='at step 3'):
    trainer.run_steps(2)
  # Both replicas took the same (zero) gradients: their copies agree and
  # hold no NaN from replica 1. (Adam's momentum still moves them; the
  # controller saves nothing of that step.)
  for old, var in zip(before, trainer.model.trainable_variables):
    first, second = [v.numpy() for v in
                     strategy.experimental_local_results(var)]
    np.testing.assert_array_equal(first, second, err_msg=var.name)
    assert np.all(np.isfinite(first)), var.name
    assert old.shape == first.shape


def test_one_all_reduce_per_step_carries_gradients_and_the_verdict(tmp_path):
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  trainer = trainer_lib.Trainer(tiny_config(tmp_path), strategy=strategy)
  calls = []
  real = tf.distribute.ReplicaContext.all_reduce

  def counting(self, op, value, options=None):
    calls.append(len(tf.nest.flatten(value)))
    return real(self, op, value, options)

  tf.distribute.ReplicaContext.all_reduce = counting
  try:
    batch = next(iter(trainer.train_iterator(0)))
    strategy.run(tf.function(trainer.task.train_step), args=(
        batch, trainer.model, trainer.optimizer, trainer.metrics))
  finally:
    tf.distribute.ReplicaContext.all_reduce = real
  variables = len(trainer.model.trainable_variables)
  # One call per replica, each with every gradient and the flag.
  assert calls and set(calls) == {variables + 1}, calls


@pytest.mark.parametrize('flag,size,replicas,nearest', [
    ('batch_size', 7, 2, '6 or 8'),
    ('eval_batch_size', 15, 2, '14 or 16'),
    ('eval_batch_size', 1, 2, 'such as 2.'),
])
def test_batch_sizes_that_do_not_divide_are_refused_before_any_work(
    tmp_path, flag, size, replicas, nearest):
  with pytest.raises(ValueError, match=f'--{flag}={size} does not divide '
                     f'over {replicas} replicas') as raised:
    trainer_lib.Trainer(
        tiny_config(tmp_path, **{flag: size}),
        strategy=tf.distribute.MirroredStrategy(
            [f'/cpu:{i}' for i in range(replicas)]))
  assert nearest in str(raised.value)
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_check_divides_names_the_nearest_sizes():
  for size, replicas, nearest in ((500, 8, '496 or 504'), (500, 3, '498 or '
                                                                    '501'),
                                  (5, 8, 'such as 8.')):
    with pytest.raises(ValueError, match=nearest):
      trainer_lib.check_divides('eval_batch_size', size, replicas)
  trainer_lib.check_divides('batch_size', 512, 8)


def _final_loss(tmp_path, precision, **options):
  cfg = tiny_config(tmp_path / precision / str(options), train_steps=200,
                    steps_per_loop=20, log_every=200, eval_every=200,
                    checkpoint_every=200, batch_size=16,
                    model=config_lib.model_spec(
                        precision=precision, **TINY_MODEL, **options))
  trainer = trainer_lib.Trainer(cfg)
  results = run_trainer(trainer)
  return trainer, results


def test_mixed_bfloat16_reaches_the_float32_loss(tmp_path):
  """200 steps on the same fixed data: the bf16 eval loss lands within 25%
  of float32's (and both learn), with routing kept in float32."""
  fp32, fp32_results = _final_loss(tmp_path, 'float32')
  bf16, bf16_results = _final_loss(tmp_path, 'mixed_bfloat16')
  assert bf16.model.conv1.compute_dtype == 'bfloat16'
  assert bf16.model.conv1.kernel.dtype == tf.float32
  out = bf16.model(tf.zeros([2, 20, 20, 1]))
  assert out['lengths'].dtype == tf.float32
  assert out['coupling'].dtype == tf.float32
  assert fp32_results['accuracy'] > 0.8 and bf16_results['accuracy'] > 0.8
  assert bf16_results['loss'] == pytest.approx(fp32_results['loss'], rel=0.25)
  # u_hat and routing in bfloat16 too: the same tolerance.
  routed, routed_results = _final_loss(tmp_path, 'mixed_bfloat16',
                                       routing_dtype='bfloat16')
  assert routed.model.class_capsules.routing_dtype == 'bfloat16'
  assert routed_results['accuracy'] > 0.8
  assert routed_results['loss'] == pytest.approx(fp32_results['loss'],
                                                 rel=0.25)


def test_mixed_float16_uses_loss_scaling(tmp_path):
  trainer = trainer_lib.Trainer(tiny_config(
      tmp_path, train_steps=2, model=config_lib.model_spec(
          precision='mixed_float16', **TINY_MODEL)))
  assert isinstance(trainer.optimizer,
                    keras.mixed_precision.LossScaleOptimizer)
  run_trainer(trainer)
  assert trainer.step == 2


def test_a_resume_counts_the_time_of_the_evaluation_after_its_checkpoint(
    tmp_path):
  # The last step's evaluation runs after its checkpoint is saved: a slow
  # one (as here, written longer) must not make a resumed run's times in
  # metrics.json go back.
  run_trainer(trainer_lib.Trainer(tiny_config(tmp_path, train_steps=2)))
  path = tmp_path / 'metrics.json'
  metrics = json.loads(path.read_text())
  metrics['history'][-1]['wall_seconds'] += 1000.0
  path.write_text(json.dumps(metrics))
  results = run_trainer(trainer_lib.Trainer(tiny_config(tmp_path,
                                                        train_steps=4)))
  walls = [h['wall_seconds'] for h in json.loads(path.read_text())['history']]
  assert walls == sorted(walls) and walls[-1] == results['wall_seconds']
  assert walls[-1] > 1000.0


def test_wall_time_is_checkpointed_and_counted_across_resumes(tmp_path):
  first = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=2))
  run_trainer(first)
  spent = float(first.wall_seconds.numpy())
  assert spent > 0
  resumed = trainer_lib.Trainer(tiny_config(tmp_path, train_steps=4))
  controller_lib.Controller(resumed).restore()
  assert float(resumed.wall_seconds.numpy()) == spent
  results = run_trainer(resumed)
  assert results['wall_seconds'] > spent
  with open(tmp_path / 'metrics.json') as f:
    history = json.load(f)['history']
  walls = [h['wall_seconds'] for h in history]
  assert walls == sorted(walls) and walls[-1] == results['wall_seconds']


def test_autotune_chooses_at_per_replica_shapes_and_is_recorded(tmp_path,
                                                                 monkeypatch):
  monkeypatch.setenv('CAPSNET_AUTOTUNE_CACHE', str(tmp_path / 'cache.json'))
  cfg = tiny_config(tmp_path / 'run', autotune='cached', train_steps=2,
                    eval_every=2, strategy='mirrored')
  trainer = trainer_lib.Trainer(
      cfg, strategy=tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
  parts = trainer.autotune['parts']
  # Batch 8 over 2 replicas trains 4 a replica; evaluation 16 over 2, 8.
  assert parts['primary_capsules/train']['input_shape'][0] == 4
  assert parts['class_capsules/infer']['input_shape'][0] == 8
  for key, entry in parts.items():
    part, mode = key.split('/')
    layer = getattr(trainer.model, 'primary' if part.startswith('primary')
                    else 'class_capsules')
    assert layer.formulation(mode) == entry['choice'], key
  results = run_trainer(trainer)
  assert np.isfinite(results['loss'])
  with open(tmp_path / 'run' / 'autotune.json') as f:
    assert json.load(f)['parts'].keys() == parts.keys()
  # The next run on this machine takes the cached choices.
  again = trainer_lib.Trainer(
      dataclasses.replace(cfg, model_dir=str(tmp_path / 'again')),
      strategy=tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
  assert {e['source'] for e in again.autotune['parts'].values()} == {'cache'}
  assert ({k: e['choice'] for k, e in again.autotune['parts'].items()} ==
          {k: e['choice'] for k, e in parts.items()})


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
