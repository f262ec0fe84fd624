"""Predictions from TF Serving over REST or gRPC, checked.

`predict_rest` and `predict_grpc` (`PROTOCOLS`) send a dict of input
arrays to a served signature and return its outputs as arrays, or raise
`ServingError` naming what went wrong (refused, unreachable, not a capsule
export); `pipeline.client` is the command over them.
"""

import base64
import http.client
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import tensorflow as tf


class ServingError(RuntimeError):
  """The server refused a request or could not be reached."""


def _rest_value(value):
  if value.dtype == object:
    return [{'b64': base64.b64encode(v).decode('ascii')} for v in value]
  return value.tolist()


def _post(url, request, timeout):
  """The body of the reply to `request`, read in full within `timeout`.

  Raises:
    ServingError: naming the URL and what went wrong.
  """
  # urlopen's timeout bounds each socket read, not the request: a server
  # that trickles bytes would hold it for ever. The request runs in a
  # thread and is given up at the deadline.
  done = {}

  def call():
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        done['body'] = response.read()
    except BaseException as e:  # pylint: disable=broad-except
      done['error'] = e

  worker = threading.Thread(target=call, daemon=True)
  worker.start()
  worker.join(timeout)
  if worker.is_alive():
    raise ServingError(f'{url}: no complete reply within --timeout={timeout:g} '
                       's; is the server overloaded, or not TF Serving?')
  error = done.get('error')
  if isinstance(error, urllib.error.HTTPError):
    raise ServingError(
        f'{url}: HTTP {error.code}: '
        f'{error.read().decode(errors="replace")[:500]}') from error
  if isinstance(error, urllib.error.URLError):
    raise ServingError(
        f'{url}: cannot reach the server ({error.reason}).') from error
  if isinstance(error, (OSError, http.client.HTTPException)):
    # Closed connections, replies that are not HTTP, socket timeouts.
    raise ServingError(f'{url}: the server did not answer in HTTP '
                       f'({type(error).__name__}: {error}).') from error
  if error is not None:
    raise error
  return done['body']


def predict_rest(server, model_name, inputs, signature='serving_default',
                 timeout=30.0):
  """Calls `POST /v1/models/<model_name>:predict` (columnar format).

  Args:
    server: `host:port` of the REST API.
    model_name: the served model's name.
    inputs: name → numpy array (object arrays of bytes are sent as base64).
    signature: the signature to call.
    timeout: seconds.

  Returns:
    name → numpy array of the signature's outputs.

  Raises:
    ServingError: with the server's message, or when it is unreachable.
  """
  body = json.dumps({'signature_name': signature,
                     'inputs': {k: _rest_value(np.asarray(v))
                                for k, v in inputs.items()}}).encode()
  url = f'http://{server}/v1/models/{model_name}:predict'
  request = urllib.request.Request(
      url, data=body, headers={'Content-Type': 'application/json'})
  reply = _post(url, request, timeout)
  try:
    payload = json.loads(reply)
    outputs = payload['outputs']
  except (ValueError, KeyError, TypeError):
    raise ServingError(f'{url}: the reply is not a TF Serving prediction: '
                       f'{reply[:200]!r}') from None
  if not isinstance(outputs, dict):
    raise ServingError(f'{url}: expected named outputs, got {outputs!r:.200}')
  return {k: np.asarray(v) for k, v in outputs.items()}


def predict_grpc(server, model_name, inputs, signature='serving_default',
                 timeout=30.0):
  """Calls `PredictionService.Predict` over gRPC; same contract as REST."""
  import grpc  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  with grpc.insecure_channel(server) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
      raise ServingError(f'{server}: {e.code().name}: {e.details()}') from e
  return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


PROTOCOLS = {'rest': predict_rest, 'grpc': predict_grpc}


def read_image_files(paths):
  """Reads encoded image files into an object array of bytes."""
  data = []
  for path in paths:
    try:
      with open(path, 'rb') as f:
        data.append(f.read())
    except OSError as e:
      raise ServingError(f'Cannot read image {path}: {e.strerror}.') from e
  return np.array(data, dtype=object)


def check_outputs(outputs, count):
  """Checks a reply holds `count` finite predictions.

  Raises:
    ServingError: naming what is missing or wrong.
  """
  missing = [k for k in ('classes', 'probabilities') if k not in outputs]
  if missing:
    raise ServingError(f'The reply has no {", ".join(missing)} (it has '
                       f'{", ".join(sorted(outputs)) or "nothing"}): is the '
                       'model a capsule export of pipeline.export?')
  classes, probabilities = outputs['classes'], outputs['probabilities']
  if (classes.shape[:1] != (count,) or probabilities.ndim != 2 or
      len(probabilities) != count):
    raise ServingError(f'The reply has {classes.shape[:1]} classes and '
                       f'probabilities of shape {probabilities.shape} for '
                       f'{count} inputs.')
  if not np.all(np.isfinite(probabilities.astype(np.float64))):
    raise ServingError('The reply holds NaN or infinite probabilities: the '
                       'served model is broken (retrain or re-export it).')
  if np.any((classes < 0) | (classes >= probabilities.shape[1])):
    raise ServingError('The reply names classes outside '
                       f'[0, {probabilities.shape[1]}).')
