"""Stand-ins for TF Serving in tests: its gRPC PredictionService and REST
predict API over a SavedModel, in-process on localhost (the real binary
cannot be installed on these machines)."""

import base64
from concurrent import futures
import http.server
import json
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc


def _call(signatures, name, inputs, cast=False):
  """Runs a signature; `cast` converts JSON numbers to its dtypes, as TF
  Serving's REST API does (gRPC tensors arrive typed)."""
  fn = signatures[name or 'serving_default']
  specs = fn.structured_input_signature[1]
  tensors = {k: tf.constant(v, dtype=specs[k].dtype if cast and k in specs
                            else None) for k, v in inputs.items()}
  return {k: v.numpy() for k, v in fn(**tensors).items()}


class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):

  def __init__(self, model_name, signatures):
    self.model_name, self.signatures = model_name, signatures

  def Predict(self, request, context):  # pylint: disable=invalid-name
    if request.model_spec.name != self.model_name:
      context.abort(grpc.StatusCode.NOT_FOUND,
                    f'Servable not found for {request.model_spec.name}')
    try:
      outputs = _call(self.signatures, request.model_spec.signature_name,
                      {k: tf.make_ndarray(v)
                       for k, v in request.inputs.items()})
    except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:500])
    response = predict_pb2.PredictResponse()
    for k, v in outputs.items():
      response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
    return response


def start_grpc(model_name, saved_model):
  """Serves PredictionService; returns (server, 'localhost:port')."""
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _Servicer(model_name, tf.saved_model.load(saved_model).signatures),
      server)
  port = server.add_insecure_port('localhost:0')
  server.start()
  return server, f'localhost:{port}'


def _from_json(value):
  if isinstance(value, list) and value and isinstance(value[0], dict):
    return np.array([base64.b64decode(v['b64']) for v in value], object)
  return np.asarray(value)


def start_rest(model_name, saved_model):
  """Serves POST /v1/models/<name>:predict; returns (server, 'host:port')."""
  signatures = tf.saved_model.load(saved_model).signatures

  class Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):
      del args

    def _reply(self, code, payload):
      body = json.dumps(payload).encode()
      self.send_response(code)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_POST(self):  # pylint: disable=invalid-name
      if self.path != f'/v1/models/{model_name}:predict':
        return self._reply(404, {'error': f'Servable not found: {self.path}'})
      request = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
      try:
        outputs = _call(signatures, request.get('signature_name'),
                        {k: _from_json(v) for k, v in
                         request['inputs'].items()}, cast=True)
      except (tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
        return self._reply(400, {'error': str(e)[:500]})
      return self._reply(200, {'outputs': {k: v.tolist()
                                           for k, v in outputs.items()}})

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f'127.0.0.1:{server.server_address[1]}'
