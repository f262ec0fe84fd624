"""Command-line flags of the training tools and their conversion to a config.

Every value is checked before any work starts; a bad one stops the tool with
one line that names the flag and what it accepts.
"""

import dataclasses
import math
import os

from absl import flags
from absl import logging

from pipeline import autotune
from pipeline import config as config_lib
from pipeline import hardware
from pipeline import schedules
from pipeline.data import sources
from pipeline.data import tfds_source
from pipeline.data.base import DataError
from pipeline.models import layers
from pipeline.models import registry
from pipeline.models.capsnet import CapsNetConfig

_D = config_lib.TrainConfig()
_M = CapsNetConfig()
_S = sources.DataSpec()

# Flags that set a model option (a field of the chosen model's config class).
# A model takes those of its fields; one it does not take is refused when
# given with a value other than its default.
# Float flags; each must be a finite number (NaN compares false with every
# bound, so it would pass a range check).
FLOAT_FLAGS = ('learning_rate', 'lr_decay_rate', 'reconstruction_weight',
               'm_plus', 'm_minus', 'down_weight', 'target_accuracy',
               'test_fraction')
# Routing is unrolled into the compiled step: its compile time grows with
# the iterations (1,000 took about 15 minutes to compile here; the papers
# use 2 or 3).
MAX_ROUTING_ITERATIONS = 10

MODEL_FLAGS = ('routing_iterations', 'stop_inner_gradients', 'conv_filters',
               'primary_channels', 'primary_dim', 'class_dim',
               'decoder_units', 'use_decoder', 'class_bias', 'jit_compile',
               'routing_dtype', 'recompute_routing')


def define_flags():
  """Defines the training flags (idempotent)."""
  if 'model' in flags.FLAGS:
    return
  # Model.
  flags.DEFINE_enum('model', 'capsnet', sorted(registry.MODELS),
                    'Model to train.')
  flags.DEFINE_integer('routing_iterations', _M.routing_iterations,
                       'Dynamic routing iterations (paper: 3).')
  flags.DEFINE_boolean('stop_inner_gradients', _M.stop_inner_gradients,
                       'Stop gradients through the inner routing iterations.')
  flags.DEFINE_integer('conv_filters', _M.conv_filters, 'Conv1 channels.')
  flags.DEFINE_integer('primary_channels', _M.primary_channels,
                       'Primary capsule channels.')
  flags.DEFINE_integer('primary_dim', _M.primary_dim, 'Primary capsule size.')
  flags.DEFINE_integer('class_dim', _M.class_dim, 'Class capsule size.')
  flags.DEFINE_list('decoder_units', list(map(str, _M.decoder_units)),
                    'Hidden units of the reconstruction decoder.')
  flags.DEFINE_boolean('use_decoder', _M.use_decoder,
                       'Train with the reconstruction decoder.')
  flags.DEFINE_boolean('class_bias', _M.class_bias,
                       'Add a bias to the class capsules (+classes*dim).')
  # On by default for training (CapsNetConfig's False is for models built
  # outside the trainer, e.g. in tests and notebooks).
  flags.DEFINE_boolean('jit_compile', True,
                       'Compile the class capsules (u_hat, routing) with XLA '
                       'in training steps.')
  flags.DEFINE_enum('routing_dtype', _M.routing_dtype, layers.ROUTING_DTYPES,
                    'What CapsNet computes u_hat and the routing passes in; '
                    'bfloat16 halves their memory traffic (sums, softmax and '
                    'squash stay float32).')
  flags.DEFINE_boolean('recompute_routing', False,
                       'matrix_capsnet: recompute each EM iteration in the '
                       'backward pass instead of keeping its temporaries '
                       '(less memory, slower step).')
  flags.DEFINE_enum('precision', 'float32',
                    (hardware.AUTO,) + config_lib.PRECISIONS,
                    'float32, or mixed precision: 16-bit convolutions and '
                    'decoder, float32 routing, squash and losses '
                    '(mixed_float16 adds loss scaling; for GPUs). auto: '
                    'mixed_bfloat16 on CPUs with avx512_bf16/amx_bf16 and '
                    'GPUs of compute capability >= 8.0, mixed_float16 on '
                    'GPUs of 7.x, float32 elsewhere; a resumed run keeps '
                    'what it resolved at its start.')
  flags.DEFINE_enum('autotune', 'cached', autotune.POLICIES,
                    'How each layer\'s formulation (e.g. strided or '
                    'space-to-depth convolution, u_hat layout, XLA) is '
                    'chosen: cached (measure once per machine, then reuse), '
                    'probe (measure now), off (the layers\' defaults).')
  # Data.
  flags.DEFINE_enum('dataset', _S.dataset, sorted(sources.DATASETS),
                    'Data set.')
  flags.DEFINE_string('data_dir', _S.data_dir,
                      'TFDS data dir, or the IDX directory with '
                      '--data_source=idx.')
  flags.DEFINE_enum('data_source', _S.data_source, sources.DATA_SOURCES,
                    'Where mnist/fashion_mnist come from.')
  flags.DEFINE_enum('base_dataset', _S.base_dataset, sources.DIGIT_BASES,
                    'Digits of multimnist / affnist.')
  flags.DEFINE_integer('shift_pixels', _S.shift_pixels,
                       'Training shift augmentation in pixels (paper: 2).')
  flags.DEFINE_integer('canvas_size', _S.canvas_size,
                       'affNIST canvas side for the translated digits.')
  flags.DEFINE_string('affnist_dir', _S.affnist_dir,
                      'Directory of affNIST .mat files (its test split).')
  flags.DEFINE_enum('overlay', _S.overlay, ['max', 'sum'],
                    'MultiMNIST overlay of the two digits.')
  flags.DEFINE_enum('viewpoints', _S.viewpoints,
                    sorted(tfds_source.VIEWPOINTS),
                    'smallnorb: all, or a novel-viewpoint split (train on '
                    'familiar azimuths/elevations, test on novel ones).')
  flags.DEFINE_integer('validation_size', _S.validation_size,
                       'Training examples held back as the validation split.')
  flags.DEFINE_boolean('download', _S.download,
                       'Let TFDS download data that is not prepared.')
  flags.DEFINE_list('synthetic_shape', list(map(str, _S.synthetic_shape)),
                    'H,W,C of the synthetic data set.')
  flags.DEFINE_list('image_shape', [],
                    'image_folder: H,W,C every image is converted to (C: 1 '
                    'grey or 3 RGB). Empty: the images\' own shape.')
  flags.DEFINE_float('test_fraction', _S.test_fraction,
                     'image_folder without train/ and test/ sub-folders: '
                     'share of each class held back as the test split.')
  flags.DEFINE_integer('synthetic_classes', _S.synthetic_classes,
                       'Classes of the synthetic data set.')
  flags.DEFINE_list('synthetic_size', list(map(str, _S.synthetic_size)),
                    'train,test examples of the synthetic data set.')
  # Run.
  flags.DEFINE_string('model_dir', _D.model_dir,
                      'Checkpoints, summaries, config and metrics go here.')
  flags.DEFINE_string('export_dir', _D.export_dir,
                      'Export base (exports/<name>); empty: no export.')
  flags.DEFINE_integer('batch_size', _D.batch_size, 'Global batch size.')
  flags.DEFINE_integer('eval_batch_size', _D.eval_batch_size,
                       'Global evaluation batch size.')
  flags.DEFINE_integer('train_steps', _D.train_steps, 'Total training steps.')
  flags.DEFINE_integer('steps_per_loop', _D.steps_per_loop,
                       'Steps per tf.function call.')
  flags.DEFINE_integer('log_every', _D.log_every, 'Steps between log lines.')
  flags.DEFINE_integer('eval_every', _D.eval_every, 'Steps between evals.')
  flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                       'Steps between checkpoints.')
  flags.DEFINE_integer('max_checkpoints', _D.max_checkpoints,
                       'Checkpoints kept.')
  flags.DEFINE_float('learning_rate', _D.learning_rate, 'Adam learning rate.')
  flags.DEFINE_float('lr_decay_rate', _D.lr_decay_rate,
                     'Exponential learning-rate decay per lr_decay_steps.')
  flags.DEFINE_integer('lr_decay_steps', _D.lr_decay_steps,
                       'exponential: steps per decay of lr_decay_rate; '
                       'cosine: steps of the decay to 0 after the warm-up.')
  flags.DEFINE_enum('lr_schedule', _D.lr_schedule, schedules.SCHEDULES,
                    'exponential (the paper) or cosine (warm-up, then a '
                    'half cosine to 0; for short runs).')
  flags.DEFINE_integer('warmup_steps', _D.warmup_steps,
                       'Steps of linear learning-rate warm-up from 0.')
  flags.DEFINE_float('reconstruction_weight', _D.reconstruction_weight,
                     'Weight of the reconstruction loss (paper: 0.0005).')
  flags.DEFINE_float('m_plus', _D.m_plus, 'Margin loss m+.')
  flags.DEFINE_float('m_minus', _D.m_minus, 'Margin loss m-.')
  flags.DEFINE_float('down_weight', _D.down_weight, 'Margin loss lambda.')
  flags.DEFINE_integer('spread_anneal_steps', _D.spread_anneal_steps,
                       'matrix_capsnet: steps over which the spread-loss '
                       'margin grows from 0.2 to 0.9.')
  flags.DEFINE_enum('strategy', _D.strategy, config_lib.STRATEGIES,
                    'tf.distribute strategy.')
  flags.DEFINE_integer('cpu_devices', _D.cpu_devices,
                       'Without GPUs: split the CPU into this many logical '
                       'devices for --strategy=mirrored.')
  flags.DEFINE_integer('seed', _D.seed, 'Seed of weights, shuffling and '
                       'augmentation.')
  flags.DEFINE_boolean('deterministic', _D.deterministic,
                       'Deterministic ops and input order (reproductions).')
  flags.DEFINE_enum('eval_split', _D.eval_split, list(sources.SPLITS),
                    'Split evaluated during and after training.')
  flags.DEFINE_float('target_accuracy', _D.target_accuracy,
                     'Stop at the first evaluation (--eval_every, on '
                     '--eval_split) whose accuracy reaches this, e.g. 0.99; '
                     'the run ends there as if --train_steps were reached. '
                     '0: train all --train_steps.')
  flags.DEFINE_list('profile_steps', [],
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
                    ('routing_iterations', 1), ('lr_decay_steps', 1),
                    ('conv_filters', 1), ('primary_channels', 1),
                    ('primary_dim', 1), ('class_dim', 1), ('cpu_devices', 0),
                    ('shift_pixels', 0), ('validation_size', 0),
                    ('spread_anneal_steps', 1), ('warmup_steps', 0),
                    ('seed', 0)):
    _at_least(name, f[name].value, low)
  if f.routing_iterations > MAX_ROUTING_ITERATIONS:
    raise ValueError(
        f'--routing_iterations must be <= {MAX_ROUTING_ITERATIONS}, got '
        f'{f.routing_iterations}: each iteration is unrolled into the '
        'compiled step, so its compile time grows with them (the papers use '
        '2 or 3).')
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

  Raises:
    ValueError: naming a flag the chosen model does not take (given with a
      value other than its default), and the flags it does take.
  """
  f = f or flags.FLAGS
  taken = registry.option_names(f.model)
  options = {}
  for name in MODEL_FLAGS:
    value = f[name].value
    if name in taken:
      options[name] = (_ints(name, value, len(value))
                       if name == 'decoder_units' else value)
    elif f[name].present and value != f[name].default:
      accepted = [n for n in MODEL_FLAGS if n in taken]
      raise ValueError(
          f'--{name} is not an option of --model={f.model}: it would be '
          'ignored. Remove it, or pick a model that takes it'
          + (f' ({f.model} takes '
             f'{", ".join("--" + n for n in accepted)}).' if accepted else
             f' ({f.model} takes none of the model flags).'))
  return config_lib.model_spec(
      f.model, resolve_precision(f.precision, f.model_dir), **options)


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
