"""Tests of pipeline.core.checkpoints: finite saves, restore with quarantine."""

import gc
import os

import pytest
import tensorflow as tf

from pipeline.core import checkpoints as checkpoints_lib
from pipeline.core import run_guard
from pipeline.core import trainer as trainer_lib


class _FakeTrainer:
  """What `Checkpoints` uses of a Trainer: a model, a checkpoint, its step,
  its wall time and whether its weights are finite."""

  def __init__(self, value=1.0, shape=(3,), extra=False):
    self.model = tf.Module()
    self.model.weight = self.weight = tf.Variable(tf.fill(shape, value))
    if extra:  # A variable the saved runs do not have.
      self.model.bias = tf.Variable(0.0)
    self.global_step = tf.Variable(0, dtype=tf.int64)
    self.wall_seconds = tf.Variable(0.0, dtype=tf.float64)
    self.checkpoint = tf.train.Checkpoint(model=self.model,
                                          step=self.global_step,
                                          wall=self.wall_seconds)

  @property
  def step(self):
    return int(self.global_step.numpy())

  def weights_finite(self):
    return bool(tf.reduce_all(tf.math.is_finite(self.weight)))


def _saved(tmp_path, steps=(1, 2)):
  trainer = _FakeTrainer()
  checkpoints = checkpoints_lib.Checkpoints(trainer, str(tmp_path), 5)
  checkpoints.open()
  for step in steps:
    trainer.global_step.assign(step)
    trainer.weight.assign(tf.fill([3], float(step)))
    checkpoints.save(step, wall_seconds=10.0 * step)
  return checkpoints


def test_save_then_restore_the_newest(tmp_path):
  _saved(tmp_path)
  fresh = _FakeTrainer(value=0.0)
  path = checkpoints_lib.Checkpoints(fresh, str(tmp_path), 5).restore()
  assert path.endswith('ckpt-2')
  assert fresh.step == 2 and float(fresh.wall_seconds.numpy()) == 20.0
  assert fresh.weight.numpy().tolist() == [2.0, 2.0, 2.0]


def test_non_finite_weights_are_not_saved(tmp_path):
  checkpoints = _saved(tmp_path, steps=(1,))
  checkpoints.trainer.weight.assign([1.0, float('nan'), 1.0])
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r'by step 2.*ckpt-1\) is the last good one'):
    checkpoints.save(2, wall_seconds=20.0)
  assert checkpoints.manager.latest_checkpoint.endswith('ckpt-1')


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_used(
    tmp_path):
  _saved(tmp_path)
  data = [f for f in os.listdir(tmp_path / 'checkpoints')
          if f.startswith('ckpt-2.data')]
  with open(tmp_path / 'checkpoints' / data[0], 'r+b') as f:
    f.truncate(3)
  fresh = _FakeTrainer(value=0.0)
  path = checkpoints_lib.Checkpoints(fresh, str(tmp_path), 5).restore()
  assert path.endswith('ckpt-1') and fresh.step == 1
  assert os.listdir(tmp_path / 'checkpoints' / 'corrupt')


def _refusal(call):
  """The message `call` is refused with; the error and its traceback are
  dropped, so that what the refused restore left can be collected."""
  try:
    call()
  except run_guard.RunGuardError as e:
    return str(e)
  raise AssertionError('not refused')


@pytest.mark.parametrize('other', [dict(shape=(4,)), dict(extra=True)],
                         ids=['another_shape', 'another_variable'])
def test_an_intact_checkpoint_of_another_model_is_refused(tmp_path, caplog,
                                                          other):
  _saved(tmp_path)
  gc.collect()
  with caplog.at_level('WARNING'):
    # (The refused trainer is dropped too: its variables keep the restore's
    # state alive while they live.)
    assert 'does not fit' in _refusal(
        lambda: checkpoints_lib.Checkpoints(_FakeTrainer(**other),
                                            str(tmp_path), 5).restore())
    # The refused restore, once collected, adds no TensorFlow "unrestored
    # values" warnings after the refusal (nor, in a process that goes on,
    # in front of the next run's log).
    gc.collect()
  assert 'could not be found in the restored object' not in caplog.text
  assert not os.path.exists(tmp_path / 'checkpoints' / 'corrupt')


@pytest.mark.parametrize('other', [dict(shape=(4,)), dict(extra=True)],
                         ids=['another_shape', 'another_variable'])
def test_a_refused_warm_start_leaves_no_restore_warnings(tmp_path, caplog,
                                                         other):
  _saved(tmp_path / 'source')
  gc.collect()
  with caplog.at_level('WARNING'):
    assert 'does not fit this model' in _refusal(
        lambda: checkpoints_lib.Checkpoints(
            _FakeTrainer(**other), str(tmp_path / 'new'), 5
        ).warm_start(str(tmp_path / 'source')))
    gc.collect()
  assert 'could not be found in the restored object' not in caplog.text


def test_nothing_saved_restores_nothing_and_says_so(tmp_path):
  checkpoints = checkpoints_lib.Checkpoints(_FakeTrainer(), str(tmp_path), 5)
  assert checkpoints.restore() is None
  assert 'No checkpoint was written' in checkpoints.last_good()


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
