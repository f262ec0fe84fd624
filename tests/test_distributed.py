"""Multi-process tests: MultiWorkerMirroredStrategy on localhost (training,
and a resume), and resume across fresh processes on 1-3 replicas, each
ending with the weights of a straight run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO

TINY = ['--flagfile=configs/smoke.flags', '--conv_filters=8',
        '--primary_channels=4', '--class_dim=4', '--decoder_units=16,32',
        '--synthetic_shape=20,20,1', '--synthetic_size=128,32',
        '--batch_size=8', '--eval_batch_size=16', '--steps_per_loop=2',
        '--log_every=2']


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.update(extra)
  return env


def _train_workers(model_dir, steps, extra=(), export_dir=''):
  """Trains on 2 worker processes on localhost; returns their logs,
  the chief's first."""
  ports = _free_ports(2)
  cluster = {'worker': [f'localhost:{p}' for p in ports]}
  procs = []
  for index in range(2):
    tf_config = json.dumps({'cluster': cluster,
                            'task': {'type': 'worker', 'index': index}})
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'pipeline.train', *TINY,
         '--strategy=multi_worker', f'--train_steps={steps}', *extra,
         f'--model_dir={model_dir}', f'--export_dir={export_dir}'],
        cwd=REPO, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


def test_two_worker_multi_worker_mirrored(tmp_path):
  model_dir, export_dir = tmp_path / 'run', tmp_path / 'exports'
  outputs = _train_workers(model_dir, 4, ['--eval_every=4',
                                          '--checkpoint_every=4'],
                           export_dir=export_dir)
  # Both workers trained in sync; only the chief (worker 0) wrote summaries,
  # metrics and the export.
  assert 'step 4/4' in outputs[0] and 'step 4/4' in outputs[1]
  assert 'Exported SavedModel' in outputs[0]
  assert 'Exported SavedModel' not in outputs[1]
  assert sorted(os.listdir(export_dir)) == ['1']
  assert os.path.isdir(model_dir / 'train') and os.path.isdir(model_dir / 'eval')
  assert not os.path.exists(model_dir / '.worker-1' / 'metrics.json')
  metrics = json.loads((model_dir / 'metrics.json').read_text())
  assert metrics['latest']['examples'] == 32


def _weights(model_dir):
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(model_dir / 'checkpoints')))
  return {k: reader.get_tensor(k)
          for k in reader.get_variable_to_shape_map()
          if k.startswith('model/')}


def _assert_same_weights(straight_dir, resumed_dir):
  straight, resumed = _weights(straight_dir), _weights(resumed_dir)
  assert straight.keys() == resumed.keys() and len(straight) > 5
  for key in straight:
    np.testing.assert_allclose(straight[key], resumed[key], atol=1e-6,
                               err_msg=key)


@pytest.mark.parametrize('replicas', [1, 2, 3])
def test_resume_in_fresh_process_matches_straight_run(tmp_path, replicas):
  # Each step draws one per-replica batch for every replica: the resume
  # must skip `step x replicas` of them, or a multi-replica run replays
  # data it already trained on.
  if replicas == 1:
    devices = ['--strategy=one_device']
  else:
    devices = ['--strategy=mirrored', f'--cpu_devices={replicas}']
  batch = 4 * replicas

  def train(model_dir, steps):
    # 48 test images: whole evaluation batches on 1, 2 and 3 replicas.
    proc = subprocess.run(
        [sys.executable, '-m', 'pipeline.train', *TINY, '--deterministic',
         *devices, f'--batch_size={batch}', f'--eval_batch_size={batch}',
         '--synthetic_size=128,48',
         f'--train_steps={steps}',
         '--eval_every=100', '--checkpoint_every=3',
         f'--model_dir={model_dir}', '--export_dir='],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr

  train(tmp_path / 'straight', 6)
  train(tmp_path / 'resumed', 3)
  assert 'Resumed from' in train(tmp_path / 'resumed', 6)
  _assert_same_weights(tmp_path / 'straight', tmp_path / 'resumed')


def test_multi_worker_resume_matches_straight_run(tmp_path):
  # One input pipeline a worker, one replica each: the resume skips
  # `step` batches of each worker's shard, so a run stopped at step 3 and
  # resumed to 6 ends with the weights of 6 straight steps.
  extra = ['--deterministic', '--eval_every=100', '--checkpoint_every=3',
           '--synthetic_size=128,48']
  _train_workers(tmp_path / 'straight', 6, extra)
  _train_workers(tmp_path / 'resumed', 3, extra)
  assert 'Resumed from' in _train_workers(tmp_path / 'resumed', 6, extra)[0]
  _assert_same_weights(tmp_path / 'straight', tmp_path / 'resumed')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
