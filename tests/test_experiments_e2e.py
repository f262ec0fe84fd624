"""End to end: the affine experiment's commands one by one, tiny.

Its flagfiles run with the data pointed at a tiny IDX directory, tiny
CapsNet sizes and two steps: make_affnist, train CapsNet and the baseline,
evaluate each on the translated and an affNIST-style test set, then score
both with `pipeline.research.experiment --skip_training`. (test_experiment.py runs
the overlap experiment through `pipeline.research.experiment` alone.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.data import idx

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
              f'--model_dir={model_dir}', '--export_dir=',
              # The baseline takes none of CapsNet's size flags.
              *([] if 'baseline' in flagfile else TINY))


def test_affine_generalisation_chain(base, tmp_path):
  affine_dir = tmp_path / 'affine'
  _run('pipeline.research.make_affnist', f'--data_dir={base}',
       f'--output_dir={affine_dir}')
  # A second, smaller set shows which one evaluate read.
  odd_dir = tmp_path / 'odd'
  idx.write_idx_split(str(odd_dir), 'test', np.zeros([7, 40, 40], np.uint8),
                      np.arange(7))
  runs = tmp_path / 'runs'
  for name, flagfile in (
      ('affnist_fashion_mnist', 'configs/affnist_fashion_mnist.flags'),
      ('affnist_fashion_mnist_baseline',
       'configs/affnist_fashion_mnist_baseline.flags')):
    model_dir = runs / name
    out = _train(flagfile, base, model_dir)
    assert 'validation accuracy' in out.stdout
    config = json.loads((model_dir / 'config.json').read_text())
    assert config['model']['name'] == ('baseline_cnn' if 'baseline' in name
                                       else 'capsnet')
    assert config['data']['canvas_size'] == 40
    for extra, examples in (([], 20), ([f'--affnist_dir={odd_dir}'], 7)):
      _run('pipeline.evaluate', f'--model_dir={model_dir}', '--split=test',
           f'--output={tmp_path}/{name}.json', *extra)
      result = json.loads((tmp_path / f'{name}.json').read_text())
      assert result['examples'] == examples
      assert 0.0 <= result['accuracy'] <= 1.0
  # The experiment command scores both runs on both sets, figures for each.
  _run('pipeline.research.experiment', '--experiment=affine', '--skip_training',
       f'--runs_dir={runs}', f'--affnist_dir={affine_dir}',
       f'--figures_dir={tmp_path}/figs', f'--output={tmp_path}/row.json')
  row = json.loads((tmp_path / 'row.json').read_text())
  for model in ('capsnet', 'baseline_cnn'):
    tests = row['models'][model]['tests']
    assert sorted(tests) == ['affnist_style', 'translated']
    assert tests['affnist_style']['examples'] == 20
  figs = tmp_path / 'figs'
  assert (figs / 'capsnet' / 'reconstructions.png').exists()
  assert (figs / 'capsnet' / 'affnist_style' / 'reconstructions.png').exists()
  assert (figs / 'baseline_cnn' / 'affnist_style' / 'confusion.png').exists()


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
