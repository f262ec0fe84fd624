"""Distributed training of capsule models: steps, checkpoints, summaries, eval.

`Trainer(config)` builds the strategy, data, model and optimizer;
`Trainer.train()` runs to `config.train_steps`, resuming from the model
directory's latest checkpoint, and returns the final metrics.
"""

import json
import math
import os
import time

from absl import logging
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline import losses
from pipeline import run_guard
from pipeline import strategies
from pipeline import summaries
from pipeline.data import input_pipeline, sources
from pipeline import models

METRICS_FILE = 'metrics.json'
# Examples behind the eval histograms (the image grid shows the first 8).
SUMMARY_EXAMPLES = 200


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN or infinite; the step was not kept."""


def _accuracy_hits(labels, lengths):
  """Per-example 1.0 when the top-k capsules are exactly the k labels."""
  k = tf.cast(tf.reduce_sum(labels, axis=-1), tf.int32)
  # Rank of each class by length; a class is predicted when its rank < k.
  ranks = tf.argsort(tf.argsort(-lengths, axis=-1), axis=-1)
  predicted = tf.cast(ranks < k[:, None], labels.dtype)
  return tf.cast(tf.reduce_all(tf.equal(predicted, labels), axis=-1),
                 tf.float32)


class Trainer:
  """Trains one model under a `tf.distribute` strategy."""

  def __init__(self, config, strategy=None, source=None):
    self.config = config
    self.strategy = strategy or strategies.make_strategy(
        config.strategy, config.cpu_devices)
    replicas = self.strategy.num_replicas_in_sync
    if config.batch_size % replicas:
      raise ValueError(
          f'--batch_size={config.batch_size} does not divide over {replicas} '
          'replicas; use a multiple of the replica count.')
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    self.chief = strategies.is_chief(self.strategy)
    self.source = source or sources.open_source(config.data)
    self.info = self.source.info
    self.model_dir = config.model_dir
    self.work_dir = (self.model_dir if self.chief else os.path.join(
        self.model_dir, f'.worker-{self.strategy.cluster_resolver.task_id}'))
    os.makedirs(self.work_dir, exist_ok=True)

    with self.strategy.scope():
      self.model = models.build_from_spec(config.model, self.info.image_shape,
                                          self.info.num_classes,
                                          self.info.num_targets)
      self.learning_rate = keras.optimizers.schedules.ExponentialDecay(
          config.learning_rate, config.lr_decay_steps, config.lr_decay_rate)
      self.optimizer = keras.optimizers.Adam(self.learning_rate)
      self.loss_scaling = config.model.precision == 'mixed_float16'
      if self.loss_scaling:
        self.optimizer = keras.mixed_precision.LossScaleOptimizer(
            self.optimizer)
      self.optimizer.build(self.model.trainable_variables)
      self.metrics = {
          name: keras.metrics.Mean(name) for name in
          ('loss/margin', 'loss/reconstruction', 'loss/total', 'accuracy')}

    # The input position is not in the checkpoint: the distributed iterator
    # is not trackable (TF 2.21), and the stream is a pure function of the
    # batch number, so `train_iterator(step)` resumes it exactly.
    # Wall time spent training this run, carried across resumes (time after
    # the last checkpoint of a killed process is not counted).
    with self.strategy.scope():
      self.wall_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                      name='wall_seconds')
      self.checkpoint = tf.train.Checkpoint(model=self.model,
                                            optimizer=self.optimizer,
                                            wall_seconds=self.wall_seconds)
    self.checkpoint_manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(self.work_dir, 'checkpoints'),
        max_to_keep=config.max_checkpoints)
    self._train_loop = tf.function(self._train_loop_fn)
    self._eval_fn = tf.function(self._eval_step_fn, reduce_retracing=True)
    self._summary_fn = tf.function(self._summary_outputs)

  def _any_worker(self, flag):
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
            self.source, 'train', cfg.batch_size, True, ctx, seed=cfg.seed,
            deterministic=cfg.deterministic, start_batch=start_step)))

  # --- Steps -------------------------------------------------------------

  @property
  def step(self):
    """The global step (the optimizer's iteration count), as an int."""
    return int(self.optimizer.iterations.numpy())

  def _losses(self, batch, outputs):
    """Per-example class, reconstruction and total losses `[batch]`.

    The class loss is the margin loss (CapsNet), the spread loss with its
    annealed margin (matrix_capsnet) or the softmax cross-entropy
    (baseline_cnn); it is logged as `loss/margin` for all three.
    """
    cfg = self.config
    if cfg.model.name == 'baseline_cnn':
      margin = losses.softmax_cross_entropy(batch['label'], outputs['logits'])
    elif cfg.model.name == 'matrix_capsnet':
      margin = losses.spread_loss(
          batch['label'], outputs['lengths'],
          losses.spread_margin(self.optimizer.iterations,
                               cfg.spread_anneal_steps))
    else:
      margin = losses.margin_loss(batch['label'], outputs['lengths'],
                                  cfg.m_plus, cfg.m_minus, cfg.down_weight)
    if 'reconstructions' in outputs:
      targets = batch.get('targets', batch['image'])
      recon = losses.reconstruction_loss(targets, outputs['reconstructions'])
    else:
      recon = tf.zeros_like(margin)
    return margin, recon, margin + cfg.reconstruction_weight * recon

  def _replica_step(self, batch):
    """One training step on one replica; returns whether it was finite."""
    with tf.GradientTape() as tape:
      outputs = self.model(batch['image'], batch['label'], training=True)
      margin, recon, total = self._losses(batch, outputs)
      loss = tf.nn.compute_average_loss(
          total, global_batch_size=self.config.batch_size)
      scaled = (self.optimizer.get_scaled_loss(loss) if self.loss_scaling
                else loss)
    variables = self.model.trainable_variables
    grads = tape.gradient(scaled, variables)
    if self.loss_scaling:
      grads = self.optimizer.get_unscaled_gradients(grads)
    # With loss scaling, overflowing gradients are the optimizer's business
    # (it skips the step and lowers the scale); only the loss must be finite.
    checked = [] if self.loss_scaling else grads
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                            for g in checked] + [tf.math.is_finite(loss)])
    # Every replica must agree before the (all-reducing) update.
    ctx = tf.distribute.get_replica_context()
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                         1.0 - tf.cast(finite, tf.float32))
    ok = bad < 0.5
    grads = [tf.where(ok, g, tf.zeros_like(g)) for g in grads]
    self.optimizer.apply_gradients(zip(grads, variables))
    hits = _accuracy_hits(batch['label'], outputs['lengths'])
    for name, value in (('loss/margin', margin), ('loss/reconstruction', recon),
                        ('loss/total', total), ('accuracy', hits)):
      self.metrics[name].update_state(value)
    return ok

  def _train_loop_fn(self, iterator, num_steps):
    """Runs up to `num_steps` steps; returns 0, or the first bad step."""
    bad_step = tf.constant(0, tf.int64)
    for _ in tf.range(num_steps):
      ok = self.strategy.run(self._replica_step, args=(next(iterator),))
      ok = self.strategy.experimental_local_results(ok)[0]
      if not ok:
        bad_step = self.optimizer.iterations.read_value()
        break
    return bad_step

  def _eval_step_fn(self, batch):
    def replica_fn(batch):
      outputs = self.model(batch['image'], training=False)
      _, _, total = self._losses(batch, outputs)
      hits = _accuracy_hits(batch['label'], outputs['lengths'])
      return tf.reduce_sum(hits), tf.reduce_sum(total), tf.cast(
          tf.shape(hits)[0], tf.float32)
    results = self.strategy.run(replica_fn, args=(batch,))
    return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None)
            for r in results]

  def _summary_outputs(self, images, labels):
    return self.model(images, labels, training=False)

  # --- Evaluation ----------------------------------------------------------

  def evaluate(self, split=None):
    """Accuracy, error rate and mean loss over a whole split.

    Returns:
      A dict with `accuracy`, `error_rate`, `loss`, `examples`, `split`.
    """
    split = split or self.config.eval_split
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: input_pipeline.make_dataset(
            self.source, split, self.config.eval_batch_size, False, ctx,
            seed=self.config.seed, deterministic=True))
    hits = loss = count = 0.0
    for batch in dataset:
      h, l, n = self._eval_fn(batch)
      hits, loss, count = hits + float(h), loss + float(l), count + float(n)
    accuracy = hits / max(count, 1.0)
    return {'split': split, 'examples': int(count), 'accuracy': accuracy,
            'error_rate': 1.0 - accuracy, 'loss': loss / max(count, 1.0)}

  def _write_eval(self, writer, step, results, batch):
    logging.info('eval step %d: %s accuracy %.4f error %.4f loss %.4f on %d '
                 'examples', step, results['split'], results['accuracy'],
                 results['error_rate'], results['loss'], results['examples'])
    if not self.chief:
      return
    outputs = self._summary_fn(batch['image'], batch['label'])
    with writer.as_default():
      summaries.write_scalars(step, {'accuracy': results['accuracy'],
                                     'error_rate': results['error_rate'],
                                     'loss/total': results['loss']})
      summaries.write_capsule_summaries(step, batch['label'], outputs,
                                        batch['image'])
    path = os.path.join(self.model_dir, METRICS_FILE)
    history = []
    if os.path.exists(path):
      with open(path) as f:
        history = json.load(f).get('history', [])
    history.append(dict(results, step=int(step)))
    with open(path + '.tmp', 'w') as f:
      json.dump({'latest': history[-1], 'history': history}, f, indent=2)
    os.replace(path + '.tmp', path)

  # --- The loop -------------------------------------------------------------

  def write_run_files(self):
    """Writes the resolved config and the data description to model_dir."""
    if not self.chief:
      return
    files = {
        config_lib.CONFIG_FILE: self.config.to_json(),
        config_lib.INFO_FILE: json.dumps({
            'name': self.info.name, 'image_shape': list(self.info.image_shape),
            'num_classes': self.info.num_classes,
            'split_sizes': self.info.split_sizes,
            'num_targets': self.info.num_targets}, indent=2),
    }
    for name, text in files.items():
      path = os.path.join(self.model_dir, name)
      with open(path + '.tmp', 'w') as f:
        f.write(text)
      os.replace(path + '.tmp', path)

  def restore(self):
    """Restores the newest readable checkpoint; returns its path or None.

    A checkpoint that fails to restore (corrupt or truncated files) is
    reported, moved into `checkpoints/corrupt/` rather than deleted, and the
    one before it is tried.
    """
    directory = self.checkpoint_manager.directory
    candidates = list(self.checkpoint_manager.checkpoints)
    while candidates:
      path = candidates.pop()
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.OpError, ValueError, AssertionError, IndexError,
              KeyError, RuntimeError) as e:  # What damaged files raise.
        aside = run_guard.quarantine_checkpoint(path)
        logging.error('Checkpoint %s cannot be restored (%s: %s); moved its '
                      'files to %s, trying the previous one.', path,
                      type(e).__name__, str(e).splitlines()[0][:200], aside)
        self._rewrite_checkpoint_state(directory, candidates)
        continue
      logging.info('Resumed from %s at step %d.', path, self.step)
      return path
    return None

  def _rewrite_checkpoint_state(self, directory, remaining):
    state = os.path.join(directory, 'checkpoint')
    if remaining:
      tf.compat.v1.train.update_checkpoint_state(
          directory, remaining[-1], all_model_checkpoint_paths=remaining)
    elif os.path.exists(state):
      os.remove(state)
    self.checkpoint_manager = tf.train.CheckpointManager(
        self.checkpoint, directory, max_to_keep=self.config.max_checkpoints)

  def train(self):
    """Trains to `train_steps`, evaluating and checkpointing on the way.

    Holds the model directory's lock for the whole run. On SIGTERM it
    saves a checkpoint at the current step and returns early, with
    `preempted` set in the results.

    Returns:
      The final evaluation results (see `evaluate`); `preempted` names the
      signal when the run stopped early.

    Raises:
      NonFiniteLossError: when a step's loss or gradients are not finite; the
        latest checkpoint is the last good one.
      run_guard.RunGuardError: when another trainer holds the model directory
        or it is not writable.
    """
    run_guard.check_writable(self.work_dir, '--model_dir')
    with run_guard.RunLock(self.work_dir), \
        run_guard.PreemptionWatcher() as preemption:
      return self._train(preemption)

  def _train(self, preemption):
    cfg = self.config
    self.write_run_files()
    self.restore()
    train_writer = tf.summary.create_file_writer(
        os.path.join(self.work_dir, 'train'))
    eval_writer = tf.summary.create_file_writer(
        os.path.join(self.work_dir, 'eval'))
    # Histograms are drawn from this fixed batch at every evaluation.
    summary_batch = next(iter(input_pipeline.make_dataset(
        self.source, cfg.eval_split, SUMMARY_EXAMPLES, False, seed=cfg.seed,
        deterministic=True)))
    step = self.step
    iterator = self.train_iterator(step)
    start_step, start_time = step, time.time()
    restored_wall = float(self.wall_seconds.numpy())

    def wall():
      return restored_wall + time.time() - start_time

    def save(step):
      self.wall_seconds.assign(wall())
      self.checkpoint_manager.save(checkpoint_number=step)

    def evaluate():
      return dict(self.evaluate(), wall_seconds=wall())

    last_log_step, last_log_time = step, start_time
    results = None
    while step < cfg.train_steps:
      # Loops end exactly on log, eval and checkpoint boundaries.
      n = min([cfg.steps_per_loop, cfg.train_steps - step] +
              [every - step % every for every in
               (cfg.log_every, cfg.eval_every, cfg.checkpoint_every)])
      bad = int(self._train_loop(iterator, tf.constant(n, tf.int64)))
      if bad:
        raise NonFiniteLossError(
            f'Loss or gradients became NaN/Inf at step {bad}; the step was '
            'not kept. The latest checkpoint '
            f'({self.checkpoint_manager.latest_checkpoint}) is the last good '
            'one. Lower --learning_rate or check the input data.')
      step = self.step
      done = step >= cfg.train_steps
      if step % cfg.log_every == 0 or done:
        now = time.time()
        rate = (step - last_log_step) * cfg.batch_size / (now - last_log_time)
        values = {k: float(m.result()) for k, m in self.metrics.items()}
        values['learning_rate'] = float(self.learning_rate(step - 1))
        values['examples_per_second'] = rate
        left = (cfg.train_steps - step) * cfg.batch_size / max(rate, 1e-9)
        logging.info(
            'step %d/%d  loss %.4f (margin %.4f, recon %.2f)  accuracy %.4f  '
            '%.1f examples/s  %s left', step, cfg.train_steps,
            values['loss/total'], values['loss/margin'],
            values['loss/reconstruction'], values['accuracy'], rate,
            _duration(left))
        if self.chief:
          with train_writer.as_default():
            summaries.write_scalars(step, values)
        for m in self.metrics.values():
          m.reset_state()
        last_log_step, last_log_time = step, now
      paused = time.time()
      if step % cfg.checkpoint_every == 0 or done:
        save(step)
      if step % cfg.eval_every == 0 or done:
        results = evaluate()
        self._write_eval(eval_writer, step, results, summary_batch)
      # examples/s counts training only, not checkpoints and evaluations.
      last_log_time += time.time() - paused
      if not done and self._any_worker(preemption.requested):
        if step % cfg.checkpoint_every:
          save(step)
        train_writer.flush()
        eval_writer.flush()
        logging.warning(
            'Stopped by %s at step %d: checkpoint saved in %s. Run the same '
            'command to resume.', preemption.requested or 'a peer worker',
            step, self.checkpoint_manager.directory)
        return {'preempted': preemption.requested or 'peer', 'step': step}
    if results is None:
      results = evaluate()
      self._write_eval(eval_writer, step, results, summary_batch)
      save(step)
    train_writer.flush()
    eval_writer.flush()
    logging.info('Trained %d steps in %s.', step - start_step,
                 _duration(time.time() - start_time))
    return results


def _duration(seconds):
  seconds = int(math.ceil(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
