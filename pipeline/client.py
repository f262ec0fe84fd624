"""Sends images to TF Serving over REST or gRPC and prints the predictions.

  tensorflow_model_server --model_name=capsnet \
      --model_base_path=$PWD/exports/capsnet_fashion_mnist \
      --port=8500 --rest_api_port=8501
  python -m pipeline.client --server=localhost:8501 --protocol=rest \
      --model_name=capsnet shoe.png shirt.png
  python -m pipeline.client --server=localhost:8500 --protocol=grpc \
      --model_name=capsnet --dataset=fashion_mnist --data_source=idx \
      --data_dir=/usr/share/datasets/fashion-mnist --num_examples=5

Image files go to the `predict_images` signature as encoded bytes (decoded
and resized by the model); data set samples go to `serving_default` as
float32 arrays.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import math
import sys

from absl import app
from absl import flags

from pipeline import flags as pipeline_flags
from pipeline.data import input_pipeline, sources
from pipeline.serving.client import PROTOCOLS, ServingError, check_outputs
from pipeline.serving.client import read_image_files


def main(argv):
  f = flags.FLAGS
  paths = argv[1:]
  try:
    if not (math.isfinite(f.timeout) and f.timeout > 0):
      raise ValueError(f'--timeout must be a positive number of seconds, '
                       f'got {f.timeout}.')
    if f.num_examples < 1:
      raise ValueError(f'--num_examples must be >= 1, got {f.num_examples}.')
    if paths:
      inputs, signature, names = ({'images': read_image_files(paths)},
                                  'predict_images', paths)
    else:
      source = sources.open_source(pipeline_flags.data_spec_from_flags(f))
      batch = next(iter(input_pipeline.make_dataset(
          source, f.split, f.num_examples, False, deterministic=True)))
      inputs, signature = {'images': batch['image'].numpy()}, 'serving_default'
      truth = batch['label'].numpy().argmax(1)
      names = [f'{f.dataset} {f.split}[{i}] (label {t})'
               for i, t in enumerate(truth)]
    outputs = PROTOCOLS[f.protocol](f.server, f.model_name, inputs, signature,
                                    f.timeout)
    check_outputs(outputs, len(names))
  except ValueError as e:
    sys.exit(str(e))
  except ServingError as e:
    sys.exit(f'Error: {e}')
  class_names = outputs.get('class_names')
  for i, (name, cls, probs) in enumerate(zip(names, outputs['classes'],
                                             outputs['probabilities'])):
    shown = ' '.join(f'{p:.2f}' for p in probs)
    label = f'class {int(cls)}'
    if class_names is not None:
      value = class_names[i]
      label += f' "{value.decode() if isinstance(value, bytes) else value}"'
    print(f'{name}: {label} (p={probs[int(cls)]:.3f})  [{shown}]')
  return 0


if __name__ == '__main__':
  pipeline_flags.define_flags()
  flags.DEFINE_string('server', 'localhost:8501', 'host:port of TF Serving '
                      '(REST: 8501, gRPC: 8500 by default).')
  flags.DEFINE_enum('protocol', 'rest', sorted(PROTOCOLS), 'API to use.')
  flags.DEFINE_string('model_name', 'capsnet', 'The served model name.')
  flags.DEFINE_enum('split', 'test', list(sources.SPLITS), 'Split to sample.')
  flags.DEFINE_integer('num_examples', 5, 'Data set examples to send.')
  flags.DEFINE_float('timeout', 30.0, 'Seconds per request.')
  sys.exit(app.run(main))
