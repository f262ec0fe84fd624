"""The frozen configuration of a training run, and its JSON form.

Tools build a `TrainConfig` from flags; library code takes it (or plain
arguments) and never reads FLAGS. The trainer writes it into the model
directory as `config.json`, which is how export and evaluation rebuild the
model later.
"""

import dataclasses
import json
import os

from pipeline.data.sources import DataSpec

STRATEGIES = ('mirrored', 'multi_worker', 'one_device')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')
CONFIG_FILE = 'config.json'
INFO_FILE = 'info.json'


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Model name and the options it is built with (besides data shape)."""
  name: str = 'capsnet'
  routing_iterations: int = 3
  stop_inner_gradients: bool = False
  conv_filters: int = 256
  primary_channels: int = 32
  primary_dim: int = 8
  class_dim: int = 16
  decoder_units: tuple = (512, 1024)
  use_decoder: bool = True
  class_bias: bool = False
  jit_compile: bool = True
  precision: str = 'float32'

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(f'precision must be one of {PRECISIONS}, got '
                       f'{self.precision!r}.')

  def kwargs(self):
    """Keyword arguments of the model constructor (all but name, precision)."""
    options = dataclasses.asdict(self)
    del options['name'], options['precision']
    return options


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on.

  Attributes mirror the flags of `pipeline.train`; see `--helpfull`.
  """
  model: ModelSpec = ModelSpec()
  data: DataSpec = DataSpec()
  model_dir: str = '/tmp/capsnet'
  export_dir: str = ''
  batch_size: int = 100
  eval_batch_size: int = 100
  train_steps: int = 1000
  steps_per_loop: int = 10
  log_every: int = 50
  eval_every: int = 500
  checkpoint_every: int = 500
  max_checkpoints: int = 3
  learning_rate: float = 1e-3
  lr_decay_rate: float = 0.96
  lr_decay_steps: int = 2000
  reconstruction_weight: float = 0.0005
  m_plus: float = 0.9
  m_minus: float = 0.1
  down_weight: float = 0.5
  spread_anneal_steps: int = 10000
  strategy: str = 'mirrored'
  cpu_devices: int = 0
  seed: int = 0
  deterministic: bool = False
  eval_split: str = 'test'

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text):
    raw = json.loads(text)
    data = raw.pop('data')
    model = raw.pop('model')
    for key in ('synthetic_shape', 'synthetic_size'):
      data[key] = tuple(data[key])
    model['decoder_units'] = tuple(model['decoder_units'])
    return cls(model=ModelSpec(**model), data=DataSpec(**data), **raw)


def load_run(model_dir):
  """Reads a training run's `config.json` and `info.json`.

  Returns:
    `(TrainConfig, info dict)`; info has `image_shape` (a tuple),
    `num_classes`, `num_targets`, `split_sizes`, `name`.

  Raises:
    FileNotFoundError: if `model_dir` was not written by pipeline.train.
  """
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {model_dir} is not a '
                            'model directory written by pipeline.train.')
  with open(path) as f:
    config = TrainConfig.from_json(f.read())
  with open(os.path.join(model_dir, INFO_FILE)) as f:
    info = json.load(f)
  info['image_shape'] = tuple(info['image_shape'])
  return config, info
