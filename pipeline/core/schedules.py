"""Learning-rate schedules of the trainer: the paper's exponential decay and
a warm-up + cosine schedule for short runs.

  exponential  lr * rate^(step / decay_steps) (the paper's MNIST setup),
               after an optional linear warm-up over `warmup_steps`
  cosine       linear warm-up from 0 to lr over `warmup_steps`, then a
               half cosine from lr down to 0 over the next `decay_steps`,
               0 after that

Both are functions of the step alone, so a resumed run continues the same
curve.
"""

import math

import tensorflow as tf
import tf_keras as keras

SCHEDULES = ('exponential', 'cosine')


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """The trainer's learning rate as a function of the (0-based) step."""

  def __init__(self, kind, learning_rate, decay_steps, decay_rate=1.0,
               warmup_steps=0):
    super().__init__()
    if kind not in SCHEDULES:
      raise ValueError(f'--lr_schedule must be one of {SCHEDULES}, got '
                       f'{kind!r}.')
    if learning_rate <= 0:
      raise ValueError(f'--learning_rate must be > 0, got {learning_rate}.')
    if decay_steps < 1:
      raise ValueError(f'--lr_decay_steps must be >= 1, got {decay_steps}.')
    if warmup_steps < 0:
      raise ValueError(f'--warmup_steps must be >= 0, got {warmup_steps}.')
    self.kind = kind
    self.learning_rate = float(learning_rate)
    self.decay_steps = int(decay_steps)
    self.decay_rate = float(decay_rate)
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak = tf.constant(self.learning_rate, tf.float32)
    if self.kind == 'exponential':
      decayed = peak * tf.pow(self.decay_rate, step / self.decay_steps)
    else:
      after = tf.clip_by_value((step - self.warmup_steps) / self.decay_steps,
                               0.0, 1.0)
      decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * after))
    if not self.warmup_steps:
      return decayed
    # Step 0 gets lr / warmup_steps, step warmup_steps - 1 the full lr.
    ramp = tf.minimum((step + 1.0) / self.warmup_steps, 1.0)
    return tf.where(step < self.warmup_steps, peak * ramp, decayed)

  def get_config(self):
    return dict(kind=self.kind, learning_rate=self.learning_rate,
                decay_steps=self.decay_steps, decay_rate=self.decay_rate,
                warmup_steps=self.warmup_steps)
