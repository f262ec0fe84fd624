"""The frozen configuration of a training run, and its JSON form.

Tools build a `TrainConfig` from flags; library code takes it (or plain
arguments) and never reads FLAGS. The trainer writes it into the model
directory as `config.json`, which is how export and evaluation rebuild the
model later.
"""

import dataclasses
import json
import os
from typing import Any

from pipeline import settings
from pipeline.data.sources import DataSpec
from pipeline.models import registry

STRATEGIES = ('mirrored', 'multi_worker', 'one_device')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')
CONFIG_FILE = 'config.json'
INFO_FILE = 'info.json'


def _from_fields(cls, raw):
  """`cls(**raw)` with JSON lists turned back into the tuples `cls` keeps."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ValueError(f'{cls.__name__} has no field(s) {", ".join(unknown)}; '
                     f'it takes {", ".join(fields)}.')
  return cls(**{k: tuple(v) if isinstance(v, list) else v
                for k, v in raw.items()})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model, in which precision, with which of its own options.

  Attributes:
    name: a key of `pipeline.models.registry.MODELS`.
    precision: one of `PRECISIONS`.
    params: the model's config dataclass (e.g. `CapsNetConfig`); None
      stands for its defaults.
  """
  name: str = 'capsnet'
  precision: str = 'float32'
  params: Any = None

  def __post_init__(self):
    if self.precision not in PRECISIONS:
      raise ValueError(f'precision must be one of {PRECISIONS}, got '
                       f'{self.precision!r}.')
    config_class = registry.entry(self.name).config_class
    if self.params is None:
      object.__setattr__(self, 'params', config_class())
    elif not isinstance(self.params, config_class):
      raise ValueError(f'Model {self.name!r} takes a {config_class.__name__}, '
                       f'got {type(self.params).__name__}.')

  def kwargs(self) -> dict:
    """Keyword arguments of the model constructor (its options)."""
    return {f.name: getattr(self.params, f.name)
            for f in dataclasses.fields(self.params)}

  @classmethod
  def from_dict(cls, raw: dict) -> 'ModelSpec':
    """The inverse of `dataclasses.asdict`.

    Also reads the flat form of runs written before per-model configs
    (every CapsNet option beside name and precision): the fields the model
    takes are kept, as its constructor kept them then.
    """
    raw = dict(raw)
    name = raw.pop('name', 'capsnet')
    precision = raw.pop('precision', 'float32')
    config_class = registry.entry(name).config_class
    if 'params' in raw:
      params = raw['params']
    else:
      taken = registry.option_names(name)
      params = {k: v for k, v in raw.items() if k in taken}
    return cls(name, precision, _from_fields(config_class, params))


def model_spec(name: str = 'capsnet', precision: str = 'float32',
               **options) -> ModelSpec:
  """A `ModelSpec` of model `name` with the given options.

  Raises:
    settings.SettingError: naming an option out of its range.
    ValueError: naming an option the model does not take.
  """
  config_class = registry.entry(name).config_class
  try:
    return ModelSpec(name, precision, _from_fields(config_class, options))
  except settings.SettingError:
    raise  # It names the option and its range already.
  except ValueError as e:
    raise ValueError(f'--model={name}: {e}') from None


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
  lr_schedule: str = 'exponential'
  warmup_steps: int = 0
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
  # Stop at the first evaluation whose accuracy reaches this; 0: never.
  target_accuracy: float = 0.0
  # Steps [first, last] traced by the TensorFlow profiler; () for none.
  profile_steps: tuple = ()
  # How layer formulations are chosen (`pipeline.autotune.POLICIES`); 'off'
  # keeps the layers' defaults (the flag's default is 'cached').
  autotune: str = 'off'

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text):
    raw = json.loads(text)
    data = raw.pop('data')
    model = raw.pop('model')
    for key in ('synthetic_shape', 'synthetic_size', 'image_shape'):
      if key in data:
        data[key] = tuple(data[key])
    if 'profile_steps' in raw:
      raw['profile_steps'] = tuple(raw['profile_steps'])
    return cls(model=ModelSpec.from_dict(model), data=DataSpec(**data),
               **raw)


def saved_precision(model_dir):
  """The precision the run in `model_dir` resolved at its start (from its
  `config.json`), or None where there is no readable one."""
  try:
    with open(os.path.join(model_dir, CONFIG_FILE)) as f:
      precision = json.load(f)['model']['precision']
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return precision if precision in PRECISIONS else None


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
  info['class_names'] = tuple(info.get('class_names', ()))
  return config, info


# Fields a resumed run may change without a word: they decide how long it
# runs and what it reports, not what it computes.
FREE_FIELDS = ('model_dir', 'export_dir', 'train_steps', 'steps_per_loop',
                'log_every', 'eval_every', 'checkpoint_every',
                'max_checkpoints', 'eval_batch_size', 'profile_steps',
                'target_accuracy', 'autotune')
# Fields a resumed run may change, with what that costs.
_NOTED_FIELDS = {
    'eval_split': 'evaluations from now on score another split; earlier '
                  'entries of metrics.json scored the old one',
    'data.data_dir': 'the data is read from another place; the run '
                     'continues correctly only if it holds the same data',
    'data.data_source': 'the data is read through another source; the run '
                        'continues correctly only if it gives the same data',
    'data.download': 'changes only whether TFDS may download',
    'data.affnist_dir': 'the affNIST test split changes; training does not',
    'strategy': 'another distribution strategy sums gradients in another '
                'order: the weights will differ slightly from an '
                'uninterrupted run',
    'cpu_devices': 'another replica count sums gradients in another order: '
                   'the weights will differ slightly from an uninterrupted '
                   'run',
    'deterministic': 'the input order and op determinism change: the run '
                     'will not reproduce an uninterrupted one',
}


def _noted_fields():
  """`_NOTED_FIELDS` and the model options that say, in their config
  field, what changing them on resume costs (`on_resume`)."""
  noted = dict(_NOTED_FIELDS)
  for entry in registry.MODELS.values():
    noted.update(settings.resume_notes(entry.config_class, 'model.params.'))
  return noted


def flat_fields(config) -> dict:
  """Every field of a config as `dotted.name -> value` (nested dataclasses
  flattened: `model.params.conv_filters`, `data.dataset`)."""
  return _flatten(config)


def _flatten(value, prefix=''):
  if dataclasses.is_dataclass(value):
    out = {}
    for f in dataclasses.fields(value):
      out.update(_flatten(getattr(value, f.name), f'{prefix}{f.name}.'))
    return out
  return {prefix[:-1]: value}


def config_changes(saved: TrainConfig, new: TrainConfig):
  """What differs between a run's saved config and the config resuming it.

  Args:
    saved: the config in the model directory.
    new: the config of the command that resumes it.

  Returns:
    `(refused, noted)`: `refused` lists `(flag, old, new)` for changes that
    would change the model or its training (the model and its options,
    precision, data shape and splits, batch size, seed, schedule, losses);
    `noted` lists `(flag, old, new, consequence)` for changes that are
    accepted with a stated consequence. Run-control changes (more steps,
    another cadence) appear in neither.
  """
  old_fields, new_fields = _flatten(saved), _flatten(new)
  if saved.model.name != new.model.name:
    return [('model', saved.model.name, new.model.name)], []
  refused, noted = [], []
  notes = _noted_fields()
  for key in sorted(set(old_fields) | set(new_fields)):
    old, value = old_fields.get(key), new_fields.get(key)
    if old == value or key in FREE_FIELDS:
      continue
    flag = key.rsplit('.', 1)[-1]
    if key in notes:
      noted.append((flag, old, value, notes[key]))
    else:
      refused.append((flag, old, value))
  return refused, noted
