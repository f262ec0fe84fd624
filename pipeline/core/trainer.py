"""Runs steps of one model under a `tf.distribute` strategy, and evaluations.

`Trainer(config)` builds the strategy, data, task, model and optimizer (all
variables under the strategy's scope); `train_loop(iterator, n)` runs n
steps in one `tf.function` call and `evaluate(split)` scores a whole split.
The outer loop, checkpoints and summaries belong to
`pipeline.core.controller.Controller`.
"""

import os

from absl import logging
import tensorflow as tf
import tf_keras as keras

from pipeline.core import schedules
from pipeline.core import strategies
from pipeline.data import input_pipeline, sources
from pipeline.data.base import DataError
from pipeline.models import registry
from pipeline.perf import autotune
from pipeline.perf import hardware
from pipeline.tasks import base as task_base


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN or infinite; the step was not kept."""


def check_divides(flag, size, replicas):
  """Refuses a batch size that does not split evenly over the replicas.

  Raises:
    ValueError: naming the flag and the nearest sizes that divide.
  """
  if size % replicas == 0:
    return
  below, above = size - size % replicas, size - size % replicas + replicas
  nearest = (f'{below} or {above}' if below else str(above))
  raise ValueError(
      f'--{flag}={size} does not divide over {replicas} replicas (each '
      f'replica takes an equal share); use a multiple of {replicas}, such as '
      f'{nearest}.')


class Trainer:
  """Trains one model under a `tf.distribute` strategy.

  Args:
    config: a `pipeline.config.TrainConfig`.
    strategy: a `tf.distribute.Strategy`; by default the config's.
    source: a `pipeline.data.base.Source`; by default the config's data.

  Raises:
    ValueError: when the training or evaluation batch does not divide over
      the replicas.
    DataError: when the data cannot be loaded, or the batch is larger than
      the training split.
  """

  def __init__(self, config, strategy=None, source=None):
    self.config = config
    self.strategy = strategy or strategies.make_strategy(
        config.runtime.strategy, config.runtime.cpu_devices)
    replicas = self.strategy.num_replicas_in_sync
    for flag in ('batch_size', 'eval_batch_size'):
      check_divides(flag, getattr(config, flag), replicas)
    if config.runtime.deterministic:
      tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.runtime.seed)
    self.chief = strategies.is_chief(self.strategy)
    logging.info('%s', hardware.device_line(self.strategy))
    self.source = source or sources.open_source(config.data)
    self.info = self.source.info
    if config.batch_size > self.info.split_sizes['train']:
      raise DataError(
          f'--batch_size={config.batch_size} is larger than the '
          f"{self.info.split_sizes['train']} training examples of "
          f'{self.info.name}; use a smaller batch.')
    self.task = registry.get_task(config)
    self.model_dir = config.model_dir
    # Non-chief workers of a multi-worker run write their checkpoints (which
    # they must, to join the collective save) into a scratch subdirectory.
    self.work_dir = (self.model_dir if self.chief else os.path.join(
        self.model_dir, f'.worker-{self.strategy.cluster_resolver.task_id}'))

    with self.strategy.scope():
      self.model = self.task.build_model(self.info)
      # Evaluation runs the compiled capsule part as training does (exports
      # are built from checkpoints and stay plain unless asked).
      self.model.compile_inference(True)
    # Before any step is traced: each layer's formulation for this
    # machine, at the per-replica shapes that will run.
    self.autotune = self._tune(config.runtime.autotune, replicas)
    with self.strategy.scope():
      self._build_training_state()
    self.train_loop = tf.function(self._train_loop_fn)
    # The training input of run_steps, made at its first call.
    self._iterator = None
    self._eval_fn = tf.function(self._eval_step_fn, reduce_retracing=True)
    self.summary_outputs = tf.function(
        lambda images, labels: self.model(images, labels, training=False))
    self._weights_finite = tf.function(lambda: tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(v)) for v in self.model.variables]))

  def _build_training_state(self):
    """The optimizer, the running metrics, the wall-time counter and the
    checkpoint that holds them with the model (under the strategy's scope).
    """
    opt = self.config.optimizer
    self.learning_rate = schedules.LearningRate(
        opt.lr_schedule, opt.learning_rate, opt.lr_decay_steps,
        opt.lr_decay_rate, opt.warmup_steps)
    self.optimizer = keras.optimizers.Adam(self.learning_rate)
    if self.config.model.precision == 'mixed_float16':
      self.optimizer = keras.mixed_precision.LossScaleOptimizer(
          self.optimizer)
    self.optimizer.build(self.model.trainable_variables)
    self.metrics = {name: keras.metrics.Mean(name)
                    for name in task_base.METRIC_NAMES}
    # Wall time spent training this run, carried across resumes (time
    # after the last checkpoint of a killed process is not counted).
    self.wall_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                    name='wall_seconds')
    # The input position is not in the checkpoint: the distributed
    # iterator is not trackable (TF 2.21), and the stream is a pure
    # function of the batch number, so `train_iterator(step)` resumes it.
    self.checkpoint = tf.train.Checkpoint(model=self.model,
                                          optimizer=self.optimizer,
                                          wall_seconds=self.wall_seconds)

  def _tune(self, policy, replicas):
    """Runs `pipeline.perf.autotune.tune` for training and evaluation batches;
    returns its record (`{'policy': 'off', 'parts': {}}` when off: the
    layers' defaults run, nothing is measured)."""
    if policy == 'off':
      return {'policy': 'off', 'parts': {}}
    shape = self.info.image_shape
    batches = {
        'train': tf.random.uniform(
            [self.config.batch_size // replicas, *shape], seed=1),
        'infer': tf.random.uniform(
            [max(1, self.config.eval_batch_size // replicas), *shape],
            seed=2)}
    record = autotune.tune(self.model, batches, policy)
    if record['parts']:
      logging.info('Autotune (%s, %.1f s): %s', policy,
                   record['probe_seconds'],
                   ', '.join(f'{k} {v}' for k, v in
                             autotune.summary(record).items()))
    return record

  def weights_finite(self) -> bool:
    """Whether every weight of the model is a finite number."""
    return bool(self._weights_finite())

  @property
  def step(self) -> int:
    """The global step (the optimizer's iteration count)."""
    return int(self.optimizer.iterations.numpy())

  def any_worker(self, flag) -> bool:
    """True when `flag` is set on any worker (all of them must stop)."""
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return bool(flag)
    value = tf.constant(1.0 if flag else 0.0)
    per_replica = self.strategy.run(lambda: tf.identity(value))
    return bool(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                                     axis=None) > 0)

  def train_iterator(self, start_step=0):
    """The distributed training input, positioned at `start_step`."""
    cfg = self.config
    return iter(self.strategy.distribute_datasets_from_function(
        lambda ctx: input_pipeline.make_dataset(
            self.source, 'train', cfg.batch_size, True, ctx, seed=cfg.runtime.seed,
            deterministic=cfg.runtime.deterministic, start_step=start_step)))

  def _train_loop_fn(self, iterator, num_steps):
    """Runs up to `num_steps` steps; returns 0, or the first bad step."""
    bad_step = tf.constant(0, tf.int64)
    for _ in tf.range(num_steps):
      ok = self.strategy.run(
          self.task.train_step,
          args=(next(iterator), self.model, self.optimizer, self.metrics))
      ok = self.strategy.experimental_local_results(ok)[0]
      if not ok:
        bad_step = self.optimizer.iterations.read_value()
        break
    return bad_step

  def run_steps(self, num_steps: int) -> None:
    """Runs `num_steps` steps from the current step in one call.

    Raises:
      NonFiniteLossError: naming the step whose loss or gradients were not
        finite; that step was not applied.
    """
    if self._iterator is None:
      self._iterator = self.train_iterator(self.step)
    bad = int(self.train_loop(self._iterator,
                              tf.constant(num_steps, tf.int64)))
    if bad:
      raise NonFiniteLossError(f'Loss or gradients became NaN/Inf at step '
                               f'{bad}; the step was not kept.')

  def _eval_step_fn(self, batch):
    step = self.optimizer.iterations
    results = self.strategy.run(
        lambda b: self.task.validation_step(b, self.model, step),
        args=(batch,))
    return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None)
            for r in results]

  def evaluate(self, split=None) -> dict:
    """Accuracy, error rate and mean loss over a whole split.

    Returns:
      A dict with `accuracy`, `error_rate`, `loss`, `examples`, `split`.

    """
    split = split or self.config.eval_split
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: input_pipeline.make_dataset(
            self.source, split, self.config.eval_batch_size, False, ctx,
            seed=self.config.runtime.seed, deterministic=True))
    hits = loss = count = 0.0
    for batch in dataset:
      h, l, n = self._eval_fn(batch)
      hits, loss, count = hits + float(h), loss + float(l), count + float(n)
    # Sources refuse empty splits at load; max() only guards the division.
    accuracy = hits / max(count, 1.0)
    return {'split': split, 'examples': int(count), 'accuracy': accuracy,
            'error_rate': 1.0 - accuracy, 'loss': loss / max(count, 1.0)}
