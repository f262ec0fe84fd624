"""The task contract: a single-replica view of training one model family.

As in tensorflow/models' `official/core/base_task.py`: a task builds its
model and its losses and runs one training or validation step on one
replica; the trainer runs steps under a strategy and never asks which model
it trains. A new model family is a new task and an entry of `pipeline.models.registry`,
which pairs each task with its model class.
"""

import abc

import tensorflow as tf
import tf_keras as keras

from pipeline import losses
from pipeline import metrics as metrics_lib
from pipeline.models import base as models_base

# The running means a training step updates, logged every --log_every steps.
# The class loss is logged as `loss/margin` for every model.
METRIC_NAMES = ('loss/margin', 'loss/reconstruction', 'loss/total',
                'accuracy')


class Task(abc.ABC):
  """Builds one model family's model and losses; runs its replica steps.

  Args:
    config: the run's `pipeline.config.TrainConfig`.
    model_class: the `CapsuleModel` subclass it trains (the registry's
      entry for `config.model.name` gives it).
  """

  def __init__(self, config, model_class):
    self.config = config
    self.model_class = model_class

  def build_model(self, info):
    """The model for data described by `info` (a `DatasetInfo`), built."""
    return models_base.build(self.model_class, self.config.model,
                             info.image_shape, info.num_classes,
                             info.num_targets)

  @abc.abstractmethod
  def class_loss(self, labels, outputs, step):
    """Per-example class loss `[batch]`.

    Args:
      labels: `[batch, classes]` one-hot or k-hot.
      outputs: the model's output dict.
      step: the global step (int64 scalar tensor), for annealed losses.
    """

  def build_losses(self, batch, outputs, step):
    """Per-example `(class, reconstruction, total)` losses, each `[batch]`.

    The reconstruction loss is zero for a model without reconstructions;
    the total weighs it by `--reconstruction_weight`.
    """
    margin = self.class_loss(batch['label'], outputs, step)
    if 'reconstructions' in outputs:
      targets = batch.get('targets', batch['image'])
      recon = losses.reconstruction_loss(targets, outputs['reconstructions'])
    else:
      recon = tf.zeros_like(margin)
    return margin, recon, margin + self.config.loss.reconstruction_weight * recon

  def train_step(self, batch, model, optimizer, metrics):
    """One training step on one replica; returns whether it was finite.

    The per-example losses are averaged over the global batch, so the
    strategy's sum of replica gradients is the gradient of the batch mean.
    A step whose loss or gradients are not finite on any replica applies
    zero gradients on all of them: each replica's finiteness flag is summed
    in the same all-reduce as the gradients, so they all agree.

    Args:
      batch: the replica's batch, a dict with `image` and `label`.
      model: the model `build_model` built.
      optimizer: a tf_keras optimizer (a `LossScaleOptimizer` with
        `mixed_float16`).
      metrics: a dict of `tf_keras.metrics.Mean` keyed by `METRIC_NAMES`.

    Returns:
      A bool scalar tensor: True when the step was kept.
    """
    loss_scaling = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    with tf.GradientTape() as tape:
      outputs = model(batch['image'], batch['label'], training=True)
      margin, recon, total = self.build_losses(batch, outputs,
                                               optimizer.iterations)
      loss = tf.nn.compute_average_loss(
          total, global_batch_size=self.config.batch_size)
      scaled = optimizer.get_scaled_loss(loss) if loss_scaling else loss
    variables = model.trainable_variables
    grads = tape.gradient(scaled, variables)
    if loss_scaling:
      grads = optimizer.get_unscaled_gradients(grads)
    # With loss scaling, overflowing gradients are the optimizer's business
    # (it skips the step and lowers the scale); only the loss must be finite.
    checked = [] if loss_scaling else grads
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                            for g in checked] + [tf.math.is_finite(loss)])
    # The replicas' verdicts travel in the gradients' own all-reduce (one
    # batched collective, not a second synchronisation per step): the
    # summed flag is the same on every replica, so all skip or all apply.
    ctx = tf.distribute.get_replica_context()
    reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads) + [
        1.0 - tf.cast(finite, tf.float32)])
    grads, bad = reduced[:-1], reduced[-1]
    ok = bad < 0.5
    grads = [tf.where(ok, g, tf.zeros_like(g)) for g in grads]
    optimizer.apply_gradients(zip(grads, variables),
                              skip_gradients_aggregation=True)
    hits = metrics_lib.accuracy_hits(batch['label'], outputs['lengths'])
    for name, value in zip(METRIC_NAMES, (margin, recon, total, hits)):
      metrics[name].update_state(value)
    return ok

  def validation_step(self, batch, model, step):
    """Sums over one replica's evaluation batch.

    Returns:
      `(hits, total loss, examples)`, float32 scalars.
    """
    outputs = model(batch['image'], training=False)
    _, _, total = self.build_losses(batch, outputs, step)
    hits = metrics_lib.accuracy_hits(batch['label'], outputs['lengths'])
    # Padding that fills a replica's last batch weighs 0 (input_pipeline).
    weight = batch.get('weight', tf.ones_like(hits))
    return (tf.reduce_sum(hits * weight),
            tf.reduce_sum(tf.cast(total, tf.float32) * weight),
            tf.reduce_sum(weight))
