"""Settings that describe themselves: a dataclass field with its help and its
bounds, checked once by the dataclass that holds it.

A config dataclass declares each option once:

    @dataclasses.dataclass(frozen=True)
    class CapsNetConfig:
      routing_iterations: int = settings.setting(
          3, 'Dynamic routing iterations (paper: 3).', low=1, high=10)

      def __post_init__(self):
        settings.check(self)

and everything else is derived from that one line: the command-line flag
(`pipeline.flags` defines one per field, with this help and type), the
validation (`check`, with one message naming the setting and its range),
the model's constructor defaults, the run's `config.json`, and the resume
check that refuses a changed value (or notes it, with `on_resume`).

This module imports nothing from the package, so configs at every layer
(models, data, the run) can use it.
"""

import dataclasses
import math

_MISSING = dataclasses.MISSING


class SettingError(ValueError):
  """A setting outside what it accepts. `str(e)` starts with its name, so a
  tool can say `--<name> ...` and a library caller `<name> ...`."""

  def __init__(self, name, detail):
    super().__init__(f'{name} {detail}')
    self.name = name
    self.detail = detail


def setting(default, help, *, low=None, high=None, above=None, below=None,
            choices=None, length=None, why='', flag_default=_MISSING,
            on_resume=None):
  """A dataclass field that carries its help and bounds.

  Args:
    default: the value when none is given (tuples for sequences).
    help: one line for `--helpfull`.
    low: smallest value accepted (for a tuple: of each element).
    high: largest value accepted.
    above: the value must be larger than this.
    below: the value must be smaller than this.
    choices: the values accepted.
    length: for a tuple, the lengths accepted (e.g. `(0, 3)`).
    why: appended to the message of a value out of bounds.
    flag_default: the default of the command-line flag when it differs
      from the dataclass's (e.g. XLA on in training, off for models built
      in a notebook).
    on_resume: None: a resumed run that changes it is refused (it changes
      the model). A string: accepted, with this consequence in a warning.

  Returns:
    A `dataclasses.field`.
  """
  metadata = dict(help=help, low=low, high=high, above=above, below=below,
                  choices=tuple(choices) if choices is not None else None,
                  length=tuple(length) if length is not None else None,
                  why=why, flag_default=flag_default, on_resume=on_resume)
  return dataclasses.field(default=default, metadata=metadata)


def described(cls):
  """The fields of dataclass `cls` that were declared with `setting`."""
  return [f for f in dataclasses.fields(cls) if 'help' in f.metadata]


_KINDS = (bool, int, float, str, tuple)


def kind(field):
  """`bool`, `int`, `float`, `str` or `tuple`: what the field holds (its
  annotation, else its default's type)."""
  if field.type in _KINDS:
    return field.type
  value = field.default
  for candidate in _KINDS:
    if isinstance(value, candidate):
      return candidate
  raise TypeError(f'setting {field.name} has a default of unsupported type '
                  f'{type(value).__name__}.')


def flag_default(field):
  """The value a command-line flag of `field` defaults to."""
  value = field.metadata.get('flag_default', _MISSING)
  return field.default if value is _MISSING else value


def check_value(field, value):
  """Raises `SettingError` if `value` is not one `field` accepts."""
  meta = field.metadata
  name = field.name
  expected = kind(field)
  if value is None and field.default is None:
    return  # An optional setting left unset.
  if expected is tuple:
    if not isinstance(value, tuple):
      raise SettingError(name, f'must be a tuple, got {value!r}.')
    lengths = meta.get('length')
    if lengths is not None and len(value) not in lengths:
      counts = ' or '.join(str(n) for n in lengths)
      raise SettingError(name, f'takes {counts} values, got '
                         f'{",".join(map(str, value)) or "none"}.')
    items = value
  else:
    if not isinstance(value, expected) or (
        expected is int and isinstance(value, bool)):
      raise SettingError(name, f'must be a {expected.__name__}, got '
                         f'{value!r}.')
    items = (value,)
  why = f': {meta["why"]}' if meta.get('why') else '.'
  for item in items:
    if isinstance(item, float) and not math.isfinite(item):
      raise SettingError(name, f'must be a finite number, got {item}.')
    if meta.get('choices') is not None and item not in meta['choices']:
      accepted = ', '.join(map(str, meta['choices']))
      raise SettingError(name, f'must be one of {accepted}, got {item!r}.')
    if meta.get('low') is not None and item < meta['low']:
      raise SettingError(name, f'must be >= {meta["low"]}, got {item}{why}')
    if meta.get('high') is not None and item > meta['high']:
      raise SettingError(name, f'must be <= {meta["high"]}, got {item}{why}')
    if meta.get('above') is not None and item <= meta['above']:
      raise SettingError(name, f'must be > {meta["above"]}, got {item}{why}')
    if meta.get('below') is not None and item >= meta['below']:
      raise SettingError(name, f'must be < {meta["below"]}, got {item}{why}')


def check(instance):
  """Checks every described field of a frozen dataclass instance (its
  `__post_init__` calls this); raises `SettingError` for the first bad one.

  Lists given for tuple fields become tuples, and ints given for float
  fields floats, so a config equals itself after a round trip through JSON.
  """
  for field in described(type(instance)):
    value = getattr(instance, field.name)
    expected = kind(field)
    if expected is tuple and isinstance(value, list):
      value = tuple(value)
    elif expected is float and isinstance(value, int) and not isinstance(
        value, bool):
      value = float(value)
    object.__setattr__(instance, field.name, value)
    check_value(field, value)


def resume_notes(cls, prefix):
  """`{dotted field name: consequence}` of the fields of `cls` a resumed run
  may change (`on_resume`), under `prefix` (e.g. `model.params.`)."""
  return {prefix + f.name: f.metadata['on_resume'] for f in described(cls)
          if f.metadata.get('on_resume')}
