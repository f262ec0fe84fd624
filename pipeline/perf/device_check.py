"""Checks this machine's devices end to end and writes JSON: the first thing
to run on a new machine, a GPU one above all.

  python -m pipeline.perf.device_check --output=check.json
  python -m pipeline.perf.device_check --replicas=4 --benchmark=paper \
      --output=check.json

On whatever machine it runs, it
  1. lists the devices: the CPU and its 16-bit features, each GPU's name and
     compute capability, the CUDA and cuDNN versions TensorFlow was built
     with and the NVIDIA driver's;
  2. trains a small CapsNet a few steps in every precision the hardware
     computes natively (float32 always; mixed_bfloat16 on CPUs with bf16
     instructions and GPUs of compute capability 8.0 or more;
     mixed_float16 on GPUs of 7.0 or more) and checks its losses are finite;
  3. exports the float32 model, reloads the SavedModel and compares what it
     serves with the in-memory model's outputs;
  4. trains `--steps` steps straight, and half of them then the rest after
     a resume, on `--replicas` replicas (the GPUs when there are that many,
     else virtual CPU devices) and compares every weight;
  5. times training and inference (examples/s, step time, the first step's
     compile time, peak device memory) and the matmul peak.

Each check says `ok` or what failed; the exit code is 1 when one failed.
The runs go to a temporary directory, removed at the end. A SIGTERM or
Ctrl-C stops the check at the next step it can, judging nothing and
writing no report (exit 143 or 130); a second Ctrl-C stops it at once.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import math
import resource
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.core import atomic
from pipeline.core import children
from pipeline.core import controller as controller_lib
from pipeline.core import preemption
from pipeline.core import strategies
from pipeline.core import trainer as trainer_lib
from pipeline.data import sources
from pipeline.perf import hardware
from pipeline.perf import timing
from pipeline.serving import publish

# The checks' model: the smoke flagfile's CapsNet, on synthetic MNIST-sized
# data; `--benchmark=paper` times the paper's model instead.
SMALL_MODEL = dict(conv_filters=32, primary_channels=8, class_dim=8,
                   decoder_units=(64, 128))
PER_REPLICA_BATCH = 8
# Served outputs against the in-memory model's (float32; TF32 on Ampere and
# later GPUs rounds matmul inputs to 10 bits, hence not 1e-6).
EXPORT_TOLERANCE = 2e-3
# A resumed run's weights against the straight run's.
RESUME_TOLERANCE = 1e-4


def native_precisions(features=None, gpus=None):
  """The precisions this hardware computes natively, float32 first."""
  features = hardware.cpu_features() if features is None else features
  gpus = hardware.gpus() if gpus is None else gpus
  found = ['float32']
  if gpus:
    capabilities = [g.compute_capability for g in gpus]
    if all(c is not None for c in capabilities):
      lowest = min(capabilities)
      if lowest >= (8, 0):
        found.append('mixed_bfloat16')
      if lowest >= (7, 0):
        found.append('mixed_float16')
  elif {'avx512_bf16', 'amx_bf16'} & set(features):
    found.append('mixed_bfloat16')
  return found


def _config(model_dir, precision, replicas, steps, paper=False, **overrides):
  params = {} if paper else SMALL_MODEL
  base = dict(
      model=config_lib.model_spec('capsnet', precision, **params),
      data=sources.DataSpec(dataset='synthetic', synthetic_shape=(28, 28, 1),
                            synthetic_classes=10, synthetic_size=(512, 128),
                            shift_pixels=2),
      model_dir=str(model_dir), export_dir='',
      batch_size=PER_REPLICA_BATCH * replicas,
      eval_batch_size=16 * replicas, train_steps=steps, steps_per_loop=1,
      log_every=steps, eval_every=steps, checkpoint_every=steps,
      learning_rate=3e-3, seed=1, deterministic=True, strategy='one_device')
  base.update(overrides)
  return config_lib.train_config(**base)


def _weights(model_dir):
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(f'{model_dir}/checkpoints'))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith('model/')}


def _train(trainer, stop):
  """Trains `trainer` to its end; a SIGTERM or Ctrl-C (`stop`, the
  command's watcher) stops the whole check instead of leaving a short run
  to be judged."""
  result = controller_lib.Controller(trainer, preemption=stop).train()
  _stop_if_asked(stop)
  return result


def _stop_if_asked(stop):
  """Raises `children.Stopped` once a signal asked the check to stop."""
  if stop is not None and stop.requested:
    raise children.Stopped(
        f'Stopped by {stop.requested}: no check was judged and no report '
        'written.', preemption.exit_status(stop.requested))


def check_precision(work, precision, strategy, steps, stop=None):
  """Trains the small model `steps` steps in `precision`."""
  cfg = _config(f'{work}/{precision}', precision, 1, steps)
  trainer = trainer_lib.Trainer(cfg, strategy=strategy)
  start = time.time()
  result = _train(trainer, stop)
  loss = float(result.evaluation['loss'])
  ok = math.isfinite(loss) and result.step == steps
  return trainer, {'ok': ok, 'steps': result.step, 'eval_loss': loss,
                   'seconds': time.time() - start,
                   **({} if ok else {'error': f'loss {loss} after '
                                              f'{result.step} steps'})}


def check_export(work, trainer):
  """Exports `trainer`'s model, reloads it and compares the outputs."""
  path = publish.export_model(trainer.model, trainer.info.image_shape,
                             f'{work}/exports/check')
  served = tf.saved_model.load(path).signatures['serving_default']
  images = tf.random.uniform([5, *trainer.info.image_shape], seed=7)
  expected = trainer.model(images, training=False)['lengths'].numpy()
  got = served(images=images)['probabilities'].numpy()
  difference = float(np.max(np.abs(expected - got)))
  ok = difference <= EXPORT_TOLERANCE
  return {'ok': ok, 'max_abs_difference': difference,
          'tolerance': EXPORT_TOLERANCE,
          **({} if ok else {'error': f'served probabilities differ by '
                                     f'{difference:.3g}'})}


def check_resume(work, strategy, steps, stop=None):
  """`steps` straight against `steps // 2` + the rest after a resume."""
  replicas = strategy.num_replicas_in_sync
  half = max(1, steps // 2)

  def train(name, train_steps):
    cfg = _config(f'{work}/{name}', 'float32', replicas, train_steps,
                  checkpoint_every=half)
    return _train(trainer_lib.Trainer(cfg, strategy=strategy), stop)

  train('straight', steps)
  train('resumed', half)
  train('resumed', steps)
  a, b = _weights(f'{work}/straight'), _weights(f'{work}/resumed')
  difference = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  ok = a.keys() == b.keys() and difference <= RESUME_TOLERANCE
  return {'ok': ok, 'replicas': replicas,
          'devices': list(strategy.extended.worker_devices),
          'max_abs_weight_difference': difference,
          'tolerance': RESUME_TOLERANCE,
          **({} if ok else {'error': f'weights differ by {difference:.3g}'})}


def _peak_device_memory_mb():
  if tf.config.list_physical_devices('GPU'):
    return tf.config.experimental.get_memory_info('GPU:0')['peak'] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(work, precision, strategy, paper, repeats):
  """Training and inference figures of one model in `precision`."""
  cfg = _config(f'{work}/bench', precision, 1, 10, paper=paper,
                batch_size=100 if paper else 32, steps_per_loop=2,
                autotune='probe')
  trainer = trainer_lib.Trainer(cfg, strategy=strategy)
  start = time.time()
  trainer.run_steps(1)
  compile_seconds = time.time() - start
  figures = {'model': 'paper' if paper else 'small', 'precision': precision,
             'batch_size': cfg.batch_size,
             'first_step_seconds': compile_seconds}
  figures.update(timing.bench_train(trainer, repeats))
  figures.update(timing.bench_inference(trainer, cfg.batch_size, repeats))
  figures['autotune'] = _choices(trainer.autotune)
  figures['peak_device_memory_mb'] = _peak_device_memory_mb()
  return figures


def _choices(record):
  return {part: entry.get('choice') for part, entry in
          record.get('parts', {}).items()}


def run(replicas=2, steps=4, paper=False, repeats=3, matmul=True):
  """Every check; returns the report (`ok` is True when all passed).

  Raises:
    children.Stopped: a SIGTERM or Ctrl-C arrived (the check stops at the
      next step it can; a second Ctrl-C stops it at once).
  """
  with preemption.PreemptionWatcher() as stop:
    return _run(replicas, steps, paper, repeats, matmul, stop)


def _run(replicas, steps, paper, repeats, matmul, stop):
  # Virtual CPU devices must exist before TensorFlow initialises its
  # devices: the replicated strategy is made first.
  mirrored = strategies.make_strategy('mirrored', cpu_devices=replicas)
  one = strategies.make_strategy('one_device')
  report = {'machine': hardware.machine(),
            'cpu_features': hardware.cpu_features(),
            'gpus': [{'name': g.name,
                      'compute_capability': g.compute_capability}
                     for g in hardware.gpus()],
            **hardware.accelerator_software(),
            'tensorflow': tf.__version__,
            'device_line': hardware.device_line(mirrored),
            'precisions': native_precisions(), 'checks': {}}
  logging.info('%s', report['device_line'])
  checks = report['checks']
  work = tempfile.mkdtemp(prefix='device-check-')
  try:
    float32_trainer = None
    for precision in report['precisions']:
      trainer, checks[f'train/{precision}'] = check_precision(
          work, precision, one, steps, stop)
      if precision == 'float32':
        float32_trainer = trainer
      logging.info('train/%s: %s', precision, checks[f'train/{precision}'])
    checks['export_reload'] = check_export(work, float32_trainer)
    logging.info('export_reload: %s', checks['export_reload'])
    _stop_if_asked(stop)
    if mirrored.num_replicas_in_sync >= 2:
      checks['resume'] = check_resume(work, mirrored, steps, stop)
    else:
      checks['resume'] = {'ok': True, 'skipped': (
          f'{mirrored.num_replicas_in_sync} replica: pass --replicas=2 or '
          'more (on GPUs: that many GPUs)')}
    logging.info('resume: %s', checks['resume'])
    precision, _ = hardware.auto_precision()
    report['benchmark'] = benchmark(work, precision, one, paper, repeats)
    _stop_if_asked(stop)
    if matmul:
      report['benchmark'].update(timing.bench_matmul(repeats))
    _stop_if_asked(stop)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  report['ok'] = all(c['ok'] for c in checks.values())
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  for name, least in (('replicas', 1), ('steps', 2), ('repeats', 1)):
    if f[name].value < least:
      sys.exit(f'--{name} must be >= {least}, got {f[name].value}.')
  try:
    report = run(f.replicas, f.steps, f.benchmark == 'paper', f.repeats,
                 f.matmul)
  except children.Stopped as e:
    print(str(e), file=sys.stderr, flush=True)
    return e.status
  for name, check in report['checks'].items():
    status = 'ok' if check['ok'] else f'FAILED: {check["error"]}'
    print(f'{name}: {status}', flush=True)
  bench = report['benchmark']
  print(f'benchmark ({bench["model"]} CapsNet, {bench["precision"]}, batch '
        f'{bench["batch_size"]}): train {bench["train_examples_per_second"]:.1f}'
        f' examples/s, inference {bench["inference_examples_per_second"]:.1f}'
        f' examples/s, first step {bench["first_step_seconds"]:.1f} s',
        flush=True)
  if f.output:
    atomic.write_json(f.output, report, indent=2, default=str)
    print(f'Wrote {f.output}', flush=True)
  return 0 if report['ok'] else 1


def define_flags():
  flags.DEFINE_string('output', '', 'Write the report as JSON here.')
  flags.DEFINE_integer('replicas', 2, 'Replicas of the resume check (GPUs '
                       'when there are that many, else virtual CPU devices).')
  flags.DEFINE_integer('steps', 4, 'Training steps of each check.')
  flags.DEFINE_enum('benchmark', 'small', ['small', 'paper'],
                    "The benchmark's model: the checks' small CapsNet, or "
                    "the paper's (8.2M parameters).")
  flags.DEFINE_integer('repeats', 3, 'Timed repetitions of the benchmark.')
  flags.DEFINE_boolean('matmul', True, 'Also time the matmul peak.')


if __name__ == '__main__':
  define_flags()
  logging.set_verbosity(logging.INFO)
  sys.exit(app.run(main))
