"""Measures input, training and inference throughput; writes JSON.

  python -m pipeline.benchmark --what=input,train,inference,matmul \
      --output=bench.json
  python -m pipeline.benchmark --what=input --dataset=multimnist \
      --base_dataset=fashion_mnist --data_source=idx \
      --data_dir=/usr/share/datasets/fashion-mnist --output=input.json

Takes the training flags of `pipeline.train` (model, data, batch size); the
default data set is `synthetic` at MNIST shape, so it needs no files. Every
figure is a median over repeated timed runs after warm-up, and all figures of
one run come from the same process, so ratios between them are meaningful on
a noisy machine.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from pipeline import export
from pipeline import flags as pipeline_flags
from pipeline import trainer as trainer_lib
from pipeline.data import input_pipeline

pipeline_flags.define_flags()
WHATS = ('input', 'train', 'inference', 'serving', 'matmul')
flags.DEFINE_list('what', list(WHATS), f'What to measure, of {WHATS}.')
flags.DEFINE_string('output', '', 'Write the figures as JSON here.')
flags.DEFINE_integer('repeats', 5, 'Timed repetitions (the median is kept).')
flags.DEFINE_integer('input_batches', 200, 'Batches per input timing.')
flags.DEFINE_integer('inference_batch_size', 100, 'Batch of the inference '
                     'timing.')
FLAGS = flags.FLAGS


def _median_time(fn, repeats, warmup=1):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def model_flops(model):
  """Forward FLOPs per example (2 x multiply-adds) of a CapsNet.

  Counts the convolutions, the u_hat transforms, routing's weighted sums and
  agreements, and the decoder; elementwise ops are left out.
  """
  h, w, _ = model.image_shape
  total = 0
  for conv in (model.conv1, model.primary.conv):
    kh, kw, cin, cout = conv.kernel.shape
    stride = conv.strides[0]
    h, w = (h - kh) // stride + 1, (w - kw) // stride + 1
    total += 2 * h * w * kh * kw * cin * cout
  caps = model.class_capsules
  in_caps, classes, _, dim = caps.kernel.shape
  total += 2 * int(tf.size(caps.kernel))
  total += 4 * in_caps * classes * dim * caps.routing_iterations
  if model.decoder is not None:
    dense = model.decoder.hidden + [model.decoder.out]
    total += model.num_reconstructions * sum(
        2 * int(tf.size(d.kernel)) for d in dense)
  return int(total)


def bench_input(config, source, batches, repeats):
  ds = input_pipeline.make_dataset(source, 'train', config.batch_size, True,
                                   seed=config.seed)
  it = iter(ds)

  def run():
    for _ in range(batches):
      next(it)
  seconds = _median_time(run, repeats)
  return {'input_examples_per_second': batches * config.batch_size / seconds}


def bench_train(trainer, repeats):
  cfg = trainer.config
  iterator = trainer.train_iterator(0)
  steps = tf.constant(cfg.steps_per_loop, tf.int64)
  seconds = _median_time(lambda: int(trainer._train_loop(iterator, steps)),  # pylint: disable=protected-access
                         repeats)
  step = seconds / cfg.steps_per_loop
  return {'train_step_seconds': step,
          'train_examples_per_second': cfg.batch_size / step}


def bench_inference(trainer, batch, repeats):
  images = tf.random.uniform([batch, *trainer.info.image_shape], seed=1)
  predict = tf.function(lambda x: trainer.model(x, training=False)['lengths'])
  seconds = _median_time(lambda: predict(images).numpy(), repeats)
  latency = _median_time(lambda: predict(images[:1]).numpy(), repeats)
  return {'inference_examples_per_second': batch / seconds,
          'inference_batch': batch,
          'latency_batch1_ms': 1000 * latency}


def bench_serving(trainer, batch, repeats):
  """The exported SavedModel's serving_default beside the in-memory model."""
  path = export.export_model(trainer.model, trainer.info.image_shape,
                             tempfile.mkdtemp(prefix='capsnet-serving-'))
  serve = tf.saved_model.load(path).signatures['serving_default']
  images = tf.random.uniform([batch, *trainer.info.image_shape], seed=1)
  throughput = _median_time(
      lambda: serve(images=images)['probabilities'].numpy(), repeats)
  latency = _median_time(
      lambda: serve(images=images[:1])['probabilities'].numpy(), repeats)
  results = {'serving_examples_per_second': batch / throughput,
             'serving_latency_batch1_ms': 1000 * latency}
  results.update(bench_inference(trainer, batch, repeats))
  results['serving_throughput_vs_in_memory'] = (
      results['serving_examples_per_second'] /
      results['inference_examples_per_second'])
  return results


def bench_matmul(repeats, n=2048):
  results = {}
  for name, dtype in (('matmul_gflops', tf.float32),
                      ('matmul_bf16_gflops', tf.bfloat16)):
    a = tf.cast(tf.random.uniform([n, n], seed=1), dtype)
    b = tf.cast(tf.random.uniform([n, n], seed=2), dtype)
    mm = tf.function(lambda x, y: tf.reduce_sum(
        tf.cast(tf.linalg.matmul(x, y), tf.float32)))
    seconds = _median_time(lambda: mm(a, b).numpy(), repeats)
    results[name] = 2 * n ** 3 / seconds / 1e9
  return results


def run_benchmarks(config, what, repeats=5, input_batches=200,
                   inference_batch=100):
  """Runs the chosen measurements; returns a dict of figures.

  Args:
    config: a `TrainConfig` (model, data and batch size of the timings).
    what: a subset of `WHATS`.
    repeats: timed repetitions per figure.
    input_batches: batches per input timing.
    inference_batch: batch size of the inference timing.
  """
  unknown = set(what) - set(WHATS)
  if unknown:
    raise ValueError(f'--what takes {WHATS}, got {sorted(unknown)}.')
  results = {
      'tensorflow': tf.__version__, 'python': platform.python_version(),
      'machine': platform.machine(), 'cpu_count': os.cpu_count(),
      'gpus': [d.name for d in tf.config.list_physical_devices('GPU')],
      'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
      'precision': config.model.precision, 'batch_size': config.batch_size,
      'dataset': config.data.dataset,
      'routing_iterations': config.model.routing_iterations,
  }
  trainer = None
  if set(what) - {'matmul'}:
    trainer = trainer_lib.Trainer(config)
    results['image_shape'] = list(trainer.info.image_shape)
  if 'input' in what:
    results.update(bench_input(config, trainer.source, input_batches,
                               repeats))
  if 'train' in what:
    results.update(bench_train(trainer, repeats))
  if 'inference' in what:
    results.update(bench_inference(trainer, inference_batch, repeats))
  if 'serving' in what:
    results.update(bench_serving(trainer, inference_batch, repeats))
  if 'matmul' in what:
    results.update(bench_matmul(repeats))
  if trainer is not None:
    flops = model_flops(trainer.model)
    results['forward_flops_per_example'] = flops
    results['train_flops_per_example'] = 3 * flops
    if 'train_examples_per_second' in results and 'matmul_gflops' in results:
      results['train_fraction_of_matmul_peak'] = (
          results['train_examples_per_second'] * 3 * flops / 1e9 /
          results['matmul_gflops'])
    if ('inference_examples_per_second' in results and
        'matmul_gflops' in results):
      results['inference_fraction_of_matmul_peak'] = (
          results['inference_examples_per_second'] * flops / 1e9 /
          results['matmul_gflops'])
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.model_dir == pipeline_flags.config_lib.TrainConfig().model_dir:
    FLAGS.model_dir = tempfile.mkdtemp(prefix='capsnet-benchmark-')
  try:
    config = pipeline_flags.config_from_flags()
    results = run_benchmarks(config, FLAGS.what, FLAGS.repeats,
                             FLAGS.input_batches, FLAGS.inference_batch_size)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  width = max(len(k) for k in results)
  for key, value in results.items():
    shown = f'{value:,.2f}' if isinstance(value, float) else value
    print(f'{key:<{width}}  {shown}')
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(results, f, indent=2)
    print(f'Wrote {FLAGS.output}')
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
