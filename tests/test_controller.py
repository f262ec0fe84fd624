"""Tests of pipeline.core.controller: the loop's files, and resume safety."""

import dataclasses
import gc
import json
import os
import shutil

import pytest
import tensorflow as tf

from helpers import run_trainer, snapshot, TINY_MODEL, tiny_config
from pipeline import config as config_lib
from pipeline.core import checkpoints as checkpoints_lib
from pipeline.core import controller as controller_lib
from pipeline.core import run_guard
from pipeline.core import trainer as trainer_lib


def _changed(cfg, **changes):
  model = changes.pop('model', None)
  data = changes.pop('data', None)
  return config_lib.replace(
      cfg, model=model or cfg.model,
      data=dataclasses.replace(cfg.data, **data) if data else cfg.data,
      **changes)


@pytest.fixture(scope='module')
def first_run(tmp_path_factory):
  """A tiny run trained to step 2, for the resume tests to copy."""
  model_dir = tmp_path_factory.mktemp('first')
  cfg = tiny_config(model_dir, train_steps=2)
  run_trainer(trainer_lib.Trainer(cfg), flags_text='--conv_filters=8\n')
  return cfg


def _copy(cfg, tmp_path):
  target = tmp_path / 'run'
  shutil.copytree(cfg.model_dir, target)
  os.remove(target / run_guard.LOCK_FILE)
  return dataclasses.replace(cfg, model_dir=str(target)), target


@pytest.mark.parametrize('change,named', [
    (dict(model=config_lib.model_spec(**dict(TINY_MODEL, conv_filters=16))),
     '--conv_filters was 8, now 16'),
    (dict(model=config_lib.model_spec('baseline_cnn')),
     "--model was 'capsnet', now 'baseline_cnn'"),
    # (float32 <-> mixed_bfloat16 carries over: test_train_e2e.)
    (dict(model=config_lib.model_spec(precision='mixed_float16',
                                      **TINY_MODEL)),
     "--precision was 'float32', now 'mixed_float16'"),
    (dict(data=dict(synthetic_shape=(24, 24, 1))), '--synthetic_shape'),
    (dict(batch_size=4), '--batch_size was 8, now 4'),
    (dict(learning_rate=0.5), '--learning_rate'),
    (dict(lr_schedule='cosine'), "--lr_schedule was 'exponential'"),
    (dict(warmup_steps=10), '--warmup_steps was 0, now 10'),
    (dict(seed=7), '--seed'),
    (dict(reconstruction_weight=1.0), '--reconstruction_weight'),
])
def test_a_changed_run_is_refused_before_anything_is_touched(
    first_run, tmp_path, change, named):
  cfg, model_dir = _copy(first_run, tmp_path)
  before = snapshot(model_dir)
  changed = _changed(cfg, train_steps=4, **change)
  trainer = trainer_lib.Trainer(changed)
  with pytest.raises(run_guard.RunGuardError, match=named) as e:
    controller_lib.Controller(trainer, '--conv_filters=16\n').train()
  assert 'pick a new --model_dir' in str(e.value)
  assert snapshot(model_dir) == before
  assert not os.path.exists(model_dir / 'checkpoints' / 'corrupt')


def test_a_run_of_the_flat_config_layout_resumes(first_run, tmp_path):
  """Runs written before the config had its optimizer, loss and runtime
  parts (their settings at the top of config.json) resume as they are."""
  cfg, model_dir = _copy(first_run, tmp_path)
  path = model_dir / config_lib.CONFIG_FILE
  raw = json.loads(path.read_text())
  for part in config_lib.PARTS:
    raw.update(raw.pop(part))
  path.write_text(json.dumps(raw))
  resumed = trainer_lib.Trainer(dataclasses.replace(cfg, train_steps=4))
  controller = controller_lib.Controller(resumed)
  assert controller.restore().endswith('ckpt-2')
  assert controller.train().step == 4


def test_the_original_settings_resume_after_a_refusal(first_run, tmp_path):
  cfg, model_dir = _copy(first_run, tmp_path)
  refused = trainer_lib.Trainer(_changed(cfg, batch_size=4))
  with pytest.raises(run_guard.RunGuardError):
    controller_lib.Controller(refused).train()
  resumed = trainer_lib.Trainer(dataclasses.replace(cfg, train_steps=4))
  controller = controller_lib.Controller(resumed)
  assert controller.restore().endswith('ckpt-2')
  controller.train()
  assert resumed.step == 4
  with open(model_dir / 'flags.txt') as f:
    assert f.read() == '--conv_filters=8\n'


def test_accepted_changes_are_stated(first_run, tmp_path, caplog):
  cfg, model_dir = _copy(first_run, tmp_path)
  changed = _changed(cfg, train_steps=4, eval_every=2, deterministic=False)
  with caplog.at_level('WARNING'):
    run_trainer(trainer_lib.Trainer(changed))
  assert ('--deterministic changed from True to False: the input order and '
          'op determinism change') in caplog.text
  with open(model_dir / 'config.json') as f:
    assert json.load(f)['train_steps'] == 4


def test_an_intact_checkpoint_of_another_model_is_refused_not_quarantined(
    first_run, tmp_path):
  cfg, tmp_path = _copy(first_run, tmp_path)
  os.remove(tmp_path / 'config.json')  # Lost: the check cannot see it.
  other = trainer_lib.Trainer(_changed(cfg, model=config_lib.model_spec(
      **dict(TINY_MODEL, class_dim=6))))
  with pytest.raises(run_guard.RunGuardError, match='intact but does not fit'):
    controller_lib.Controller(other).train()
  assert not os.path.exists(tmp_path / 'checkpoints' / 'corrupt')
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints'))


def test_warm_start_takes_the_weights_but_not_the_step_or_optimizer(
    first_run, tmp_path):
  source, source_dir = _copy(first_run, tmp_path)
  trained = trainer_lib.Trainer(source)
  checkpoints_lib.Checkpoints(trained, str(source_dir), 3).restore()
  assert trained.step == 2
  new = trainer_lib.Trainer(dataclasses.replace(
      source, model_dir=str(tmp_path / 'new'), warm_start=str(source_dir)))
  before = [w.numpy().copy() for w in new.model.weights]
  path = checkpoints_lib.Checkpoints(new, str(tmp_path / 'new'), 3
                                     ).warm_start(str(source_dir))
  assert path.endswith('ckpt-2')
  for a, b, c in zip(new.model.weights, trained.model.weights, before):
    assert (a.numpy() == b.numpy()).all(), a.name
  assert any((a.numpy() != c).any() for a, c in zip(new.model.weights,
                                                     before))
  assert new.step == 0
  assert int(new.optimizer.iterations.numpy()) == 0
  # A checkpoint path works as well as its run directory.
  assert checkpoints_lib.Checkpoints(new, str(tmp_path / 'new'), 3
                                     ).warm_start(path) == path


def test_a_warm_started_run_trains_from_step_0_and_resumes_as_itself(
    first_run, tmp_path, caplog):
  cfg = dataclasses.replace(first_run, model_dir=str(tmp_path / 'second'),
                            warm_start=first_run.model_dir, train_steps=2)
  # (Earlier tests' garbage is collected first: this is about this run.)
  gc.collect()
  with caplog.at_level('INFO'):
    run_trainer(trainer_lib.Trainer(cfg))
    # The optimizer state it leaves out on purpose is not warned about.
    gc.collect()
  assert 'Warm-started from ' + os.path.join(
      first_run.model_dir, 'checkpoints', 'ckpt-2') in caplog.text
  assert 'could not be found in the restored object' not in caplog.text
  with open(tmp_path / 'second' / 'metrics.json') as f:
    assert [e['step'] for e in json.load(f)['history']] == [2]
  with open(tmp_path / 'second' / 'config.json') as f:
    assert json.load(f)['warm_start'] == first_run.model_dir
  caplog.clear()
  # Resumed, it goes on from its own checkpoint; a moved source is fine.
  with caplog.at_level('INFO'):
    run_trainer(trainer_lib.Trainer(dataclasses.replace(
        cfg, train_steps=4, warm_start=str(tmp_path / 'moved'))))
  assert 'Warm-started' not in caplog.text
  assert 'Resumed from' in caplog.text
  assert '--warm_start changed from' in caplog.text


def test_a_warm_start_that_does_not_fit_is_refused_before_training(
    first_run, tmp_path):
  other = _changed(first_run, model_dir=str(tmp_path / 'other'),
                   warm_start=first_run.model_dir,
                   model=config_lib.model_spec(**dict(TINY_MODEL,
                                                      class_dim=6)))
  with pytest.raises(run_guard.RunGuardError,
                     match='does not fit this model.*same --model'):
    controller_lib.Controller(trainer_lib.Trainer(other)).train()
  # Refused before the new run's directory (its lock, its skeleton) was made.
  assert not (tmp_path / 'other').exists()
  (tmp_path / 'empty').mkdir()
  for source, message in ((tmp_path / 'empty', 'holds no checkpoint'),
                          (tmp_path / 'nowhere' / 'ckpt-3',
                           'neither a directory nor a checkpoint')):
    cfg = dataclasses.replace(first_run, model_dir=str(tmp_path / 'x'),
                              warm_start=str(source))
    with pytest.raises(run_guard.RunGuardError, match=message):
      controller_lib.Controller(trainer_lib.Trainer(cfg)).train()
    # Refused before the new run's directory was made.
    assert not (tmp_path / 'x').exists()


def test_nothing_is_written_before_the_lock_is_held(first_run, tmp_path):
  cfg, tmp_path = _copy(first_run, tmp_path)
  before = snapshot(tmp_path)
  with run_guard.RunLock(str(tmp_path)):
    second = controller_lib.Controller(trainer_lib.Trainer(
        _changed(cfg, train_steps=4)), 'intruder\n')
    with pytest.raises(run_guard.RunGuardError, match='in use by another'):
      second.train()
  assert snapshot(tmp_path) == before


def test_a_corrupt_metrics_file_is_set_aside(first_run, tmp_path, caplog):
  cfg, tmp_path = _copy(first_run, tmp_path)
  (tmp_path / 'metrics.json').write_text('{"history": [1, 2')
  with caplog.at_level('WARNING'):
    results = run_trainer(trainer_lib.Trainer(_changed(cfg, train_steps=4)))
  assert 'cannot be read' in caplog.text
  assert (tmp_path / 'metrics.json.corrupt-1').read_text() == (
      '{"history": [1, 2')
  with open(tmp_path / 'metrics.json') as f:
    assert json.load(f)['latest']['accuracy'] == results['accuracy']


def test_stale_save_directories_are_removed_at_start(first_run, tmp_path):
  cfg, tmp_path = _copy(first_run, tmp_path)
  stale = tmp_path / 'checkpoints' / 'ckpt-3_temp'
  stale.mkdir()
  (stale / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'x')
  run_trainer(trainer_lib.Trainer(_changed(cfg, train_steps=4)))
  assert not stale.exists()


def _scripted_accuracies(trainer, accuracies):
  """Makes `trainer.evaluate` report `accuracies` in turn (the rest of each
  result real); returns the list of steps it was called at."""
  real, calls, queue = trainer.evaluate, [], list(accuracies)

  def evaluate(*args, **kwargs):
    calls.append(trainer.step)
    return dict(real(*args, **kwargs), accuracy=queue.pop(0))
  trainer.evaluate = evaluate
  return calls


def test_target_accuracy_stops_at_the_first_evaluation_reaching_it(
    tmp_path, caplog):
  cfg = tiny_config(tmp_path, train_steps=12, eval_every=2,
                    checkpoint_every=4, target_accuracy=0.9)
  trainer = trainer_lib.Trainer(cfg)
  calls = _scripted_accuracies(trainer, [0.5, 0.89, 0.9, 0.1])
  with caplog.at_level('INFO'):
    result = controller_lib.Controller(trainer).train()
  assert calls == [2, 4, 6]
  assert result.step == trainer.step == 6 and result.preempted is None
  assert result.evaluation['accuracy'] == 0.9
  assert 'Reached --target_accuracy=0.9 at step 6' in caplog.text
  # Step 6 is off the checkpoint cadence, so it is saved for the stop.
  assert tf.train.latest_checkpoint(
      os.path.join(tmp_path, 'checkpoints')).endswith('ckpt-6')
  with open(tmp_path / 'metrics.json') as f:
    assert json.load(f)['latest']['step'] == 6

  # The same command again finds the target reached: no step, no evaluation.
  again = trainer_lib.Trainer(cfg)
  calls = _scripted_accuracies(again, [])
  with caplog.at_level('INFO'):
    result = controller_lib.Controller(again).train()
  assert calls == [] and result.step == 6
  assert result.evaluation['accuracy'] == 0.9
  assert 'already reached --target_accuracy=0.9' in caplog.text

  # A higher target (a free change) trains on from the checkpoint.
  higher = trainer_lib.Trainer(_changed(cfg, target_accuracy=0.95))
  calls = _scripted_accuracies(higher, [0.96])
  result = controller_lib.Controller(higher).train()
  assert calls == [8] and result.step == 8


def test_an_unreached_target_accuracy_trains_every_step(tmp_path):
  # (Off, the default 0, is what every other test runs with.)
  trainer = trainer_lib.Trainer(tiny_config(
      tmp_path, train_steps=6, eval_every=2, target_accuracy=0.99))
  calls = _scripted_accuracies(trainer, [0.5, 0.98, 0.9])
  result = controller_lib.Controller(trainer).train()
  assert calls == [2, 4, 6] and result.step == 6


def test_run_result_shapes(tmp_path):
  trainer, result = controller_lib.train(tiny_config(tmp_path, train_steps=2))
  assert result.step == trainer.step == 2 and result.preempted is None
  assert result.evaluation['examples'] == 32
  assert controller_lib.duration(3661.2) == '1:01:02'


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
