"""Tests of pipeline.client against in-process stand-ins for TF Serving."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline import client
from pipeline import export
from pipeline import trainer as trainer_lib

from conftest import REPO
from helpers import run_trainer, tiny_config
import serving_fakes


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  base = tmp_path_factory.mktemp('serve')
  trainer = trainer_lib.Trainer(tiny_config(base / 'run', train_steps=2))
  run_trainer(trainer)
  path = export.export_from_checkpoint(str(base / 'run'), str(base / 'caps'))
  grpc_server, grpc_address = serving_fakes.start_grpc('caps', path)
  rest_server, rest_address = serving_fakes.start_rest('caps', path)
  yield trainer, {'grpc': grpc_address, 'rest': rest_address}, base
  grpc_server.stop(None)
  rest_server.shutdown()


@pytest.mark.parametrize('protocol', ['rest', 'grpc'])
def test_predict_matches_the_model(served, protocol):
  trainer, servers, _ = served
  images = np.random.default_rng(0).uniform(size=[3, 20, 20, 1]).astype(
      np.float32)
  out = client.PROTOCOLS[protocol](servers[protocol], 'caps',
                                   {'images': images})
  expected = trainer.model(images, training=False)['lengths'].numpy()
  np.testing.assert_allclose(out['probabilities'], expected, atol=1e-5)
  np.testing.assert_array_equal(out['classes'], expected.argmax(1))


@pytest.mark.parametrize('protocol', ['rest', 'grpc'])
def test_encoded_images(served, protocol):
  _, servers, _ = served
  png = tf.io.encode_png(tf.fill([31, 17, 1], tf.constant(200, tf.uint8)))
  out = client.PROTOCOLS[protocol](
      servers[protocol], 'caps', {'images': np.array([png.numpy()] * 2, object)},
      signature='predict_images')
  assert out['probabilities'].shape == (2, 4)


@pytest.mark.parametrize('protocol', ['rest', 'grpc'])
def test_errors_name_the_problem(served, protocol):
  _, servers, _ = served
  with pytest.raises(client.ServingError, match='not found'):
    client.PROTOCOLS[protocol](servers[protocol], 'other',
                               {'images': np.zeros([1, 20, 20, 1], np.float32)})
  with pytest.raises(client.ServingError, match='20,20,1'):
    client.PROTOCOLS[protocol](servers[protocol], 'caps',
                               {'images': np.zeros([1, 9, 9, 1], np.float32)})
  with pytest.raises(client.ServingError, match=r'must lie in \[0, 1\]'):
    client.PROTOCOLS[protocol](servers[protocol], 'caps',
                               {'images': np.full([1, 20, 20, 1], 255.0,
                                                  np.float32)})
  with pytest.raises(client.ServingError, match=r'class_ids must lie in'):
    client.PROTOCOLS[protocol](
        servers[protocol], 'caps',
        {'images': np.zeros([1, 20, 20, 1], np.float32),
         'class_ids': np.array([7], np.int64)}, signature='reconstruct')
  nothing = {'images': np.zeros([0, 20, 20, 1], np.float32)}
  if protocol == 'grpc':
    empty = client.PROTOCOLS[protocol](servers[protocol], 'caps', nothing)
    assert empty['classes'].shape == (0,)
  else:
    # JSON's [] carries no inner shape: REST can only name the mismatch.
    with pytest.raises(client.ServingError, match=r'images \[0\] is not '
                       r'compatible with expected shape \[\?,20,20,1\]'):
      client.PROTOCOLS[protocol](servers[protocol], 'caps', nothing)


def test_unreachable_server():
  with pytest.raises(client.ServingError, match='cannot reach'):
    client.predict_rest('127.0.0.1:9', 'caps', {'images': np.zeros([1])},
                        timeout=5)


def test_command_sends_files(served, tmp_path):
  _, servers, _ = served
  path = tmp_path / 'x.png'
  path.write_bytes(tf.io.encode_png(tf.zeros([20, 20, 1], tf.uint8)).numpy())
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.client', f'--server={servers["rest"]}',
       '--model_name=caps', str(path)], cwd=REPO, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'{path}: class ' in proc.stdout


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
