"""Command-line flags of the training tools and their conversion to a config.

Every value is checked before any work starts; a bad one stops the tool with
one line that names the flag and what it accepts.
"""

import dataclasses
import math
import os

from absl import flags
from absl import logging

from pipeline import config as config_lib
from pipeline import settings
from pipeline.data import sources
from pipeline.data.base import DataError
from pipeline.models import capsule_ops
from pipeline.models import registry
from pipeline.perf import hardware

# The settings of a run besides the model's options, each a flag of the
# same name: the data, then each part of the config, then the loop's own.
SETTING_CLASSES = ((sources.DataSpec,) + tuple(config_lib.PARTS.values())
                   + (config_lib.TrainConfig,))


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
# Flags that describe the data (an explicit one overrides a run's config).
DATA_FLAGS = tuple(f.name for f in settings.described(sources.DataSpec))
# Float flags; each must be a finite number (NaN compares false with every
# bound, so it would pass a range check).
FLOAT_FLAGS = tuple(
    f.name for cls in SETTING_CLASSES for f in settings.described(cls)
    if settings.kind(f) is float) + tuple(
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
  _define_setting(first, flag_values, help_text)


def _define_setting(field, flag_values, help_text=None):
  """The flag of a `settings.setting` field: its name, type, default (the
  field's `flag_default` where it has one) and help."""
  name = field.name
  default = settings.flag_default(field)
  help_text = help_text or field.metadata['help']
  kind = settings.kind(field)
  choices = field.metadata.get('choices')
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
  """Defines every flag of `define_flags` into `flag_values`: the model and
  its precision here, the rest from config fields."""
  flags.DEFINE_enum('model', 'capsnet', sorted(registry.MODELS),
                    'Model to train.', flag_values=flag_values)
  for name, owners in _model_fields().items():
    _define_model_flag(name, owners, flag_values)
  flags.DEFINE_enum(
      'precision', 'float32', (hardware.AUTO,) + config_lib.PRECISIONS,
      'float32, or mixed precision: 16-bit convolutions and decoder, float32 '
      'routing, squash and losses (mixed_float16 adds loss scaling; for '
      'GPUs). auto: mixed_bfloat16 on CPUs with avx512_bf16/amx_bf16 and '
      'GPUs of compute capability >= 8.0, mixed_float16 on GPUs of 7.x, '
      'float32 elsewhere; a resumed run keeps the precision it records (an '
      'explicit float32 or mixed_bfloat16 switches it between those two).',
      flag_values=flag_values)
  # Data, optimizer and schedule, losses, runtime, the loop: one flag per
  # field of their configs.
  for cls in SETTING_CLASSES:
    for field in settings.described(cls):
      _define_setting(field, flag_values)


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


def _flag_values(cls, f):
  """The flag values of the fields of `cls`, as the field holds them."""
  return {field.name: _field_value(field, f[field.name].value)
          for field in settings.described(cls)}


def _field_value(field, value):
  """A flag's value as `field` holds it: a list flag's strings become the
  tuple of ints the field keeps."""
  if settings.kind(field) is not tuple:
    return value
  lengths = field.metadata.get('length') or (len(value),)
  return (() if not value and 0 in lengths else
          _ints(field.name, value, max(lengths)))


def config_from_flags(f=None):
  """Builds and validates a `TrainConfig` from parsed flags.

  Each setting is checked by the config field that declares it; the
  message names its flag.

  Raises:
    ValueError: naming the first bad flag and the values it accepts.
  """
  f = f or flags.FLAGS
  for name in FLOAT_FLAGS:
    if not math.isfinite(f[name].value):
      raise ValueError(f'--{name} must be a finite number, got '
                       f'{f[name].value}.')
  try:
    parts = {name: part(**_flag_values(part, f))
             for name, part in config_lib.PARTS.items()}
    loop = _flag_values(config_lib.TrainConfig, f)
    # Checked before the model, whose precision is resolved and logged: a
    # bad value is refused in its one line, with nothing above it.
    for field in settings.described(config_lib.TrainConfig):
      settings.check_value(field, loop[field.name])
    data = data_spec_from_flags(f)
    model = model_spec_from_flags(f)
    return config_lib.TrainConfig(model=model, data=data, **parts, **loop)
  except settings.SettingError as e:
    raise ValueError(f'--{e}') from None


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
      options[name] = _field_value(field, value)
    elif flag.present and flag.value != flag.default:
      accepted = [n for n in fields if n in taken]
      raise ValueError(
          f'--{name} is not an option of --model={f.model}: it would be '
          'ignored. Remove it, or pick a model that takes it'
          + (f' ({f.model} takes '
             f'{", ".join("--" + n for n in accepted)}).' if accepted else
             f' ({f.model} takes none of the model flags).'))
  try:
    # The options are checked before the precision is resolved (and logged).
    spec = config_lib.model_spec(f.model, **options)
  except settings.SettingError as e:
    raise ValueError(f'--{e}') from None
  return dataclasses.replace(
      spec, precision=resolve_precision(f.precision, f.model_dir))


def resolve_precision(requested, model_dir):
  """The concrete precision of `--precision` (`auto` resolved), logged.

  `auto` means the precision the run in `model_dir` records when there is
  one (a resumed run never changes precision unasked; one warning line
  when that precision is emulated here, naming the way to float32), else
  what this machine's hardware computes fast (`hardware.auto_precision`).
  An explicit 16-bit precision that is emulated here is kept, with a
  one-line warning.

  Raises:
    ValueError: an ISA cap in the environment (oneDNN's, XLA's) is not one
      it knows, or it leaves no 16-bit kernels for the 16-bit precision
      asked for (or resumed).
  """
  # A bad cap fails here, whatever the precision.
  hardware.isa_cap()
  hardware.xla_isa_cap()
  if requested != hardware.AUTO:
    _check_not_blocked(requested)
    warning = hardware.emulation_warning(requested)
    if warning:
      logging.warning('%s', warning)
    return requested
  saved = config_lib.saved_precision(model_dir) if model_dir else None
  if saved:
    _check_not_blocked(saved, f'--precision=auto ({saved}, as the run in '
                       f'{model_dir} records)')
    where = hardware.emulated_where(saved)
    if where is None:
      logging.info('--precision=auto: %s, as the run in %s records.', saved,
                   model_dir)
    else:
      # Resumed on other hardware (a preempted job placed elsewhere).
      logging.warning(
          '--precision=auto keeps %s, as the run in %s records, but %s: its '
          '16-bit math is emulated and slower than float32 here. %s', saved,
          model_dir, where, config_lib.precision_switch_hint(saved, model_dir))
    return saved
  precision, reason = hardware.auto_precision()
  logging.info('--precision=auto: %s (%s).', precision, reason)
  return precision


def _check_not_blocked(precision, asked=None):
  blocked = hardware.cap_blocks_16bit(precision, asked=asked)
  if blocked:
    raise ValueError(blocked)


def run_flags_given(f=None):
  """`{flag: value}` of the flags given (on the command line or in a
  flagfile) that set the run itself rather than its data: `--model`,
  `--precision`, the model options and the settings of the config's parts
  and loop, each as the config holds it (`config.run_flag_values`)."""
  f = f or flags.FLAGS
  fields = [field for cls in SETTING_CLASSES if cls is not sources.DataSpec
            for field in settings.described(cls)]
  fields += [owners[0][1] for owners in _model_fields().values()]
  given = {field.name: _field_value(field, f[field.name].value)
           for field in fields if f[field.name].present}
  given.update((name, f[name].value) for name in ('model', 'precision')
               if f[name].present)
  return given


def data_spec_from_flags(f=None):
  """Builds the `DataSpec` the data flags describe.

  Raises:
    ValueError: naming the bad flag.
  """
  f = f or flags.FLAGS
  try:
    return sources.DataSpec(**_flag_values(sources.DataSpec, f))
  except DataError as e:
    raise ValueError(str(e)) from None


def data_spec_with_overrides(spec, f=None):
  """`spec` (a run's `DataSpec`) with the data flags given on the command line.

  Raises:
    ValueError: naming the bad flag or combination.
  """
  f = f or flags.FLAGS
  given = {name for name in DATA_FLAGS if f[name].present}
  changes = {name: value for name, value in
             _flag_values(sources.DataSpec, f).items() if name in given}
  try:
    return dataclasses.replace(spec, **changes)
  except DataError as e:
    raise ValueError(str(e)) from None
