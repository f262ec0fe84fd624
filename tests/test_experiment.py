"""Tests of pipeline.research.experiment: one results row end to end, tiny."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.core import children
from pipeline.research import experiment

from conftest import REPO
from helpers import read_until, write_idx_dir

TINY = ['--conv_filters=8', '--primary_channels=4', '--primary_dim=4',
        '--class_dim=4', '--decoder_units=16,32']


def test_flagfile_value_follows_includes(tmp_path):
  (tmp_path / 'base.flags').write_text('--model_dir=a\n--data_dir=/d\n')
  (tmp_path / 'top.flags').write_text(
      f'# comment\n--flagfile={tmp_path}/base.flags\n--model_dir=b\n')
  top = str(tmp_path / 'top.flags')
  assert experiment.flagfile_value(top, 'model_dir') == 'b'
  assert experiment.flagfile_value(top, 'data_dir') == '/d'
  assert experiment.flagfile_value(top, 'seed') is None
  assert experiment.setting(top, ['--data_dir=/x', '--seed=1'],
                            'data_dir') == '/x'
  for name, spec in experiment.EXPERIMENTS.items():
    for flagfile in spec.flagfiles.values():
      path = os.path.join(REPO, flagfile)
      assert os.path.exists(path), (name, flagfile)
      assert experiment.flagfile_value(path, 'model_dir').startswith('runs/')


def test_markdown_row():
  row = {'experiment': 'affine', 'models': {
      'capsnet': {'steps': 10, 'wall_seconds': 600.0, 'tests': {
          'translated': {'accuracy': 0.9}, 'affnist_style': {'accuracy': 0.5}}},
      'baseline_cnn': {'steps': 5, 'wall_seconds': None,
                       'tests': {'translated': {'accuracy': 0.25}}}}}
  assert experiment.markdown_row(row) == (
      '| affine | capsnet: translated 90.00%, affnist_style 50.00% (10 steps, '
      '10 min); baseline_cnn: translated 25.00% |')


def test_overlap_experiment_command(tmp_path):
  base = tmp_path / 'fashion'
  write_idx_dir(str(base), n_train=60, n_test=20)
  extra = [f'--data_dir={base}', '--validation_size=10', '--batch_size=4',
           '--eval_batch_size=10', '--steps_per_loop=1', '--eval_every=2',
           '--checkpoint_every=2', '--export_dir=', *TINY]
  command = [sys.executable, '-m', 'pipeline.research.experiment',
             '--experiment=overlap', '--train_steps=2',
             '--baseline_train_steps=4', f'--runs_dir={tmp_path}/runs',
             f'--figures_dir={tmp_path}/figs', f'--output={tmp_path}/row.json'
             ] + [f'--train_flag={flag}' for flag in extra]
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                        timeout=900,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| overlap | capsnet: pairs' in proc.stdout
  row = json.loads((tmp_path / 'row.json').read_text())
  assert row['command'].startswith('python -m pipeline.research.experiment')
  assert 'cores' in row['machine']
  caps, cnn = row['models']['capsnet'], row['models']['baseline_cnn']
  assert caps['steps'] == 2 and cnn['steps'] == 4
  assert caps['eval_step'] == 2
  assert caps['wall_seconds'] > 0 and caps['eval_split'] == 'validation'
  assert caps['tests']['pairs']['examples'] == 20
  assert 'both_digits_accuracy' in cnn['tests']['pairs']
  assert os.path.exists(tmp_path / 'figs' / 'capsnet' / 'pairs.png')
  assert not os.path.exists(tmp_path / 'figs' / 'baseline_cnn' / 'pairs.png')
  # The runs went where --runs_dir said, not into the configs' runs/.
  assert os.path.exists(tmp_path / 'runs' / 'multimnist_fashion_mnist' /
                        'checkpoints')
  # Scoring again without training reuses the checkpoints.
  again = subprocess.run(command[:4] + ['--skip_training',
                                        f'--runs_dir={tmp_path}/runs',
                                        f'--output={tmp_path}/again.json'],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  rescored = json.loads((tmp_path / 'again.json').read_text())['models']
  assert rescored['capsnet']['steps'] == 2
  assert (rescored['capsnet']['tests']['pairs']['accuracy'] ==
          caps['tests']['pairs']['accuracy'])


def _start_accuracy_experiment(tmp_path):
  """The `accuracy` experiment on tiny data and a tiny model, set to train
  far longer than a test waits; stdout and stderr merged."""
  data = tmp_path / 'fashion'
  write_idx_dir(str(data), n_train=60, n_test=20)
  extra = [f'--data_dir={data}', '--validation_size=10', '--batch_size=4',
           '--eval_batch_size=10', '--steps_per_loop=1', '--log_every=1',
           '--eval_every=100000', '--checkpoint_every=100000',
           '--export_dir=', *TINY]
  command = [sys.executable, '-m', 'pipeline.research.experiment',
             '--experiment=accuracy', '--train_steps=100000',
             f'--runs_dir={tmp_path}/runs', f'--output={tmp_path}/row.json'
             ] + [f'--train_flag={flag}' for flag in extra]
  return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
                                   PYTHONUNBUFFERED='1'))


@pytest.mark.parametrize('sig, status', [(signal.SIGTERM, 143),
                                         (signal.SIGINT, 130)])
def test_a_signal_to_the_experiment_stops_its_run_cleanly_and_scores_nothing(
    tmp_path, sig, status):
  proc = _start_accuracy_experiment(tmp_path)
  try:
    read_until(proc, ' step 3/')
    # To the experiment's process alone, as `kill` or a scheduler sends it;
    # its training run must hear it once and be waited for (not killed a
    # moment later, which a Ctrl-C during `subprocess.run` does).
    proc.send_signal(sig)
    out = proc.communicate(timeout=300)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == status, out[-3000:]
  name = signal.Signals(sig).name
  stopped = int(re.search(rf'Stopped by {name} at step (\d+);', out).group(1))
  assert stopped >= 3
  checkpoints = tmp_path / 'runs' / 'fashion_mnist_accuracy' / 'checkpoints'
  assert tf.train.latest_checkpoint(str(checkpoints)).endswith(f'ckpt-{stopped}')
  assert 'nothing was scored and no row written' in out
  assert 'Traceback' not in out
  assert not (tmp_path / 'row.json').exists()


@pytest.mark.parametrize('code, raised, message', [
    ('import sys; sys.exit(143)', experiment.TrainingStopped,
     'SIGTERM: the training run of x.flags stopped before its end'),
    ('import sys; sys.exit(130)', experiment.TrainingStopped,
     'SIGINT: the training run'),
    ('import os, signal; os.kill(os.getpid(), signal.SIGKILL)', RuntimeError,
     'was killed by SIGKILL'),
    ('import sys; sys.exit(1)', RuntimeError, r'failed \(exit 1\)'),
    ('pass', None, None)])
def test_how_a_training_run_ended_decides_what_the_experiment_does(
    monkeypatch, code, raised, message):
  # A run stopped by a signal sent to it directly (not through the
  # experiment) must not be scored as if it had finished.
  real_popen = subprocess.Popen
  monkeypatch.setattr(children.subprocess, 'Popen', lambda command, **kw:
                      real_popen([sys.executable, '-c', code], **kw))
  if raised is None:
    experiment.train('x.flags')
    return
  with pytest.raises(raised, match=message) as caught:
    experiment.train('x.flags')
  if raised is experiment.TrainingStopped:
    assert caught.value.status == int(code.rsplit('(', 1)[1].rstrip(')'))


def _experiment_where_running_does(body, tmp_path):
  """`python -m pipeline.research.experiment --experiment=accuracy` with
  its `run_experiment` replaced by one whose body is `body`."""
  script = (
      'from absl import app\n'
      'from pipeline.research import experiment\n'
      'def replaced(*args, **kwargs):\n'
      f'  {body}\n'
      'experiment.run_experiment = replaced\n'
      'experiment.define_flags()\n'
      'app.run(experiment.main)\n')
  return subprocess.run(
      [sys.executable, '-c', script, '--experiment=accuracy',
       f'--output={tmp_path}/row.json'], cwd=REPO, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def test_ctrl_c_while_scoring_writes_no_row_and_no_traceback(tmp_path):
  # Scoring is the experiment's own work (no child to pass the signal to):
  # a Ctrl-C there ends it in one line, exit 130.
  proc = _experiment_where_running_does('raise KeyboardInterrupt', tmp_path)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert 'Interrupted while scoring; no row written' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'row.json').exists()


def test_a_failed_training_run_ends_the_experiment_in_one_line(tmp_path):
  proc = _experiment_where_running_does(
      'raise RuntimeError("Training with x.flags failed (exit 1); its output '
      'is above.")', tmp_path)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      'Training with x.flags failed (exit 1); its output is above.')
  # Not the experiment's usage text: the run's own output says what failed.
  assert 'Runs one results experiment' not in proc.stdout + proc.stderr
  assert not (tmp_path / 'row.json').exists()


def test_unknown_model_is_refused_before_any_work():
  with pytest.raises(ValueError, match='has no model'):
    experiment.run_experiment('accuracy', models=['baseline_cnn'])


def test_affine_mnist_makes_its_test_set_from_mnist_before_scoring(
    tmp_path):
  digits = tmp_path / 'mnist'
  write_idx_dir(str(digits), n_train=20, n_test=6)
  affine_dir = tmp_path / 'affine'
  # What a maker killed before it wrote the images leaves: made again.
  affine_dir.mkdir()
  (affine_dir / 't10k-labels-idx1-ubyte.gz').write_bytes(b'')
  # No run to score yet: the set is made first, then the missing
  # checkpoint is named.
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    experiment.run_experiment(
        'affine_mnist', skip_training=True, runs_dir=str(tmp_path / 'runs'),
        affnist_dir=str(affine_dir), extra=[f'--data_dir={digits}'])
  record = json.loads((affine_dir / 'generation.json').read_text())
  assert record['source'] == {'dataset': 'mnist', 'data_source': 'idx',
                              'data_dir': str(digits), 'split': 'test'}
  assert record['examples'] == 6 and record['canvas_size'] == 40
  # A directory of real affNIST .mat files is read, never written over.
  real = tmp_path / 'real_affnist'
  real.mkdir()
  (real / 'test.mat').write_bytes(b'not read here')
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    experiment.run_experiment(
        'affine_mnist', skip_training=True, runs_dir=str(tmp_path / 'runs'),
        affnist_dir=str(real), extra=[f'--data_dir={digits}'])
  assert os.listdir(real) == ['test.mat']


def test_affine_mnist_runs_stop_at_matched_validation_accuracy():
  for flagfile in experiment.EXPERIMENTS['affine_mnist'].flagfiles.values():
    path = os.path.join(REPO, flagfile)
    assert experiment.flagfile_value(path, 'target_accuracy') == '0.99'
    assert experiment.flagfile_value(path, 'eval_split') == 'validation'


def fake_runs(monkeypatch, accuracies):
  """Replaces training and scoring: each run's last validation accuracy is
  `accuracies[<its model_dir name>]`. Returns `({flagfile name: the extra
  flags it trained with}, ['train' / 'score' in call order])`."""
  trained, calls = {}, []
  monkeypatch.setattr(experiment, 'train', lambda flagfile, steps, extra: (
      calls.append('train'),
      trained.setdefault(os.path.basename(flagfile), list(extra))))
  monkeypatch.setattr(experiment, 'run_summary', lambda model_dir: {
      'steps': 10, 'wall_seconds': 1.0, 'eval_step': 10,
      'eval_split': 'validation',
      'eval_accuracy': accuracies[os.path.basename(model_dir)]})
  monkeypatch.setattr(experiment, 'score',
                      lambda *args: calls.append('score') or {})
  return trained, calls


def test_overlap_mnist_baseline_trains_to_capsnets_validation_accuracy(
    tmp_path, monkeypatch):
  trained, calls = fake_runs(monkeypatch, {
      'multimnist_mnist': 0.8125, 'multimnist_mnist_baseline': 0.82})
  runs = str(tmp_path / 'runs')
  row = experiment.run_experiment('overlap_mnist', runs_dir=runs)
  # Both train before either is scored (a resumed experiment goes straight
  # back to the unfinished training).
  assert calls == ['train', 'train', 'score', 'score']
  assert not any(f.startswith('--target_accuracy') for f in
                 trained['multimnist_mnist.flags'])
  assert trained['multimnist_mnist_baseline.flags'][-1] == (
      '--target_accuracy=0.8125')
  assert row['models']['baseline_cnn']['target_accuracy'] == 0.8125
  assert 'target_accuracy' not in row['models']['capsnet']
  # Only the baseline: CapsNet's earlier run still sets the target.
  trained.clear()
  experiment.run_experiment('overlap_mnist', runs_dir=runs,
                            models=['baseline_cnn'])
  assert list(trained) == ['multimnist_mnist_baseline.flags']
  assert '--target_accuracy=0.8125' in trained[
      'multimnist_mnist_baseline.flags']
  # A target the user sets wins; scoring alone trains nothing.
  trained.clear()
  row = experiment.run_experiment('overlap_mnist', runs_dir=runs,
                                  extra=['--target_accuracy=0.5'])
  assert trained['multimnist_mnist_baseline.flags'].count(
      '--target_accuracy=0.5') == 1
  assert not any(f == '--target_accuracy=0.8125' for flags in
                 trained.values() for f in flags)
  assert 'target_accuracy' not in row['models']['baseline_cnn']
  trained.clear()
  experiment.run_experiment('overlap_mnist', runs_dir=runs,
                            skip_training=True)
  assert not trained


def test_affine_mnist_baseline_matches_capsnet_over_its_own_target(
    tmp_path, monkeypatch):
  trained, _ = fake_runs(monkeypatch, {'affnist_mnist': 0.9912,
                                       'affnist_mnist_baseline': 0.9912})
  experiment.run_experiment('affine_mnist', runs_dir=str(tmp_path),
                            affnist_dir=str(tmp_path))
  # The flagfile's 0.99 holds for CapsNet; the CNN gets what CapsNet reached.
  assert '--target_accuracy=0.9912' in trained[
      'affnist_mnist_baseline.flags']
  assert not any(f.startswith('--target_accuracy') for f in
                 trained['affnist_mnist.flags'])


def test_overlap_mnist_configs_read_mnist_and_validate_on_held_back_pairs():
  spec = experiment.EXPERIMENTS['overlap_mnist']
  assert spec.match and experiment.EXPERIMENTS['affine_mnist'].match
  assert not experiment.EXPERIMENTS['overlap'].match
  for flagfile in spec.flagfiles.values():
    path = os.path.join(REPO, flagfile)
    for name, value in (('dataset', 'multimnist'), ('base_dataset', 'mnist'),
                        ('data_source', 'idx'), ('eval_split', 'validation'),
                        ('validation_size', '5000'), ('batch_size', '32')):
      assert experiment.flagfile_value(path, name) == value, (flagfile, name)


def test_model_flags_go_only_to_models_that_take_them():
  extra = ['--conv_filters=8', '--nouse_decoder', '--routing_iterations=2',
           '--batch_size=4']
  assert experiment.flags_for_model('capsnet', extra) == extra
  assert experiment.flags_for_model('baseline_cnn', extra) == ['--batch_size=4']
  assert experiment.flags_for_model('matrix_capsnet', extra) == [
      '--routing_iterations=2', '--batch_size=4']


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
