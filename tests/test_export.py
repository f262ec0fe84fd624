"""Tests of pipeline.export: versions, atomic writes, and a fresh-process load."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import export
from pipeline import trainer as trainer_lib

from helpers import tiny_config

# Runs in a fresh interpreter that imports no project code.
_LOAD_SCRIPT = '''
import sys, numpy as np, tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2])
loaded = tf.saved_model.load(path)
out = loaded.signatures['serving_default'](images=tf.constant(data['images']))
np.testing.assert_allclose(out['probabilities'].numpy(), data['lengths'],
                           atol=1e-5)
np.testing.assert_allclose(out['poses'].numpy(), data['poses'], atol=1e-5)
np.testing.assert_array_equal(out['classes'].numpy(), data['classes'])
assert not any(m.startswith('pipeline') for m in sys.modules)
print('LOADED OK')
'''


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('run')
  trainer = trainer_lib.Trainer(tiny_config(model_dir, train_steps=2))
  trainer.train()
  return trainer, model_dir


def test_export_loads_in_fresh_process_and_agrees(trained, tmp_path):
  trainer, model_dir = trained
  path = export.export_from_checkpoint(str(model_dir), str(tmp_path / 'm'))
  assert path == str(tmp_path / 'm' / '1')
  assert tf.saved_model.contains_saved_model(path)
  images = np.random.default_rng(0).uniform(size=[5, 20, 20, 1]).astype(
      np.float32)
  out = trainer.model(images, training=False)
  np.savez(tmp_path / 'ref.npz', images=images,
           lengths=out['lengths'].numpy(), poses=out['poses'].numpy(),
           classes=np.argmax(out['lengths'].numpy(), -1))
  env = dict(os.environ, PYTHONPATH='')
  proc = subprocess.run(
      [sys.executable, '-c', _LOAD_SCRIPT, path, str(tmp_path / 'ref.npz')],
      capture_output=True, text=True, cwd=str(tmp_path), env=env,
      timeout=300)
  assert 'LOADED OK' in proc.stdout, proc.stderr[-3000:]


def test_versions_increment_and_no_temporary_left(trained, tmp_path):
  _, model_dir = trained
  base = tmp_path / 'versions'
  os.makedirs(base / '7')
  (base / '7' / 'x').write_text('taken')
  path = export.export_from_checkpoint(str(model_dir), str(base))
  assert os.path.basename(path) == '8'
  assert sorted(os.listdir(base)) == ['7', '8']
  assert (base / '7' / 'x').read_text() == 'taken'


def test_batch_dimension_is_dynamic_and_shape_checked(trained, tmp_path):
  _, model_dir = trained
  loaded = tf.saved_model.load(
      export.export_from_checkpoint(str(model_dir), str(tmp_path / 'd')))
  fn = loaded.signatures['serving_default']
  for batch in (1, 3):
    assert fn(images=tf.zeros([batch, 20, 20, 1]))['classes'].shape == (batch,)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\?,20,20,1'):
    fn(images=tf.zeros([2, 28, 28, 1]))


def test_missing_run_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a model directory'):
    export.export_from_checkpoint(str(tmp_path), str(tmp_path / 'e'))
