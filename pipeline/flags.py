"""Command-line flags of the training tools and their conversion to a config.

Every value is checked before any work starts; a bad one stops the tool with
one line that names the flag and what it accepts.
"""

import dataclasses
import functools
import math
import os
import types

from absl import flags
from absl import logging

from pipeline import autotune
from pipeline import config as config_lib
from pipeline import hardware
from pipeline import schedules
from pipeline import settings
from pipeline.data import sources
from pipeline.data import tfds_source
from pipeline.data.base import DataError
from pipeline.models import capsule_ops
from pipeline.models import registry

_D = config_lib.TrainConfig()
_S = sources.DataSpec()


def _model_fields():
  """`name -> [(model, field)]`: every option of every registered model,
  in registry and declaration order. A name several models share (say
  `routing_iterations`) is one flag."""
  fields = {}
  for model, entry in registry.MODELS.items():
    for field in settings.described(entry.config_class):
      fields.setdefault(field.name, []).append((model, field))
  return fields


MODEL_FIELDS = _model_fields()
# Flags that set a model option: derived from the models' config classes.
# A model takes those of its fields; one it does not take is refused when
# given with a value other than the flag's default.
MODEL_FLAGS = tuple(MODEL_FIELDS)
# Float flags; each must be a finite number (NaN compares false with every
# bound, so it would pass a range check).
FLOAT_FLAGS = ('learning_rate', 'lr_decay_rate', 'reconstruction_weight',
               'm_plus', 'm_minus', 'down_weight', 'target_accuracy',
               'test_fraction') + tuple(
                   name for name, owners in MODEL_FIELDS.items()
                   if settings.kind(owners[0][1]) is float)
MAX_ROUTING_ITERATIONS = capsule_ops.MAX_ROUTING_ITERATIONS


def _define_model_flag(name, owners, flag_values):
  """One flag for the option `name` of the models in `owners`: its type,
  help and default from the first model's field; the other models'
  defaults, where they differ, named in the help."""
  first = owners[0][1]
  default = settings.flag_default(first)
  help_text = first.metadata['help']
  models = [m for m, _ in owners]
  if len(models) < len(registry.MODELS):
    help_text += f' Models: {", ".join(models)}.'
  others = [f'{m}: {f.default}' for m, f in owners[1:]
            if settings.flag_default(f) != default]
  if others:
    help_text += (f' Default {owners[0][0]}: {default}; '
                  + '; '.join(others) + '.')
  kind = settings.kind(first)
  choices = first.metadata.get('choices')
  if kind is bool:
    flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
  elif kind is tuple:
    flags.DEFINE_list(name, [str(v) for v in default], help_text,
                      flag_values=flag_values)
  elif choices:
    flags.DEFINE_enum(name, default, list(choices), help_text,
                      flag_values=flag_values)
  elif kind is int:
    flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
  elif kind is float:
    flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
  else:
    flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def define_flags(flag_values=None):
  """Defines the training flags (idempotent); the model options come from
  the registered models' config fields."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if 'model' in flag_values:
    return
  _define(flag_values)


def _define(flag_values):
  """Defines every flag of `define_flags` into `flag_values`."""
  d = types.SimpleNamespace(**{
      kind: functools.partial(getattr(flags, 'DEFINE_' + kind),
                              flag_values=flag_values)
      for kind in ('boolean', 'enum', 'float', 'integer', 'list', 'string')})
  # Model.
  d.enum('model', 'capsnet', sorted(registry.MODELS),
         'Model to train.')
  for name, owners in _model_fields().items():
    _define_model_flag(name, owners, flag_values)
  d.enum('precision', 'float32',
         (hardware.AUTO,) + config_lib.PRECISIONS,
         'float32, or mixed precision: 16-bit convolutions and '
         'decoder, float32 routing, squash and losses '
         '(mixed_float16 adds loss scaling; for GPUs). auto: '
         'mixed_bfloat16 on CPUs with avx512_bf16/amx_bf16 and '
         'GPUs of compute capability >= 8.0, mixed_float16 on '
         'GPUs of 7.x, float32 elsewhere; a resumed run keeps '
         'what it resolved at its start.')
  d.enum('autotune', 'cached', autotune.POLICIES,
         'How each layer\'s formulation (e.g. strided or '
         'space-to-depth convolution, u_hat layout, XLA) is '
         'chosen: cached (measure once per machine, then reuse), '
         'probe (measure now), off (the layers\' defaults).')
  # Data.
  d.enum('dataset', _S.dataset, sorted(sources.DATASETS),
         'Data set.')
  d.string('data_dir', _S.data_dir,
           'TFDS data dir, or the IDX directory with '
           '--data_source=idx.')
  d.enum('data_source', _S.data_source, sources.DATA_SOURCES,
         'Where mnist/fashion_mnist come from.')
  d.enum('base_dataset', _S.base_dataset, sources.DIGIT_BASES,
         'Digits of multimnist / affnist.')
  d.integer('shift_pixels', _S.shift_pixels,
            'Training shift augmentation in pixels (paper: 2).')
  d.integer('canvas_size', _S.canvas_size,
            'affNIST canvas side for the translated digits.')
  d.string('affnist_dir', _S.affnist_dir,
           'Directory of affNIST .mat files (its test split).')
  d.enum('overlay', _S.overlay, ['max', 'sum'],
         'MultiMNIST overlay of the two digits.')
  d.enum('viewpoints', _S.viewpoints,
         sorted(tfds_source.VIEWPOINTS),
         'smallnorb: all, or a novel-viewpoint split (train on '
         'familiar azimuths/elevations, test on novel ones).')
  d.integer('validation_size', _S.validation_size,
            'Training examples held back as the validation split.')
  d.boolean('download', _S.download,
            'Let TFDS download data that is not prepared.')
  d.list('synthetic_shape', list(map(str, _S.synthetic_shape)),
         'H,W,C of the synthetic data set.')
  d.list('image_shape', [],
         'image_folder: H,W,C every image is converted to (C: 1 '
         'grey or 3 RGB). Empty: the images\' own shape.')
  d.float('test_fraction', _S.test_fraction,
          'image_folder without train/ and test/ sub-folders: '
          'share of each class held back as the test split.')
  d.integer('synthetic_classes', _S.synthetic_classes,
            'Classes of the synthetic data set.')
  d.list('synthetic_size', list(map(str, _S.synthetic_size)),
         'train,test examples of the synthetic data set.')
  # Run.
  d.string('model_dir', _D.model_dir,
           'Checkpoints, summaries, config and metrics go here.')
  d.string('export_dir', _D.export_dir,
           'Export base (exports/<name>); empty: no export.')
  d.integer('batch_size', _D.batch_size, 'Global batch size.')
  d.integer('eval_batch_size', _D.eval_batch_size,
            'Global evaluation batch size.')
  d.integer('train_steps', _D.train_steps, 'Total training steps.')
  d.integer('steps_per_loop', _D.steps_per_loop,
            'Steps per tf.function call.')
  d.integer('log_every', _D.log_every, 'Steps between log lines.')
  d.integer('eval_every', _D.eval_every, 'Steps between evals.')
  d.integer('checkpoint_every', _D.checkpoint_every,
            'Steps between checkpoints.')
  d.integer('max_checkpoints', _D.max_checkpoints,
            'Checkpoints kept.')
  d.float('learning_rate', _D.learning_rate, 'Adam learning rate.')
  d.float('lr_decay_rate', _D.lr_decay_rate,
          'Exponential learning-rate decay per lr_decay_steps.')
  d.integer('lr_decay_steps', _D.lr_decay_steps,
            'exponential: steps per decay of lr_decay_rate; '
            'cosine: steps of the decay to 0 after the warm-up.')
  d.enum('lr_schedule', _D.lr_schedule, schedules.SCHEDULES,
         'exponential (the paper) or cosine (warm-up, then a '
         'half cosine to 0; for short runs).')
  d.integer('warmup_steps', _D.warmup_steps,
            'Steps of linear learning-rate warm-up from 0.')
  d.float('reconstruction_weight', _D.reconstruction_weight,
          'Weight of the reconstruction loss (paper: 0.0005).')
  d.float('m_plus', _D.m_plus, 'Margin loss m+.')
  d.float('m_minus', _D.m_minus, 'Margin loss m-.')
  d.float('down_weight', _D.down_weight, 'Margin loss lambda.')
  d.integer('spread_anneal_steps', _D.spread_anneal_steps,
            'matrix_capsnet: steps over which the spread-loss '
            'margin grows from 0.2 to 0.9.')
  d.enum('strategy', _D.strategy, config_lib.STRATEGIES,
         'tf.distribute strategy.')
  d.integer('cpu_devices', _D.cpu_devices,
            'Without GPUs: split the CPU into this many logical '
            'devices for --strategy=mirrored.')
  d.integer('seed', _D.seed, 'Seed of weights, shuffling and '
            'augmentation.')
  d.boolean('deterministic', _D.deterministic,
            'Deterministic ops and input order (reproductions).')
  d.enum('eval_split', _D.eval_split, list(sources.SPLITS),
         'Split evaluated during and after training.')
  d.float('target_accuracy', _D.target_accuracy,
          'Stop at the first evaluation (--eval_every, on '
          '--eval_split) whose accuracy reaches this, e.g. 0.99; '
          'the run ends there as if --train_steps were reached. '
          '0: train all --train_steps.')
  d.list('profile_steps', [],
         'FIRST,LAST: trace these training steps with the '
         'TensorFlow profiler into <model_dir>/train (TensorBoard '
         'Profile tab). Empty: no trace.')


def check_flagfiles(argv):
  """Finds a flagfile that includes itself (directly or through others).

  absl only warns and skips such a file, running with whatever is left;
  this turns it into an error before any work starts.

  Args:
    argv: the command line.

  Returns:
    None, or a one-line message naming the cycle.
  """
  def includes(path):
    try:
      with open(path) as f:
        lines = f.read().splitlines()
    except OSError:
      return []  # absl reports a missing flagfile itself.
    return [line.strip().split('=', 1)[1] for line in lines
            if line.strip().startswith('--flagfile=')]

  def visit(path, chain):
    real = os.path.realpath(path)
    if real in chain:
      names = [os.path.relpath(p) for p in chain[chain.index(real):]]
      return (f'--flagfile {os.path.relpath(real)} includes itself '
              f'({" -> ".join(names + [os.path.relpath(real)])}); remove '
              'the cycle.')
    for child in includes(path):
      found = visit(child, chain + [real])
      if found:
        return found
    return None

  for arg in argv[1:]:
    if arg.startswith('--flagfile='):
      found = visit(arg.split('=', 1)[1], [])
      if found:
        return found
  return None


def _ints(name, values, count):
  try:
    ints = tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f'--{name} takes {count} integers, got '
                     f'{",".join(values)}.') from None
  if len(ints) != count or min(ints) < 1:
    raise ValueError(f'--{name} takes {count} positive integers, got '
                     f'{",".join(values)}.')
  return ints


def _at_least(name, value, low):
  if value < low:
    raise ValueError(f'--{name} must be >= {low}, got {value}.')


def config_from_flags(f=None):
  """Builds and validates a `TrainConfig` from parsed flags.

  Raises:
    ValueError: naming the first bad flag and the values it accepts.
  """
  f = f or flags.FLAGS
  for name in FLOAT_FLAGS:
    if not math.isfinite(f[name].value):
      raise ValueError(f'--{name} must be a finite number, got '
                       f'{f[name].value}.')
  for name, low in (('batch_size', 1), ('eval_batch_size', 1),
                    ('train_steps', 1), ('steps_per_loop', 1),
                    ('log_every', 1), ('eval_every', 1),
                    ('checkpoint_every', 1), ('max_checkpoints', 1),
                    ('lr_decay_steps', 1), ('cpu_devices', 0),
                    ('shift_pixels', 0), ('validation_size', 0),
                    ('spread_anneal_steps', 1), ('warmup_steps', 0),
                    ('seed', 0)):
    _at_least(name, f[name].value, low)
  if not 0 < f.m_plus <= 1 or not 0 <= f.m_minus < f.m_plus:
    raise ValueError(
        '--m_plus and --m_minus are the margin loss bounds on capsule '
        'lengths (in [0, 1]): they need 0 <= m_minus < m_plus <= 1 (paper: '
        f'0.1 and 0.9), got m_minus={f.m_minus}, m_plus={f.m_plus}.')
  if f.down_weight < 0:
    raise ValueError(f'--down_weight must be >= 0 (paper: 0.5), got '
                     f'{f.down_weight}.')
  if f.learning_rate <= 0:
    raise ValueError(f'--learning_rate must be > 0, got {f.learning_rate}.')
  if not 0 < f.lr_decay_rate <= 1:
    raise ValueError(f'--lr_decay_rate must be in (0, 1], got '
                     f'{f.lr_decay_rate}.')
  if f.reconstruction_weight < 0:
    raise ValueError('--reconstruction_weight must be >= 0, got '
                     f'{f.reconstruction_weight}.')
  if not 0 <= f.target_accuracy <= 1:
    raise ValueError('--target_accuracy must be in [0, 1] (0: off), got '
                     f'{f.target_accuracy}.')
  if f.eval_split == 'validation' and not f.validation_size:
    raise ValueError('--eval_split=validation needs --validation_size > 0.')
  if not f.model_dir:
    raise ValueError('--model_dir must name a directory.')
  profile_steps = ()
  if f.profile_steps:
    profile_steps = _ints('profile_steps', f.profile_steps, 2)
    if profile_steps[0] > profile_steps[1]:
      raise ValueError('--profile_steps takes FIRST,LAST with FIRST <= LAST, '
                       f'got {",".join(f.profile_steps)}.')
  model = model_spec_from_flags(f)
  data = data_spec_from_flags(f)
  return config_lib.TrainConfig(
      model=model, data=data, model_dir=f.model_dir, export_dir=f.export_dir,
      batch_size=f.batch_size, eval_batch_size=f.eval_batch_size,
      train_steps=f.train_steps, steps_per_loop=f.steps_per_loop,
      log_every=f.log_every, eval_every=f.eval_every,
      checkpoint_every=f.checkpoint_every, max_checkpoints=f.max_checkpoints,
      learning_rate=f.learning_rate, lr_decay_rate=f.lr_decay_rate,
      lr_decay_steps=f.lr_decay_steps, lr_schedule=f.lr_schedule,
      warmup_steps=f.warmup_steps,
      reconstruction_weight=f.reconstruction_weight, m_plus=f.m_plus,
      m_minus=f.m_minus, down_weight=f.down_weight,
      spread_anneal_steps=f.spread_anneal_steps, strategy=f.strategy,
      cpu_devices=f.cpu_devices, seed=f.seed, deterministic=f.deterministic,
      eval_split=f.eval_split, target_accuracy=f.target_accuracy,
      profile_steps=profile_steps, autotune=f.autotune)


def model_spec_from_flags(f=None):
  """Builds the `ModelSpec` the model flags describe.

  An option flag that was not given (nor set to another value than its
  default) leaves the model its own default, since two models may default
  one option differently; except where the option's flag has a default of
  its own (`settings.setting(flag_default=...)`).

  Raises:
    ValueError: naming a flag the chosen model does not take (given with a
      value other than its default) and the flags it does take, or a value
      the model's config refuses (`--routing_iterations must be >= 1`).
  """
  f = f or flags.FLAGS
  fields = _model_fields()
  taken = registry.option_names(f.model)
  options = {}
  for name, owners in fields.items():
    flag = f[name]
    if name in taken:
      field = dict((m, fl) for m, fl in owners)[f.model]
      if flag.present or flag.value != flag.default:
        value = flag.value
      elif settings.flag_default(field) != field.default:
        value = settings.flag_default(field)
      else:
        continue
      if settings.kind(field) is tuple:
        value = _ints(name, value, len(value))
      options[name] = value
    elif flag.present and flag.value != flag.default:
      accepted = [n for n in fields if n in taken]
      raise ValueError(
          f'--{name} is not an option of --model={f.model}: it would be '
          'ignored. Remove it, or pick a model that takes it'
          + (f' ({f.model} takes '
             f'{", ".join("--" + n for n in accepted)}).' if accepted else
             f' ({f.model} takes none of the model flags).'))
  try:
    return config_lib.model_spec(
        f.model, resolve_precision(f.precision, f.model_dir), **options)
  except settings.SettingError as e:
    raise ValueError(f'--{e}') from None


def resolve_precision(requested, model_dir):
  """The concrete precision of `--precision` (`auto` resolved), logged.

  `auto` means what the run in `model_dir` resolved at its start when there
  is one (a resumed run never changes precision), else what this machine's
  hardware computes fast (`hardware.auto_precision`). An explicit 16-bit
  precision that is emulated here is kept, with a one-line warning.
  """
  if requested != hardware.AUTO:
    warning = hardware.emulation_warning(requested)
    if warning:
      logging.warning('%s', warning)
    return requested
  saved = config_lib.saved_precision(model_dir) if model_dir else None
  if saved:
    logging.info('--precision=auto: %s, as the run in %s resolved at its '
                 'start.', saved, model_dir)
    return saved
  precision, reason = hardware.auto_precision()
  logging.info('--precision=auto: %s (%s).', precision, reason)
  return precision


def data_spec_from_flags(f=None):
  """Builds the `DataSpec` the data flags describe.

  Raises:
    ValueError: naming the bad flag.
  """
  f = f or flags.FLAGS
  try:
    return sources.DataSpec(
        dataset=f.dataset, data_dir=f.data_dir, data_source=f.data_source,
        base_dataset=f.base_dataset, shift_pixels=f.shift_pixels,
        canvas_size=f.canvas_size, affnist_dir=f.affnist_dir,
        overlay=f.overlay, validation_size=f.validation_size,
        download=f.download,
        synthetic_shape=_ints('synthetic_shape', f.synthetic_shape, 3),
        synthetic_classes=f.synthetic_classes,
        synthetic_size=_ints('synthetic_size', f.synthetic_size, 2),
        viewpoints=f.viewpoints,
        image_shape=(_ints('image_shape', f.image_shape, 3)
                     if f.image_shape else ()),
        test_fraction=f.test_fraction)
  except DataError as e:
    raise ValueError(str(e)) from None


# Flags that describe the data (an explicit one overrides a run's config).
DATA_FLAGS = ('dataset', 'data_dir', 'data_source', 'base_dataset',
              'shift_pixels', 'canvas_size', 'affnist_dir', 'overlay',
              'validation_size', 'download', 'synthetic_shape',
              'synthetic_classes', 'synthetic_size', 'viewpoints',
              'image_shape', 'test_fraction')


def data_spec_with_overrides(spec, f=None):
  """`spec` (a run's `DataSpec`) with the data flags given on the command line.

  Raises:
    ValueError: naming the bad flag or combination.
  """
  f = f or flags.FLAGS
  changes = {}
  for name in DATA_FLAGS:
    if not f[name].present:
      continue
    value = f[name].value
    if name == 'synthetic_shape':
      value = _ints(name, value, 3)
    elif name == 'synthetic_size':
      value = _ints(name, value, 2)
    elif name == 'image_shape':
      value = _ints(name, value, 3) if value else ()
    changes[name] = value
  try:
    return dataclasses.replace(spec, **changes)
  except DataError as e:
    raise ValueError(str(e)) from None
