"""End to end: the real `python -m pipeline.train` command in a subprocess."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from pipeline.core import summaries

from conftest import REPO


def _train(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-m', 'pipeline.train', *args], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=timeout)


def _tensor_tags(logdir):
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return set(acc.Tags()['tensors'])


def test_smoke_config_on_two_replicas(tmp_path):
  model_dir, export_dir = tmp_path / 'run', tmp_path / 'exports'
  proc = _train('--flagfile=configs/smoke.flags', '--cpu_devices=2',
                f'--model_dir={model_dir}', f'--export_dir={export_dir}',
                '--train_steps=20', '--eval_every=10', '--checkpoint_every=10',
                '--log_every=10')
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  assert 'device:CPU:0' in out and 'device:CPU:1' in out
  assert 'step 20/20' in out and 'test accuracy' in out
  assert tf.train.latest_checkpoint(str(model_dir / 'checkpoints')).endswith(
      'ckpt-20')
  train_tags = _tensor_tags(model_dir / 'train')
  assert set(summaries.SCALAR_TAGS) <= train_tags
  eval_tags = _tensor_tags(model_dir / 'eval')
  assert set(summaries.HISTOGRAM_TAGS) <= eval_tags
  assert {summaries.IMAGE_TAG, 'accuracy', 'error_rate'} <= eval_tags
  metrics = json.loads((model_dir / 'metrics.json').read_text())
  assert [h['step'] for h in metrics['history']] == [10, 20]
  assert metrics['latest']['examples'] == 200
  assert '--train_steps=20' in (model_dir / 'flags.txt').read_text()
  assert tf.saved_model.contains_saved_model(str(export_dir / '1'))
  loaded = tf.saved_model.load(str(export_dir / '1'))
  probs = loaded.signatures['serving_default'](
      images=tf.zeros([2, 28, 28, 1]))['probabilities']
  assert probs.shape == (2, 10)

  # The same command again resumes at the end and trains no further step.
  again = _train('--flagfile=configs/smoke.flags', '--cpu_devices=2',
                 f'--model_dir={model_dir}', '--export_dir=',
                 '--train_steps=20',
                 '--eval_every=10', '--checkpoint_every=10', '--log_every=10')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from' in again.stderr and 'at step 20' in again.stderr

  # A resume with other settings is refused in one line before the model
  # is built and its formulations probed.
  changed = _train('--flagfile=configs/smoke.flags', '--cpu_devices=2',
                   f'--model_dir={model_dir}', '--export_dir=',
                   '--train_steps=30', '--routing_iterations=1')
  assert changed.returncode == 1, changed.stderr[-3000:]
  assert ('holds a run with other settings (--routing_iterations was 3, '
          'now 1)') in changed.stderr
  assert 'Autotune' not in changed.stderr
  assert 'MirroredStrategy' not in changed.stderr

  # It goes on in the other of float32 and mixed bfloat16 (a job resumed
  # where its 16-bit math is emulated): from its step, weights and
  # optimizer state restored, the new precision recorded.
  saved = json.loads((model_dir / 'config.json').read_text())
  other = ('float32' if saved['model']['precision'] == 'mixed_bfloat16'
           else 'mixed_bfloat16')
  switched = _train('--flagfile=configs/smoke.flags', '--cpu_devices=2',
                    f'--model_dir={model_dir}', '--export_dir=',
                    '--train_steps=24', '--eval_every=10',
                    '--checkpoint_every=10', '--log_every=2',
                    f'--precision={other}')
  assert switched.returncode == 0, switched.stderr[-3000:]
  assert (f"--precision changed from '{saved['model']['precision']}' to "
          f"'{other}'") in switched.stderr
  assert 'at step 20' in switched.stderr and 'step 24/24' in switched.stderr
  assert json.loads((model_dir / 'config.json').read_text())['model'][
      'precision'] == other

  # A warm start from it into a model of other options is refused in one
  # line, leaving no new model or export directory behind.
  other = _train('--flagfile=configs/smoke.flags', '--class_dim=6',
                 f'--warm_start={model_dir}', f'--model_dir={tmp_path}/r',
                 f'--export_dir={tmp_path}/e')
  assert other.returncode == 1, other.stderr[-3000:]
  assert 'does not fit this model' in other.stderr
  assert 'Traceback' not in other.stderr
  assert not os.path.exists(tmp_path / 'r')
  assert not os.path.exists(tmp_path / 'e')


@pytest.mark.parametrize('args,message', [
    (['--batch_size=0'], '--batch_size must be >= 1'),
    (['--dataset=imagenet'], 'flag --dataset=imagenet'),
    (['--routing_iterations=0'], '--routing_iterations must be >= 1'),
    (['--flagfile=configs/none.flags'], 'configs/none.flags'),
    (['--warm_start=/nowhere/ckpt-3'], 'neither a directory nor a checkpoint'),
    (['--warm_start=/'], '--warm_start=/ holds no checkpoint'),
    (['--dataset=mnist', '--data_source=idx', '--data_dir=/nowhere'],
     'IDX data directory /nowhere does not exist'),
])
def test_bad_flags_stop_before_work(tmp_path, args, message):
  proc = _train(f'--model_dir={tmp_path}/r', f'--export_dir={tmp_path}/e',
                *args, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  # The refusal alone, not the command's usage text above it.
  assert 'Trains a capsule model' not in proc.stdout + proc.stderr
  # Nothing made: not even the model or export directory.
  assert not os.path.exists(tmp_path / 'r')
  assert not os.path.exists(tmp_path / 'e')



@pytest.mark.parametrize('kind', ['oserror', 'tensorflow'])
def test_a_full_disk_mid_run_is_one_line_naming_the_fix(tmp_path,
                                                       monkeypatch, kind):
  import errno  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from pipeline import train  # pylint: disable=g-import-not-at-top
  from pipeline.core import controller as controller_lib  # pylint: disable=g-import-not-at-top

  def full(self):
    if kind == 'tensorflow':
      # What a checkpoint save on a full disk raises: not an OSError.
      raise tf.errors.ResourceExhaustedError(
          None, None, f'{tmp_path}/checkpoints/ckpt-2_temp/part-00000-of-'
          '00001.data-00000-of-00001.tempstate; No space left on device')
    raise OSError(errno.ENOSPC, 'No space left on device',
                  str(tmp_path / 'checkpoints' / 'ckpt-2_temp'))

  monkeypatch.setattr(controller_lib.Controller, 'train', full)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(['train'])
  with flagsaver.flagsaver(dataset='synthetic', synthetic_shape=['20', '20',
                                                                 '1'],
                           synthetic_size=['16', '8'], conv_filters=8,
                           primary_channels=4, class_dim=4,
                           decoder_units=['8', '8'], batch_size=8,
                           strategy='one_device',
                           model_dir=str(tmp_path), export_dir=''):
    with pytest.raises(SystemExit) as e:
      train.main(['train'])
  message = str(e.value.code)
  where = (f'{tmp_path}/checkpoints/ckpt-2_temp' if kind == 'oserror' else
           str(tmp_path))
  assert message.startswith(f'Error: writing {where} failed (No space left '
                            'on device).')
  assert 'run the same command: it resumes' in message



def test_the_console_is_quiet_unless_asked(tmp_path):
  args = ['--flagfile=configs/smoke.flags', '--train_steps=2',
          '--steps_per_loop=2', '--log_every=2', '--eval_every=2',
          '--checkpoint_every=2', f'--export_dir={tmp_path}/e']
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  quiet = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', *args,
       f'--model_dir={tmp_path}/q'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=600)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  out = quiet.stdout + quiet.stderr
  for chatter in ('cuInit', 'oneDNN', 'cuda drivers', 'E0000', 'I0000',
                  'Using MirroredStrategy', 'Sharding callback',
                  'Assets written', 'absl::InitializeLog'):
    assert chatter not in out, chatter
  for own in ('MirroredStrategy over 1 replica(s)', 'step 2/2',
              'eval step 2: test accuracy', 'Exported SavedModel to'):
    assert own in out, own
  if not os.path.exists('/dev/nvidia0'):
    # The device line says why the run is on the CPU.
    assert 'no GPU is visible' in out
  # The user's own setting wins.
  loud = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', *args,
       f'--model_dir={tmp_path}/l'], cwd=REPO,
      env=dict(env, TF_CPP_MIN_LOG_LEVEL='0'), capture_output=True, text=True,
      timeout=600)
  assert loud.returncode == 0 and 'oneDNN' in loud.stderr


SHARED_MNIST = os.path.join(REPO, '..', 'shared', 'data', 'mnist')


@pytest.mark.skipif(
    not os.path.exists(os.path.join(SHARED_MNIST,
                                    'train-images-idx3-ubyte.gz')),
    reason=f'the MNIST IDX files are not at {SHARED_MNIST} (they are '
           'beside the checkout on the project machine; see '
           '../shared/data/README.md)')
def test_headline_flagfile_on_the_real_mnist_idx_files(tmp_path):
  # The paper's flagfile on the real MNIST files, read offline through the
  # IDX source; a narrow model and a few steps keep it quick.
  model_dir = tmp_path / 'run'
  proc = _train('--flagfile=configs/mnist.flags', '--data_source=idx',
                f'--data_dir={SHARED_MNIST}', f'--model_dir={model_dir}',
                '--export_dir=', '--conv_filters=16', '--primary_channels=4',
                '--decoder_units=32,32', '--train_steps=4',
                '--steps_per_loop=2', '--eval_every=4', '--log_every=2',
                '--checkpoint_every=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(model_dir / 'info.json') as f:
    info = json.load(f)
  assert info['split_sizes'] == {'train': 60000, 'test': 10000}
  assert info['image_shape'] == [28, 28, 1]
  with open(model_dir / 'metrics.json') as f:
    latest = json.load(f)['latest']
  assert latest['step'] == 4 and latest['split'] == 'test'
  assert latest['examples'] == 10000


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
