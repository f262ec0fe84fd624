"""Tests of pipeline.evaluate: metrics from checkpoints and SavedModels."""

import dataclasses
import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from pipeline import evaluate
from pipeline.core import trainer as trainer_lib
from pipeline.data import input_pipeline
from pipeline.data import sources
from pipeline.serving import publish

from conftest import REPO
from helpers import run_trainer, tiny_config


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('eval_run')
  trainer = trainer_lib.Trainer(tiny_config(model_dir, train_steps=4))
  results = run_trainer(trainer)
  path = publish.export_from_checkpoint(str(model_dir), str(model_dir / 'exp'))
  return trainer, results, model_dir, path


def test_checkpoint_and_saved_model_agree_with_trainer(run):
  trainer, trained, model_dir, path = run
  for predictor in (evaluate.Predictor.from_checkpoint(str(model_dir)),
                    evaluate.Predictor.from_saved_model(path)):
    results = evaluate.evaluate(predictor, trainer.source, 'test', 10)
    assert results['examples'] == 32
    assert results['accuracy'] == pytest.approx(trained['accuracy'])
    cm = np.array(results['confusion_matrix'])
    assert cm.sum() == 32 and cm.trace() == round(32 * results['accuracy'])
    per_class = np.diag(cm) / cm.sum(1)
    np.testing.assert_allclose(results['per_class_accuracy'], per_class)
    assert len(results['wrong']) == 32 - cm.trace()


def test_two_object_accuracy_needs_both():
  class Fixed:
    image_shape = (36, 36, 1)
    num_classes = 10

    def predict(self, images):
      n = len(images)
      lengths = np.zeros([n, 10], np.float32)
      lengths[:, :2] = [0.9, 0.8]    # always predicts classes 0 and 1
      return lengths, np.zeros([n, 10, 4])

  spec = sources.DataSpec(dataset='synthetic', synthetic_shape=(28, 28, 1))
  src = sources.open_source(spec)
  # Reuse the synthetic digits as MultiMNIST's base to get k-hot labels.
  src.kind = sources.DATASETS['multimnist']
  src.info = src.info.__class__(name='multimnist', image_shape=(36, 36, 1),
                                num_classes=10, split_sizes={},
                                num_targets=2)
  results = evaluate.evaluate(Fixed(), src, 'test', 50)
  labels = []
  from pipeline.data import input_pipeline  # pylint: disable=g-import-not-at-top
  for batch in input_pipeline.make_dataset(src, 'test', 50, False,
                                           deterministic=True):
    labels.append(batch['label'].numpy())
  labels = np.concatenate(labels)
  expected = ((labels[:, 0] == 1) & (labels[:, 1] == 1)).mean()
  assert results['both_digits_accuracy'] == pytest.approx(expected)
  assert 'confusion_matrix' not in results
  # Each wrong pair is listed with both its labels and both predictions.
  assert [w[0] for w in results['wrong']] == np.flatnonzero(
      ~((labels[:, 0] == 1) & (labels[:, 1] == 1))).tolist()
  for index, true, guess in results['wrong']:
    assert true == np.flatnonzero(labels[index]).tolist() and guess == [0, 1]


def test_wrong_examples_are_listed_by_their_index_in_the_split():
  # A model that always answers 3, over batches that do not divide the
  # split: every other example is listed once, at its own index, with its
  # label, so a user can find and look at the digits a model gets wrong.
  class Threes:
    image_shape = (28, 28, 1)
    num_classes = 10

    def predict(self, images):
      lengths = np.zeros([len(images), 10], np.float32)
      lengths[:, 3] = 0.9
      return lengths, np.zeros([len(images), 10, 16])

  src = sources.open_source(sources.DataSpec(
      dataset='synthetic', synthetic_shape=(28, 28, 1),
      synthetic_size=(20, 37)))
  results = evaluate.evaluate(Threes(), src, 'test', 10)
  labels = np.concatenate([
      b['label'].numpy().argmax(1) for b in
      evaluate.input_pipeline.make_dataset(src, 'test', 10, False,
                                           deterministic=True)])
  assert len(labels) == 37 and 3 in labels and len(set(labels)) > 2
  assert results['wrong'] == [[i, int(l), 3] for i, l in enumerate(labels)
                              if l != 3]
  assert len(results['wrong']) == round(37 * results['error_rate'])


def test_another_number_of_classes_is_explained(run):
  # A 4-class model on 10-class data of its image shape: refused in one
  # line, not an IndexError in the confusion matrix.
  _, _, model_dir, path = run
  src = sources.open_source(sources.DataSpec(
      synthetic_shape=(20, 20, 1), synthetic_classes=10,
      synthetic_size=(20, 10)))
  for predictor in (evaluate.Predictor.from_checkpoint(str(model_dir)),
                    evaluate.Predictor.from_saved_model(path)):
    with pytest.raises(ValueError, match='The model has 4 classes but '
                       'synthetic has 10'):
      evaluate.evaluate(predictor, src, 'test')
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.evaluate', f'--saved_model={path}',
       '--dataset=synthetic', '--synthetic_shape=20,20,1',
       '--synthetic_classes=10', '--synthetic_size=20,10'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'The model has 4 classes' in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_shape_mismatch_is_explained(run):
  _, _, model_dir, _ = run
  predictor = evaluate.Predictor.from_checkpoint(str(model_dir))
  src = sources.open_source(sources.DataSpec(synthetic_size=(20, 10)))
  with pytest.raises(ValueError, match=r'takes images \(20, 20, 1\)'):
    evaluate.evaluate(predictor, src, 'test')


def test_command_with_figures(run, tmp_path):
  _, trained, _, path = run
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.evaluate', f'--saved_model={path}',
       '--dataset=synthetic', '--synthetic_shape=20,20,1',
       '--synthetic_classes=4', '--synthetic_size=128,32',
       f'--output={tmp_path}/e.json', f'--figures={tmp_path}/figs'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'e.json').read_text())
  assert results['accuracy'] == pytest.approx(trained['accuracy'])
  for name in ('reconstructions.png', 'perturbations.png', 'confusion.png'):
    data = (tmp_path / 'figs' / name).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
  bad = subprocess.run([sys.executable, '-m', 'pipeline.evaluate'], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'exactly one of' in bad.stderr


def _given(*argv):
  values = flags.FlagValues()
  evaluate.pipeline_flags.define_flags(values)
  values(['prog', *argv])
  return values


@pytest.mark.parametrize('argv,shown', [
    (['--conv_filters=3'], '--conv_filters=3 (the run has 8)'),
    (['--decoder_units=16,64'], '--decoder_units=16,64 (the run has 16,32)'),
    (['--batch_size=0'], '--batch_size=0 (the run has 8)'),
    (['--eval_split=validation'], '--eval_split=validation (the run has test)'),
    (['--model=baseline_cnn'], '--model=baseline_cnn (the run has capsnet)'),
    (['--learning_rate=0.1', '--routing_iterations=1'],
     '--learning_rate=0.1 (the run has 0.003); --routing_iterations=1 (the '
     'run has 3)'),
    (['--nopool'], '--pool=False (not an option of its model, capsnet)'),
])
def test_training_flags_evaluate_would_ignore_are_refused(run, argv, shown):
  trainer = run[0]
  with pytest.raises(ValueError) as e:
    evaluate.check_ignored_flags(_given(*argv), trainer.config, 'runs/x')
  assert str(e.value).startswith(shown + ' would be ignored: the model '
                                 'scored is the one the run in runs/x')
  assert ('only the data flags, --split, --eval_batch_size and --precision '
          'apply') in str(e.value)


def test_the_runs_own_flags_and_what_evaluate_reads_pass(run):
  cfg = run[0].config
  # Its own settings (its flagfile, say), run control, and what evaluate
  # reads: the data flags, --eval_batch_size and --precision (the one it
  # scores in).
  evaluate.check_ignored_flags(_given(
      '--conv_filters=8', '--decoder_units=16,32', '--batch_size=8',
      '--learning_rate=0.003', '--precision=mixed_bfloat16',
      '--train_steps=1000', '--eval_every=7', '--eval_batch_size=3',
      '--dataset=synthetic',
      '--synthetic_size=20,10', f'--model_dir={cfg.model_dir}',
      '--pool'), cfg, 'x')
  # A SavedModel takes the data flags and --eval_batch_size, and no other.
  evaluate.check_ignored_flags(_given('--eval_batch_size=3',
                                      '--dataset=synthetic'), None)
  with pytest.raises(ValueError, match=r'^--conv_filters, --precision would '
                     r'be ignored: a SavedModel\'s model'):
    evaluate.check_ignored_flags(_given('--conv_filters=8', '--precision=auto',
                                        '--dataset=synthetic'), None)


def test_a_run_scores_in_another_precision(run, monkeypatch):
  # Its variables are float32 in every precision: a float32 run scored in
  # mixed bfloat16 (and back) predicts the same classes, within bf16's
  # rounding of the lengths.
  trainer, trained, model_dir, _ = run
  assert trainer.config.model.precision == 'float32'
  predictor = evaluate.Predictor.from_checkpoint(
      str(model_dir), precision='mixed_bfloat16')
  images = np.random.RandomState(0).rand(16, *predictor.image_shape).astype(
      np.float32)
  lengths, _ = predictor.predict(images)
  reference, _ = evaluate.Predictor.from_checkpoint(str(model_dir)).predict(
      images)
  np.testing.assert_allclose(lengths, reference, atol=0.05)
  # Which precision the command scores in, and what it says.
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  cfg = trainer.config
  bf16_run = dataclasses.replace(cfg, model=dataclasses.replace(
      cfg.model, precision='mixed_bfloat16'))
  warnings = []
  monkeypatch.setattr(evaluate.logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['avx2'])
  monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
  for argv, expected in (([], None), (['--precision=auto'], None),
                         (['--precision=float32'], 'float32')):
    assert evaluate.scoring_precision(_given(*argv), bf16_run, 'r') == expected
  # The run's own bf16, emulated here: said once a scoring, with the way out.
  assert len(warnings) == 2 and all('--precision=float32 scores it' in w
                                    for w in warnings)
  warnings.clear()
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['amx_bf16'])
  assert evaluate.scoring_precision(_given(), bf16_run, 'r') is None
  assert not warnings
  # Under an ISA cap that leaves oneDNN no 16-bit kernels on an AVX-512
  # CPU (it would abort): refused, naming the way out.
  monkeypatch.setattr(hardware, '_cpu_flags', lambda: {'avx512f', 'avx2'})
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  with pytest.raises(ValueError, match=r'^Scoring in mixed_bfloat16, as the '
                     r'run in r trained, cannot run under '
                     r'ONEDNN_MAX_CPU_ISA=AVX2'):
    evaluate.scoring_precision(_given(), bf16_run, 'r')
  assert evaluate.scoring_precision(_given('--precision=float32'), bf16_run,
                                    'r') == 'float32'


def test_the_command_refuses_an_ignored_flag_in_one_line(run):
  _, _, model_dir, path = run
  for source in (f'--model_dir={model_dir}', f'--saved_model={path}'):
    proc = subprocess.run(
        [sys.executable, '-m', 'pipeline.evaluate', source,
         '--conv_filters=3'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert '--conv_filters' in proc.stderr and 'would be ignored' in (
        proc.stderr), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    # One line: not the command's usage text above it.
    assert 'Evaluates a SavedModel' not in proc.stdout + proc.stderr


class _FakePairs:
  """Predicts classes 0 and 1; decodes class c as an image of value c / 10."""
  image_shape = (36, 36, 1)
  num_classes = 10
  has_decoder = True

  def predict(self, images):
    n = len(images)
    lengths = np.zeros([n, 10], np.float32)
    lengths[:, :2] = [0.9, 0.8]
    return lengths, np.zeros([n, 10, 4], np.float32)

  def decode(self, poses, class_ids):
    return np.ones([len(poses), 36, 36, 1], np.float32) * (
        np.asarray(class_ids, np.float32)[:, None, None, None] + 5) / 10


def _pair_source():
  src = sources.open_source(sources.DataSpec(
      dataset='synthetic', synthetic_shape=(28, 28, 1)))
  src.kind = sources.DATASETS['multimnist']
  src.info = src.info.__class__(name='multimnist', image_shape=(36, 36, 1),
                                num_classes=10, split_sizes={},
                                num_targets=2)
  return src


def test_pair_figure_colours_each_object(tmp_path):
  src = _pair_source()
  results = evaluate.evaluate(_FakePairs(), src, 'test', 50)
  paths = evaluate.write_figures(_FakePairs(), src, 'test', results,
                                 str(tmp_path), examples=3)
  assert sorted(os.path.basename(p) for p in paths) == [
      'pairs.png', 'perturbations.png', 'reconstructions.png']
  pairs = tf.io.decode_png(tf.io.read_file(str(tmp_path / 'pairs.png')))
  pairs = pairs.numpy()
  assert pairs.shape[-1] == 3
  # Row 0: tiles are 36*3 px wide plus 2*3 px borders; take tile centres.
  tile = (36 + 2) * 3
  centre = [pairs[tile // 2, c * tile + tile // 2] for c in range(4)]
  red, green, both = centre[1], centre[2], centre[3]
  assert red[0] > 3 * red[1]              # first object (class 0) red
  assert green[1] > 3 * green[0]          # second (class 1) green
  assert both[0] == red[0] and both[1] == green[1]


def test_errors_figure_shows_each_wrong_example_as_true_and_predicted(
    tmp_path):
  class AlwaysZero(_FakePairs):
    image_shape = (28, 28, 1)

    def predict(self, images):
      lengths = np.zeros([len(images), 10], np.float32)
      lengths[:, 0] = 0.9
      return lengths, np.zeros([len(images), 10, 4], np.float32)

    def decode(self, poses, class_ids):
      return np.ones([len(poses), 28, 28, 1], np.float32) * (
          np.asarray(class_ids, np.float32)[:, None, None, None] + 1) / 11

  src = sources.open_source(sources.DataSpec(
      dataset='synthetic', synthetic_shape=(28, 28, 1)))
  results = evaluate.evaluate(AlwaysZero(), src, 'test', 7)
  wrong = results['wrong']
  assert len(wrong) >= 6 and all(guess == 0 for _, _, guess in wrong)
  paths = evaluate.write_figures(AlwaysZero(), src, 'test', results,
                                 str(tmp_path), max_errors=5)
  assert 'errors.png' in [os.path.basename(p) for p in paths]
  grid = tf.io.decode_png(tf.io.read_file(str(tmp_path / 'errors.png')))
  tile = (28 + 2) * 3
  # Five examples, four a row, three tiles each: 2 rows of 12 tiles.
  assert grid.shape == (2 * tile, 12 * tile, 1)
  grid = grid.numpy()[..., 0]
  def centre(example, which):
    row, col = divmod(example * 3 + which, 12)
    return int(grid[row * tile + tile // 2, col * tile + tile // 2])
  for example in range(5):
    label = wrong[example][1]
    assert abs(centre(example, 1) - round(255 * (label + 1) / 11)) <= 1
    assert abs(centre(example, 2) - round(255 / 11)) <= 1
  # The inputs are the wrong examples' own images, in split order.
  images = np.concatenate([b['image'].numpy() for b in
                           input_pipeline.make_dataset(src, 'test', 50, False,
                                                       deterministic=True)])
  first = images[wrong[0][0], 14, 14, 0]
  assert abs(centre(0, 0) - round(255 * np.clip(first, 0, 1))) <= 1


def test_models_without_decoder_get_the_confusion_matrix_only(tmp_path):
  class NoDecoder(_FakePairs):
    image_shape = (28, 28, 1)
    has_decoder = False

  src = sources.open_source(sources.DataSpec(
      dataset='synthetic', synthetic_shape=(28, 28, 1)))
  results = evaluate.evaluate(NoDecoder(), src, 'test', 50)
  paths = evaluate.write_figures(NoDecoder(), src, 'test', results,
                                 str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['confusion.png']


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
