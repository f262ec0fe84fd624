"""Small builders shared by the tests: tiny models, configs, IDX files."""

import dataclasses
import gzip
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline import config as config_lib
from pipeline import settings
from pipeline.core import controller as controller_lib
from pipeline.core import run_guard
from pipeline.data import sources
from pipeline.data.idx import idx_bytes
from pipeline.models import base as models_base

TINY_MODEL = dict(conv_filters=8, primary_channels=4, primary_dim=4,
                  class_dim=4, decoder_units=(16, 32), jit_compile=True)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """The options of `ProbeModel`, one of each kind of setting."""
  width: int = settings.setting(4, 'probe: hidden units.', low=1)
  scale: float = settings.setting(1.0, 'probe: output scale.', low=0.0,
                                  below=10.0)
  mode: str = settings.setting('a', 'probe: a mode.', choices=('a', 'b'))
  sizes: tuple = settings.setting((2, 3), 'probe: sizes.', low=1)
  fast: bool = settings.setting(False, 'probe: fast path.', flag_default=True,
                                on_resume='speed only')

  def __post_init__(self):
    settings.check(self)


class ProbeModel(models_base.CapsuleModel):
  """The smallest model of the contract, to register in a test."""

  def __init__(self, input_shape=(8, 8, 1), num_classes=3, **kwargs):
    options = {f.name: kwargs.pop(f.name)
               for f in dataclasses.fields(ProbeConfig) if f.name in kwargs}
    super().__init__(**kwargs)
    self.options = ProbeConfig(**options)
    self._set_shape(input_shape, num_classes)
    self._config = dict(input_shape=self.image_shape,
                        num_classes=self.num_classes,
                        **dataclasses.asdict(self.options))
    self.dense = keras.layers.Dense(num_classes)

  def call(self, images, labels=None, training=False):
    del labels, training
    x = tf.reshape(self._check_images(images), [tf.shape(images)[0], -1])
    logits = self.dense(x) * self.options.scale
    return {'lengths': tf.nn.sigmoid(logits), 'poses': logits[..., None]}


def tiny_config(model_dir, **overrides):
  """A TrainConfig of a tiny CapsNet on tiny synthetic data."""
  data = overrides.pop('data', sources.DataSpec(
      dataset='synthetic', synthetic_shape=(20, 20, 1), synthetic_classes=4,
      synthetic_size=(128, 32), shift_pixels=1))
  model = overrides.pop('model', config_lib.model_spec(**TINY_MODEL))
  base = dict(model=model, data=data, model_dir=str(model_dir),
              batch_size=8, eval_batch_size=16, train_steps=4,
              steps_per_loop=2, log_every=2, eval_every=4,
              checkpoint_every=2, learning_rate=3e-3, seed=1,
              deterministic=True, strategy='one_device')
  base.update(overrides)
  return config_lib.train_config(**base)


def run_trainer(trainer, flags_text=None):
  """Trains `trainer` to the end under a Controller; returns the final
  evaluation (None when preempted)."""
  return controller_lib.Controller(trainer, flags_text).train().evaluation


def write_idx_dir(directory, n_train=40, n_test=20, size=28, gz=True,
                  seed=0):
  """Writes an MNIST-layout IDX directory of random digits; returns arrays."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  out = {}
  for split, n, prefix in (('train', n_train, 'train'),
                           ('test', n_test, 't10k')):
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for kind, arr, ndim in (('images', images, 3), ('labels', labels, 1)):
      name = f'{prefix}-{kind}-idx{ndim}-ubyte' + ('.gz' if gz else '')
      data = idx_bytes(arr)
      with open(os.path.join(directory, name), 'wb') as f:
        f.write(gzip.compress(data) if gz else data)
    out[split] = (images, labels)
  return out


def snapshot(model_dir):
  """Every file under model_dir with its bytes (the run's lock file aside)."""
  files = {}
  for root, _, names in os.walk(model_dir):
    for name in names:
      if name != run_guard.LOCK_FILE:
        path = os.path.join(root, name)
        with open(path, 'rb') as f:
          files[os.path.relpath(path, model_dir)] = f.read()
  return files


def read_until(proc, text, timeout=300):
  """Reads a child's merged output until a line holds `text`; returns the
  lines read (an AssertionError with the last 30 if it never comes)."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f'{text!r} never printed:\n' + ''.join(lines[-30:]))
