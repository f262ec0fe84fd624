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
from pipeline.core import schedules
from pipeline.data.sources import DataSpec, SPLITS
from pipeline.models import registry
from pipeline.perf import autotune as autotune_lib

STRATEGIES = ('mirrored', 'multi_worker', 'one_device')
PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')
CONFIG_FILE = 'config.json'
INFO_FILE = 'info.json'


def _field_values(cls, raw):
  """`raw` with JSON lists turned back into the tuples `cls` keeps,
  refusing names `cls` lacks."""
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise ValueError(f'{cls.__name__} has no field(s) {", ".join(unknown)}; '
                     f'it takes {", ".join(fields)}.')
  return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _from_fields(cls, raw):
  """`cls(**raw)`, read as `_field_values` reads it."""
  return cls(**_field_values(cls, raw))


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
class OptimizerConfig:
  """Adam and its learning-rate schedule."""
  learning_rate: float = settings.setting(1e-3, 'Adam learning rate.',
                                          above=0.0)
  lr_schedule: str = settings.setting(
      'exponential', 'exponential (the paper) or cosine (warm-up, then a '
      'half cosine to 0; for short runs).', choices=schedules.SCHEDULES)
  lr_decay_rate: float = settings.setting(
      0.96, 'Exponential learning-rate decay per lr_decay_steps.', above=0.0,
      high=1.0)
  lr_decay_steps: int = settings.setting(
      2000, 'exponential: steps per decay of lr_decay_rate; cosine: steps of '
      'the decay to 0 after the warm-up.', low=1)
  warmup_steps: int = settings.setting(
      0, 'Steps of linear learning-rate warm-up from 0.', low=0)

  def __post_init__(self):
    settings.check(self)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The losses' weights and margins."""
  reconstruction_weight: float = settings.setting(
      0.0005, 'Weight of the reconstruction loss (paper: 0.0005).', low=0.0)
  m_plus: float = settings.setting(0.9, 'Margin loss m+.')
  m_minus: float = settings.setting(0.1, 'Margin loss m-.')
  down_weight: float = settings.setting(
      0.5, 'Margin loss lambda.', low=0.0, why='paper: 0.5.')
  spread_anneal_steps: int = settings.setting(
      10000, 'matrix_capsnet: steps over which the spread-loss margin grows '
      'from 0.2 to 0.9.', low=1)

  def __post_init__(self):
    settings.check(self)
    if not 0 < self.m_plus <= 1 or not 0 <= self.m_minus < self.m_plus:
      raise settings.SettingError(
          'm_plus', 'and m_minus are the margin loss bounds on capsule '
          'lengths (in [0, 1]): they need 0 <= m_minus < m_plus <= 1 (paper: '
          f'0.1 and 0.9), got m_minus={self.m_minus}, m_plus={self.m_plus}.')


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """Where and how the run executes: devices, seeds, determinism, tuning."""
  strategy: str = settings.setting(
      'mirrored', 'tf.distribute strategy.', choices=STRATEGIES,
      on_resume='another distribution strategy sums gradients in another '
                'order: the weights will differ slightly from an '
                'uninterrupted run')
  cpu_devices: int = settings.setting(
      0, 'Without GPUs: split the CPU into this many logical devices for '
      '--strategy=mirrored.', low=0,
      on_resume='another replica count sums gradients in another order: the '
                'weights will differ slightly from an uninterrupted run')
  seed: int = settings.setting(
      0, 'Seed of weights, shuffling and augmentation.', low=0)
  deterministic: bool = settings.setting(
      False, 'Deterministic ops and input order (reproductions).',
      on_resume='the input order and op determinism change: the run will '
                'not reproduce an uninterrupted one')
  # 'off' for configs built in code (tests keep the layers' defaults); the
  # command line measures ('cached').
  autotune: str = settings.setting(
      'off', "How each layer's formulation (e.g. strided or space-to-depth "
      'convolution, u_hat layout, XLA) is chosen: cached (measure once per '
      'machine, then reuse), probe (measure now), off (the layers\' '
      'defaults).', choices=autotune_lib.POLICIES, flag_default='cached')

  def __post_init__(self):
    settings.check(self)


# The concerns a run's config is made of, beside its model and data: the
# attribute of `TrainConfig` that holds each.
PARTS = {'optimizer': OptimizerConfig, 'loss': LossConfig,
         'runtime': RuntimeConfig}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on: the model, the data, the
  optimizer and schedule, the losses and the runtime, and the training
  loop's own settings (this class's fields). Every setting is declared once,
  as a `settings.setting` field; `pipeline.flags` derives the command line
  from them (`--helpfull`)."""
  model: ModelSpec = ModelSpec()
  data: DataSpec = DataSpec()
  optimizer: OptimizerConfig = OptimizerConfig()
  loss: LossConfig = LossConfig()
  runtime: RuntimeConfig = RuntimeConfig()
  model_dir: str = settings.setting(
      '/tmp/capsnet', 'Checkpoints, summaries, config and metrics go here.')
  export_dir: str = settings.setting(
      '', 'Export base (exports/<name>); empty: no export.')
  batch_size: int = settings.setting(100, 'Global batch size.', low=1)
  eval_batch_size: int = settings.setting(
      100, 'Global evaluation batch size.', low=1)
  train_steps: int = settings.setting(1000, 'Total training steps.', low=1)
  steps_per_loop: int = settings.setting(
      10, 'Steps per tf.function call.', low=1)
  log_every: int = settings.setting(50, 'Steps between log lines.', low=1)
  eval_every: int = settings.setting(500, 'Steps between evals.', low=1)
  checkpoint_every: int = settings.setting(
      500, 'Steps between checkpoints.', low=1)
  max_checkpoints: int = settings.setting(3, 'Checkpoints kept.', low=1)
  eval_split: str = settings.setting(
      'test', 'Split evaluated during and after training.', choices=SPLITS,
      on_resume='evaluations from now on score another split; earlier '
                'entries of metrics.json scored the old one')
  target_accuracy: float = settings.setting(
      0.0, 'Stop at the first evaluation (--eval_every, on --eval_split) '
      'whose accuracy reaches this, e.g. 0.99; the run ends there as if '
      '--train_steps were reached. 0: train all --train_steps.', low=0.0,
      high=1.0, why='0 turns the stop off.')
  warm_start: str = settings.setting(
      '', 'A run directory (its latest checkpoint) or a checkpoint path whose '
      "model weights start this run; the step, the optimizer's state, the "
      'schedule and the input start anew (fine-tuning, or a second phase at '
      'another learning rate). Read only when --model_dir has no checkpoint '
      'yet. Empty: fresh weights.',
      on_resume='the run goes on from its own checkpoints; the weights it '
                'started from stay those of its first start')
  profile_steps: tuple = settings.setting(
      (), 'FIRST,LAST: trace these training steps with the TensorFlow '
      'profiler into <model_dir>/train (TensorBoard Profile tab). Empty: no '
      'trace.', low=1, length=(0, 2))

  def __post_init__(self):
    settings.check(self)
    if not self.model_dir:
      raise settings.SettingError('model_dir', 'must name a directory.')
    if self.profile_steps and self.profile_steps[0] > self.profile_steps[1]:
      raise settings.SettingError(
          'profile_steps', 'takes FIRST,LAST with FIRST <= LAST, got '
          f'{",".join(map(str, self.profile_steps))}.')
    if self.eval_split == 'validation' and not self.data.validation_size:
      raise settings.SettingError(
          'eval_split', '=validation needs --validation_size > 0.')

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text):
    """Reads `to_json`'s form, and the flat form of runs written before the
    optimizer, loss and runtime settings had configs of their own."""
    raw = json.loads(text)
    data = raw.pop('data')
    model = raw.pop('model')
    for key in ('synthetic_shape', 'synthetic_size', 'image_shape'):
      if key in data:
        data[key] = tuple(data[key])
    nested = {name: raw.pop(name) for name in PARTS if name in raw}
    flat = _take_parts(raw)  # The flat form: the parts' fields at the top.
    parts = {name: _from_fields(part, nested.get(name, flat[name]))
             for name, part in PARTS.items()}
    return cls(model=ModelSpec.from_dict(model), data=DataSpec(**data),
               **parts, **_field_values(cls, raw))


def _take_parts(values):
  """Pops from `values` the settings each part of the config holds:
  `{part name: {field: value}}` (named as their flags are)."""
  return {name: {f.name: values.pop(f.name) for f in dataclasses.fields(part)
                 if f.name in values}
          for name, part in PARTS.items()}


def flat_name(key):
  """A dotted field name without its part (`optimizer.learning_rate` ->
  `learning_rate`), as the settings were named before the parts."""
  part, _, rest = key.partition('.')
  return rest if part in PARTS else key


def train_config(**values) -> TrainConfig:
  """A `TrainConfig` from settings named as their flags are (`model`,
  `data` and the loop's fields as themselves; `learning_rate`, `seed`, ...
  routed to the part that holds them).

  Raises:
    ValueError: for a name no part holds.
  """
  wholes = {name: values.pop(name) for name in PARTS if name in values}
  parts = {}
  for name, given in _take_parts(values).items():
    if name in wholes and given:
      raise ValueError(f'Give {name}= or its fields, not both.')
    parts[name] = wholes.get(name) or PARTS[name](**given)
  return TrainConfig(**parts, **values)


def replace(config: TrainConfig, **values) -> TrainConfig:
  """`config` with settings changed, named as `train_config` names them."""
  changes = {name: dataclasses.replace(getattr(config, name), **given)
             for name, given in _take_parts(values).items() if given}
  return dataclasses.replace(config, **changes, **values)


def saved_precision(model_dir):
  """The precision the run in `model_dir` records (its `config.json`: what
  `auto` resolved at its start, or a later explicit switch between float32
  and mixed_bfloat16), or None where there is no readable one."""
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
                'target_accuracy', 'runtime.autotune')
def _noted_fields():
  """`{dotted field: consequence}` of the settings a resumed run may change
  with a stated cost: the fields declared with `on_resume` (the loop's, its
  parts', the data's and every model's options)."""
  noted = settings.resume_notes(TrainConfig, '')
  noted.update(settings.resume_notes(DataSpec, 'data.'))
  for name, part in PARTS.items():
    noted.update(settings.resume_notes(part, f'{name}.'))
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


def run_flag_values(config: TrainConfig) -> dict:
  """`{flag: value}` of what a config sets besides its data: the model,
  its precision and options (as the model's config holds them, its
  defaults filled in), and every setting of the parts and the loop."""
  values = {}
  for key, value in _flatten(config).items():
    if not key.startswith(('data.', 'model.')):
      values[key.rsplit('.', 1)[-1]] = value
  model = config.model
  params = model.params
  if params is None:
    params = registry.MODELS[model.name].config_class()
  values.update((f.name, getattr(params, f.name))
                for f in dataclasses.fields(params))
  values.update(model=model.name, precision=model.precision)
  return values


# What a resumed run that changes --precision between float32 and
# mixed_bfloat16 is told (config_changes notes it; it is not refused).
PRECISION_CHANGE = (
    'the weights and the optimizer state carry over (they are float32 in '
    'both); from this step the model computes in the new precision, so the '
    'steps before and after are not bit-comparable; the run records the new '
    'one, and --precision=auto keeps it')


def precision_carries_over(old, new):
  """Whether a checkpoint written in precision `old` resumes in `new`:
  float32 and mixed_bfloat16 keep the same variables; mixed_float16 adds
  a loss-scale optimizer around them, so a change to or from it does not."""
  return 'mixed_float16' not in (old, new)


def precision_switch_hint(precision, model_dir):
  """How a run in `precision` goes on in float32 (for the warning when
  its 16-bit math is emulated where it resumes)."""
  if precision_carries_over(precision, 'float32'):
    return ('--precision=float32 resumes it in float32 (the weights and the '
            'optimizer state carry over).')
  return ('A run in float32 from its weights: --warm_start=' + model_dir +
          ' --precision=float32 and a new --model_dir (the step, the '
          'optimizer state and the schedule start again).')


def config_changes(saved: TrainConfig, new: TrainConfig):
  """What differs between a run's saved config and the config resuming it.

  Args:
    saved: the config in the model directory.
    new: the config of the command that resumes it.

  Returns:
    `(refused, noted)`: `refused` lists `(flag, old, new)` for changes that
    would change the model or its training (the model and its options,
    precision to or from mixed_float16, data shape and splits, batch size,
    seed, schedule, losses);
    `noted` lists `(flag, old, new, consequence)` for changes that are
    accepted with a stated consequence. Run-control changes (more steps,
    another cadence) appear in neither.
  """
  old_fields, new_fields = _flatten(saved), _flatten(new)
  if saved.model.name != new.model.name:
    return [('model', saved.model.name, new.model.name)], []
  refused, noted = [], []
  notes = _noted_fields()
  # In the order of the settings before the config had parts.
  for key in sorted(set(old_fields) | set(new_fields), key=flat_name):
    old, value = old_fields.get(key), new_fields.get(key)
    if old == value or key in FREE_FIELDS:
      continue
    flag = key.rsplit('.', 1)[-1]
    if key == 'model.precision' and precision_carries_over(old, value):
      noted.append((flag, old, value, PRECISION_CHANGE))
    elif key in notes:
      noted.append((flag, old, value, notes[key]))
    else:
      refused.append((flag, old, value))
  return refused, noted
