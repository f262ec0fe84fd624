"""TF Serving warm-up records: one PredictionLog per signature, written to
`assets.extra/tf_serving_warmup_requests` so a server warms a version up
before it takes traffic."""

import os

import numpy as np
import tensorflow as tf

WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')


def warmup_inputs(image_shape, num_classes, class_dim, has_decoder):
  """One small input dict per signature, for the warmup file."""
  images = np.zeros([2, *image_shape], np.float32)
  png = tf.io.encode_png(tf.zeros(
      [image_shape[0], image_shape[1], 1 if image_shape[2] == 1 else 3],
      tf.uint8)).numpy()
  inputs = {'serving_default': {'images': images},
            'predict_images': {'images': np.array([png], object)}}
  if has_decoder:
    ids = np.zeros([2], np.int64)
    inputs['reconstruct'] = {'images': images, 'class_ids': ids}
    inputs['decode'] = {
        'poses': np.zeros([2, num_classes, class_dim], np.float32),
        'class_ids': ids}
  return inputs


def write_warmup(path, model_name, inputs):
  """Writes TF Serving warmup records: a PredictionLog per signature."""
  # Imported here: only exporting needs the serving protos.
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, tensors in inputs.items():
      request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
          name=model_name, signature_name=signature))
      for key, value in tensors.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
