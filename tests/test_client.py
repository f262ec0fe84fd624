"""Tests of pipeline.client against in-process stand-ins for TF Serving."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import trainer as trainer_lib
from pipeline.serving import client
from pipeline.serving import publish

from conftest import REPO
from helpers import run_trainer, tiny_config
import serving_fakes


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  base = tmp_path_factory.mktemp('serve')
  trainer = trainer_lib.Trainer(tiny_config(base / 'run', train_steps=2))
  run_trainer(trainer)
  path = publish.export_from_checkpoint(str(base / 'run'), str(base / 'caps'))
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


class _Misbehaving:
  """A TCP server on localhost that answers every connection with one of
  the ways a wrong or broken server answers; bounded in time."""

  def __init__(self, kind):
    import socket  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self.kind = kind
    self.sock = socket.socket()
    self.sock.bind(('127.0.0.1', 0))
    self.sock.listen(4)
    self.sock.settimeout(30)
    self.address = f'127.0.0.1:{self.sock.getsockname()[1]}'
    self.stop = threading.Event()
    threading.Thread(target=self._serve, daemon=True).start()

  def _reply(self, body, status='200 OK'):
    return (f'HTTP/1.1 {status}\r\nContent-Type: application/json\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body

  def _serve(self):
    try:
      conn, _ = self.sock.accept()
    except OSError:
      return
    with conn:
      conn.settimeout(5)
      try:
        conn.recv(65536)
      except OSError:
        pass
      if self.kind == 'trickle':
        # A header byte every half second, for at most 20 s.
        for byte in self._reply(b'{}')[:40]:
          if self.stop.wait(0.5):
            return
          conn.sendall(bytes([byte]))
      elif self.kind == 'garbage':
        conn.sendall(self._reply(b'<html>not json</html>'))
      elif self.kind == 'not_http':
        conn.sendall(b'SSH-2.0-OpenSSH_9.2\r\n')
      elif self.kind == 'close':
        pass
      elif self.kind == 'no_outputs':
        conn.sendall(self._reply(b'{"outputs": {"scores": [[0.5]]}}'))
      elif self.kind == 'nan':
        conn.sendall(self._reply(
            b'{"outputs": {"classes": [0], "probabilities": [[NaN, 0.1]]}}'))

  def close(self):
    self.stop.set()
    self.sock.close()


@pytest.mark.parametrize('kind,match', [
    ('trickle', 'no complete reply within --timeout=2 s'),
    ('garbage', 'the reply is not a TF Serving prediction'),
    ('not_http', 'did not answer in HTTP'),
    ('close', 'did not answer in HTTP'),
    ('no_outputs', 'The reply has no classes, probabilities'),
    ('nan', 'NaN or infinite probabilities'),
])
def test_a_wrong_or_broken_server_gets_one_line_and_a_failure(
    kind, match, tmp_path):
  server = _Misbehaving(kind)
  path = tmp_path / 'x.png'
  path.write_bytes(tf.io.encode_png(tf.zeros([20, 20, 1], tf.uint8)).numpy())
  try:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, '-m', 'pipeline.client', f'--server={server.address}',
         '--model_name=caps', '--timeout=2', str(path)], cwd=REPO,
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    elapsed = time.time() - start
  finally:
    server.close()
  assert proc.returncode != 0, proc.stdout
  assert match in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  if kind == 'trickle':
    assert elapsed < 60  # The whole request is bounded, not each read.


@pytest.mark.parametrize('flag,match', [
    ('--timeout=nan', '--timeout must be a positive number'),
    ('--timeout=0', '--timeout must be a positive number'),
    ('--num_examples=0', '--num_examples must be >= 1'),
])
def test_bad_client_flags(flag, match):
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.client', '--server=127.0.0.1:9', flag],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode != 0
  assert match in proc.stderr, proc.stderr[-2000:]
  # The refusal alone, not the command's usage text above it.
  assert match in proc.stderr.strip().splitlines()[-1]
  assert 'Sends images' not in proc.stdout + proc.stderr


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
