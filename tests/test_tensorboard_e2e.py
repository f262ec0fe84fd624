"""End to end: what TensorBoard shows of real runs, asked of a real
`tensorboard` server over HTTP (scalars, histograms, images, HParams and
the profiler trace docs/runs.md promises)."""

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO

TINY = ['--flagfile=configs/smoke.flags', '--conv_filters=8',
        '--primary_channels=4', '--class_dim=4', '--decoder_units=16,32',
        '--synthetic_shape=20,20,1', '--synthetic_size=64,32',
        '--batch_size=8', '--eval_batch_size=16', '--steps_per_loop=2',
        '--log_every=2', '--train_steps=4', '--eval_every=4',
        '--checkpoint_every=4', '--strategy=one_device', '--export_dir=']


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(url, body=None):
  request = urllib.request.Request(
      url, data=None if body is None else json.dumps(body).encode(),
      headers={'Content-Type': 'application/json', 'Accept-Encoding': 'gzip'})
  with urllib.request.urlopen(request, timeout=30) as response:
    data = response.read()
    if response.headers.get('Content-Encoding') == 'gzip':
      data = gzip.decompress(data)
  return json.loads(data)


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  logdir = tmp_path_factory.mktemp('runs')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  for name, extra in (('a', ['--profile_steps=3,4']),
                      ('b', ['--learning_rate=0.01'])):
    proc = subprocess.run(
        [sys.executable, '-m', 'pipeline.train', *TINY,
         f'--model_dir={logdir / name}', *extra], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  port = _free_port()
  tensorboard = subprocess.Popen(
      [sys.executable, '-m', 'tensorboard.main', f'--logdir={logdir}',
       f'--port={port}', '--host=127.0.0.1'], env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  try:
    deadline = time.time() + 120
    while True:
      try:
        if len(_get(f'{url}/data/runs')) >= 6:  # a, a/train, a/eval, b, ...
          break
      except OSError:
        pass
      assert time.time() < deadline, 'tensorboard did not come up'
      assert tensorboard.poll() is None, 'tensorboard exited'
      time.sleep(1)
    yield url, logdir
  finally:
    tensorboard.terminate()
    tensorboard.wait(timeout=30)


def test_scalars_histograms_and_images(server):
  url, _ = server
  scalars = _get(f'{url}/data/plugin/scalars/tags')
  assert {'loss/margin', 'loss/reconstruction', 'loss/total', 'accuracy',
          'learning_rate', 'examples_per_second'} <= set(scalars['a/train'])
  assert {'accuracy', 'error_rate', 'loss/total'} <= set(scalars['a/eval'])
  histograms = _get(f'{url}/data/plugin/histograms/tags')
  assert {'capsule_length/true_class', 'capsule_length/other_classes',
          'coupling_coefficients'} <= set(histograms['a/eval'])
  images = _get(f'{url}/data/plugin/images/tags')
  assert 'inputs_and_reconstructions' in images['a/eval']


def test_hparams_tab_compares_the_runs(server):
  url, _ = server
  experiment = _get(f'{url}/data/plugin/hparams/experiment',
                    {'experimentName': '', 'includeMetrics': True})
  names = {h['name'] for h in experiment['hparamInfos']}
  assert {'learning_rate', 'batch_size', 'model_name', 'conv_filters',
          'routing_iterations', 'data_dataset'} <= names
  metrics = {(m['name']['group'], m['name']['tag'])
             for m in experiment['metricInfos']}
  assert ('eval', 'accuracy') in metrics and ('eval', 'error_rate') in metrics
  groups = _get(f'{url}/data/plugin/hparams/session_groups', {
      'experimentName': '', 'allowedStatuses': ['STATUS_UNKNOWN'],
      'colParams': [], 'startIndex': 0, 'sliceSize': 10,
      'includeMetrics': True})['sessionGroups']
  by_name = {g['name']: g for g in groups}
  assert by_name['a']['hparams']['learning_rate'] == pytest.approx(0.003)
  assert by_name['b']['hparams']['learning_rate'] == pytest.approx(0.01)
  for group in groups:
    values = {(m['name']['group'], m['name']['tag']): m['value']
              for m in group['metricValues']}
    accuracy = values[('eval', 'accuracy')]
    assert 0.0 <= accuracy <= 1.0
    assert values[('eval', 'error_rate')] == pytest.approx(1 - accuracy)


def test_profile_tab_lists_the_trace(server):
  url, logdir = server
  runs = _get(f'{url}/data/plugin/profile/runs')
  assert any(run.startswith('a/train/') for run in runs), runs
  assert not any(run.startswith('b/') for run in runs)
  traces = [f for _, _, files in os.walk(logdir / 'a' / 'train' / 'plugins')
            for f in files if f.endswith('.xplane.pb')]
  assert traces


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
