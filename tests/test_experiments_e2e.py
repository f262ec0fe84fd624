"""End to end: the affine experiment's commands one by one, tiny.

Its flagfiles run with the data pointed at a tiny IDX directory, tiny
CapsNet sizes and two steps: make_affnist, train CapsNet and the baseline,
evaluate each on the translated and the affNIST-style test sets. (The
other experiments run through `pipeline.experiment` in test_experiment.py.)
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from helpers import write_idx_dir

TINY = ['--conv_filters=8', '--primary_channels=4', '--primary_dim=4',
        '--class_dim=4', '--decoder_units=16,32']


def _run(module, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion')
  write_idx_dir(str(directory), n_train=60, n_test=20)
  return directory


def _train(flagfile, base, model_dir):
  return _run('pipeline.train', f'--flagfile={flagfile}',
              f'--data_dir={base}', '--validation_size=10',
              '--train_steps=2', '--steps_per_loop=1', '--batch_size=4',
              '--eval_batch_size=10', '--eval_every=2', '--checkpoint_every=2',
              f'--model_dir={model_dir}', '--export_dir=', *TINY)


def test_affine_generalisation_chain(base, tmp_path):
  affine_dir = tmp_path / 'affine'
  _run('pipeline.make_affnist', f'--data_dir={base}',
       f'--output_dir={affine_dir}')
  for name, flagfile in (
      ('capsnet', 'configs/affnist_fashion_mnist.flags'),
      ('baseline', 'configs/affnist_fashion_mnist_baseline.flags')):
    model_dir = tmp_path / name
    out = _train(flagfile, base, model_dir)
    assert 'validation accuracy' in out.stdout
    config = json.loads((model_dir / 'config.json').read_text())
    assert config['model']['name'] == ('baseline_cnn' if name == 'baseline'
                                       else 'capsnet')
    assert config['data']['canvas_size'] == 40
    for extra, examples in (([], 20), ([f'--affnist_dir={affine_dir}'], 20)):
      _run('pipeline.evaluate', f'--model_dir={model_dir}', '--split=test',
           f'--output={tmp_path}/{name}.json', *extra)
      result = json.loads((tmp_path / f'{name}.json').read_text())
      assert result['examples'] == examples
      assert 0.0 <= result['accuracy'] <= 1.0
