"""Throughput measurements of the pipeline: input, training, inference,
serving, matmul peak, per-layer timings and scaling with batch and routing.

`pipeline.benchmark` is the command-line tool over these functions. Every
figure is a median over repeated timed runs after warm-up.
"""

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.core import children
from pipeline.core import profiling
from pipeline.core import trainer as trainer_lib
from pipeline.data import input_pipeline
from pipeline.perf import hardware
from pipeline.serving import publish

WHATS = ('input', 'train', 'inference', 'serving', 'matmul', 'layers')
# Environment variables that size thread pools: TensorFlow's intra- and
# inter-op pools, and OpenMP's (used by OpenMP builds of oneDNN).
THREAD_VARIABLES = ('TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS',
                    'OMP_NUM_THREADS')


def _median_time(fn, repeats, warmup=1):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_input(config, source, batches, repeats):
  ds = input_pipeline.make_dataset(source, 'train', config.batch_size, True,
                                   seed=config.runtime.seed)
  it = iter(ds)

  def run():
    for _ in range(batches):
      next(it)
  seconds = _median_time(run, repeats)
  return {'input_examples_per_second': batches * config.batch_size / seconds}


def tracer(trace_dir, config):
  """A function `trace(name, fn, batch, calls=1)` that runs `fn` once more
  under the TensorFlow profiler, into `<trace_dir>/<name>/plugins/profile/`
  with the record `pipeline.perf.profile_report` reads (`calls` steps of
  `batch`); returns the trace's directory, also kept in its `paths` dict by
  name. None without a `trace_dir`."""
  if not trace_dir:
    return None

  def trace(name, fn, batch, calls=1):
    logdir = os.path.join(trace_dir, name)
    tf.profiler.experimental.start(logdir)
    try:
      fn()
    finally:
      tf.profiler.experimental.stop()
    trace.paths[name] = profiling.record_trace(logdir, {
        'first_step': 1, 'last_step': calls, 'batch_size': batch,
        'model': config.model.name, 'precision': config.model.precision,
        'what': name})
    return trace.paths[name]
  trace.paths = {}
  return trace


def bench_train(trainer, repeats, trace=None):
  cfg = trainer.config
  iterator = trainer.train_iterator(0)
  steps = tf.constant(cfg.steps_per_loop, tf.int64)

  def run():
    int(trainer.train_loop(iterator, steps))
  seconds = _median_time(run, repeats)
  step = seconds / cfg.steps_per_loop
  if trace:
    trace('train', run, cfg.batch_size, cfg.steps_per_loop)
  return {'train_step_seconds': step,
          'train_examples_per_second': cfg.batch_size / step}


def bench_inference(trainer, batch, repeats, trace=None):
  """In-memory inference: plain TF ops (as the default export serves) and,
  for a model with an XLA-compiled part, with it compiled (`_xla` keys).
  `trace`: a `tracer`, to trace one call at each batch size."""
  model = trainer.model
  images = tf.random.uniform([batch, *trainer.info.image_shape], seed=1)
  results = {'inference_batch': batch}
  previous = model.inference_compiled
  for suffix, xla in (('', False), ('_xla', True)):
    if model.compile_inference(xla) != xla:
      continue
    predict = tf.function(lambda x: model(x, training=False)['lengths'])
    seconds, latency = _time_batch_and_one(
        lambda x: predict(x).numpy(), images, repeats, trace,
        f'inference{suffix}')
    results[f'inference{suffix}_examples_per_second'] = batch / seconds
    results[f'latency{suffix}_batch1_ms'] = 1000 * latency
  model.compile_inference(previous)
  return results


def _time_batch_and_one(call, images, repeats, trace, name):
  """Median seconds of `call` on the whole batch and on its first image;
  with a `trace`, one more call of each traced as `<name>_b<batch>`."""
  seconds = []
  for x in (images, images[:1]):
    seconds.append(_median_time(lambda x=x: call(x), repeats))
    if trace:
      trace(f'{name}_b{x.shape[0]}', lambda x=x: call(x), x.shape[0])
  return seconds


def _serve(model, image_shape, batch, repeats, xla, trace=None):
  path = publish.export_model(model, image_shape,
                             tempfile.mkdtemp(prefix='capsnet-serving-'),
                             xla=xla)
  serve = tf.saved_model.load(path).signatures['serving_default']
  images = tf.random.uniform([batch, *image_shape], seed=1)
  throughput, latency = _time_batch_and_one(
      lambda x: serve(images=x)['probabilities'].numpy(), images, repeats,
      trace, 'serving_xla' if xla else 'serving')
  return batch / throughput, 1000 * latency


def bench_serving(trainer, batch, repeats, in_memory=None, trace=None):
  """The exported SavedModel's serving_default beside the in-memory model.

  `in_memory`: figures `bench_inference` already measured in this run (else
  it is measured here), for the ratio of the two.
  """
  results = {}
  for suffix, xla in (('', False), ('_xla', True)):
    if xla and not trainer.model.compile_inference(True):
      continue
    throughput, latency = _serve(trainer.model, trainer.info.image_shape,
                                 batch, repeats, xla, trace)
    results[f'serving{suffix}_examples_per_second'] = throughput
    results[f'serving{suffix}_latency_batch1_ms'] = latency
  results.update(in_memory or bench_inference(trainer, batch, repeats,
                                              trace))
  results['serving_throughput_vs_in_memory'] = (
      results['serving_examples_per_second'] /
      results['inference_examples_per_second'])
  return results


def bench_matmul(repeats, n=2048, chain=8):
  """The matmul peak (GFLOP/s) in float32 and bfloat16, and in float16 on a
  GPU (on a CPU float16 is emulated). A 16-bit peak an ISA cap makes
  impossible (`hardware.cap_blocks_16bit`) is skipped, with why in
  `<name>_skipped`.

  Each timed call runs `chain` dependent `n x n` matmuls in one function,
  so the call's dispatch (which dominates a single matmul on a GPU) is a
  small part of it; the chain's factor is scaled so values stay near 1.
  """
  on_gpu = bool(tf.config.list_physical_devices('GPU'))
  dtypes = [('matmul_gflops', tf.float32), ('matmul_bf16_gflops', tf.bfloat16)]
  if on_gpu:
    dtypes.append(('matmul_fp16_gflops', tf.float16))
  results = {'matmul_size': n, 'matmul_chain': chain}
  for name, dtype in dtypes:
    blocked = dtype != tf.float32 and not on_gpu and hardware.cap_blocks_16bit(
        f'mixed_{dtype.name}', asked=f'a {dtype.name} matmul')
    if blocked:
      results[f'{name}_skipped'] = blocked
      continue
    a = tf.cast(tf.random.uniform([n, n], seed=1), dtype)
    # Zero-mean entries of variance 1/(3n): the chain neither grows nor
    # vanishes into denormals.
    b = tf.cast(tf.random.uniform([n, n], -1.0, 1.0, seed=2) / n ** 0.5,
                dtype)

    @tf.function
    def mm(x, y):
      for _ in range(chain):
        x = tf.linalg.matmul(x, y)
      return tf.reduce_sum(tf.cast(x, tf.float32))
    seconds = _median_time(lambda: mm(a, b).numpy(), repeats)  # pylint: disable=cell-var-from-loop
    results[name] = 2 * n ** 3 * chain / seconds / 1e9
  return results


def describe_run(config):
  """What a benchmark ran on and with: versions, the CPU and its 16-bit
  features, thread settings, and the model, precision and data."""
  return {
      'tensorflow': tf.__version__, 'python': platform.python_version(),
      'machine': platform.machine(), 'cpu_count': os.cpu_count(),
      'cpu': hardware.machine(), 'cpu_features': hardware.cpu_features(),
      'gpus': [{'name': g.name, 'compute_capability': g.compute_capability}
               for g in hardware.gpus()],
      **hardware.accelerator_software(),
      'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
      # TensorFlow's thread pools also take their sizes from these (the
      # getters above still say 0, "default"): recorded when set.
      'thread_environment': {k: os.environ[k] for k in THREAD_VARIABLES
                             if k in os.environ},
      'precision': config.model.precision, 'batch_size': config.batch_size,
      'dataset': config.data.dataset,
      'model': config.model.name,
      'routing_iterations': getattr(config.model.params,
                                    'routing_iterations', None),
  }


def _fractions_of_peak(results, flops, precision):
  """The FLOPs per example and each measured rate as a fraction of the
  matmul peak of the precision the model computes in (no float16 peak is
  measured: mixed_float16 gets no fraction)."""
  out = {'forward_flops_per_example': flops,
         'train_flops_per_example': 3 * flops}
  peak = results.get({'float32': 'matmul_gflops',
                      'mixed_bfloat16': 'matmul_bf16_gflops'}.get(
                          precision, ''))
  for kind, per_example in (('train', 3 * flops), ('inference', flops),
                            ('inference_xla', flops), ('serving', flops),
                            ('serving_xla', flops)):
    rate = results.get(f'{kind}_examples_per_second')
    if rate and peak:
      out[f'{kind}_fraction_of_matmul_peak'] = rate * per_example / 1e9 / peak
  return out


def run_benchmarks(config, what, repeats=5, input_batches=200,
                   inference_batch=100, trace_dir=None):
  """Runs the chosen measurements; returns a dict of figures.

  Args:
    config: a `TrainConfig` (model, data and batch size of the timings).
    what: a subset of `WHATS`.
    repeats: timed repetitions per figure.
    input_batches: batches per input timing.
    inference_batch: batch size of the inference timing.
    trace_dir: if set, one more run of each training, inference and serving
      timing is traced by the TensorFlow profiler into a directory of its
      own under it (`train`, `inference_b100`, `serving_xla_b1`, ...), for
      `pipeline.perf.profile_report --model_dir=<trace_dir>/<name>`.
  """
  unknown = set(what) - set(WHATS)
  if unknown:
    raise ValueError(f'--what takes {WHATS}, got {sorted(unknown)}.')
  results = describe_run(config)
  trace = tracer(trace_dir, config)
  trainer = None
  if set(what) - {'matmul'}:
    trainer = trainer_lib.Trainer(config)
    results['image_shape'] = list(trainer.info.image_shape)
    results['autotune'] = trainer.autotune
    results['autotune_probe_seconds'] = trainer.autotune.get(
        'probe_seconds', 0.0)
  if 'input' in what:
    results.update(bench_input(config, trainer.source, input_batches,
                               repeats))
  if 'train' in what:
    results.update(bench_train(trainer, repeats, trace))
  in_memory = None
  if 'inference' in what:
    in_memory = bench_inference(trainer, inference_batch, repeats, trace)
    results.update(in_memory)
  if 'serving' in what:
    results.update(bench_serving(trainer, inference_batch, repeats,
                                 in_memory, trace))
  if 'matmul' in what:
    results.update(bench_matmul(repeats))
  if 'layers' in what:
    results.update(layer_timings(trainer.model, config.batch_size, repeats,
                                 trainer.strategy))
  if trainer is not None:
    results.update(_fractions_of_peak(results, trainer.model.flops_per_example(),
                                      config.model.precision))
  if trace:
    results['traces'] = trace.paths
  results['peak_rss_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  return results


def _fwd_bwd(fn, inputs, variables, input_grads=True):
  """A tf.function running `fn` forward and its gradient backward.

  `input_grads`: also differentiate with respect to the inputs (as training
  does for every part but the first, whose input is the data).
  """
  @tf.function
  def step():
    with tf.GradientTape() as tape:
      if input_grads:
        tape.watch(inputs)
      out = fn(*inputs)
      total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32))
                        for o in tf.nest.flatten(out)])
    sources = (list(inputs) if input_grads else []) + list(variables)
    grads = tape.gradient(total, sources)
    return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32))
                     for g in grads if g is not None])
  return step


def layer_timings(model, batch, repeats, strategy=None):
  """Forward+backward seconds per training step of each part of a model.

  Each part runs alone on inputs of its real shape, so the parts add up to
  about the whole step; the gap is the losses, the input and the glue.
  """
  images = tf.random.uniform([batch, *model.image_shape], seed=1)
  labels = tf.one_hot(tf.range(batch) % model.num_classes, model.num_classes)
  parts = model.parts(images, labels)
  results = {}
  for name, (fn, inputs, variables) in parts.items():
    # The first part's input is the data: training takes no gradient of it.
    first = name == next(iter(parts))
    step = _fwd_bwd(fn, inputs, variables, input_grads=not first)
    results[f'layer_seconds/{name}'] = _median_time(
        lambda: step().numpy(), repeats)
  variables = model.trainable_variables
  with (strategy or tf.distribute.get_strategy()).scope():
    optimizer = keras.optimizers.Adam(0.0)
  zeros = [tf.zeros_like(v) for v in variables]
  update = tf.function(lambda: optimizer.apply_gradients(zip(zeros,
                                                             variables)))
  results['layer_seconds/adam_update'] = _median_time(update, repeats)
  results['layer_seconds/sum'] = sum(
      v for k, v in results.items() if k.startswith('layer_seconds/'))
  return results


def print_table(results):
  """Prints the figures as an aligned two-column table."""
  width = max(len(k) for k in results)
  for key, value in results.items():
    if isinstance(value, float):
      shown = f'{value:,.4f}' if abs(value) < 10 else f'{value:,.2f}'
    elif isinstance(value, list) and value and isinstance(value[0], dict):
      print(key)
      for row in value:
        print('  ' + '  '.join(f'{k}={v:.4g}' if isinstance(v, float) else
                               f'{k}={v}' for k, v in row.items()))
      continue
    else:
      shown = value
    print(f'{key:<{width}}  {shown}')


def _child_train(flag_args, batch, iterations):
  """Training throughput and peak RSS of one configuration, in a fresh
  process (peak RSS only grows within a process). A SIGTERM or Ctrl-C to
  the benchmark ends the child too (`children.run`) and raises
  `children.Stopped`."""
  fd, out = tempfile.mkstemp(suffix='.json')
  os.close(fd)
  cmd = [sys.executable, '-m', 'pipeline.benchmark', *flag_args,
         '--what=train', f'--batch_size={batch}',
         f'--routing_iterations={iterations}', f'--output={out}']
  try:
    proc = children.run(cmd, capture_output=True)
    if proc.stop_status:
      raise children.Stopped(
          f'{proc.received[0]}: the benchmark stopped, and the configuration '
          f'it was measuring (batch {batch}, {iterations} routing '
          'iterations) with it; nothing was written.', proc.stop_status)
    if proc.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
    with open(out) as f:
      figures = json.load(f)
  finally:
    os.remove(out)
  return {'batch_size': batch, 'routing_iterations': iterations,
          'train_examples_per_second': figures['train_examples_per_second'],
          'peak_rss_mb': figures['peak_rss_mb']}


def scaling(flag_args, batches, iterations, config):
  """Throughput and peak memory over batch sizes and routing iterations.

  Each configuration trains in a fresh process with `flag_args` (the
  command's own flags) and its batch size or routing iterations; the rows
  at other batch sizes route `config`'s way, the iteration rows run at its
  batch size.

  Returns:
    A dict: `describe_run` of `config` (without the batch size and routing
    iterations that vary), the flags every child ran with, `by_batch` and
    `by_routing_iterations` rows, and the linear fit of peak memory against
    batch size (MB per example, intercept, R^2).
  """
  results = describe_run(config)
  del results['batch_size'], results['routing_iterations']
  results['flags'] = list(flag_args)
  by_batch = [_child_train(flag_args, b, 3) for b in batches]
  by_iterations = [_child_train(flag_args, config.batch_size, i)
                   for i in iterations]
  x = np.array([r['batch_size'] for r in by_batch], np.float64)
  y = np.array([r['peak_rss_mb'] for r in by_batch], np.float64)
  slope, intercept = np.polyfit(x, y, 1)
  fitted = slope * x + intercept
  r2 = 1 - ((y - fitted) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-9)
  results.update(by_batch=by_batch, by_routing_iterations=by_iterations,
                 peak_mb_per_example=float(slope),
                 peak_mb_intercept=float(intercept),
                 peak_mb_linear_fit_r2=float(r2))
  return results
