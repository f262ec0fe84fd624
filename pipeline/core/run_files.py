"""The files that make a run resumable and readable: its config, data
description, reproduction flagfile, autotune record and `metrics.json`.

`check_same_run` compares a resumed run's saved config with the new one
before anything in the model directory is touched; `write_run_files`
writes the resolved ones; `MetricsFile` keeps every evaluation;
`hparams` is the run's settings as TensorBoard HParams.
"""

import json
import os

from absl import logging

from pipeline import config as config_lib
from pipeline.core import atomic
from pipeline.core import run_guard
from pipeline.core.checkpoints import FLAGS_FILE
from pipeline.perf import autotune

METRICS_FILE = 'metrics.json'
# Settings that tell the machine a run ran on, not the run: no HParams.
_NOT_HPARAMS = ('runtime.strategy', 'runtime.cpu_devices',
                'runtime.deterministic')


def check_same_run(work_dir, config, log_notes=True):
  """Compares the saved config of a resumed run with `config`.

  `log_notes=False` only refuses (a check before the model is built and
  probed, whose accepted changes the locked check logs once).

  Raises:
    run_guard.RunGuardError: naming every changed field that would change
      the model or its training, and how to proceed. Changes that do not
      (more steps, another evaluation cadence) pass; those with a stated
      consequence are logged.
  """
  path = os.path.join(work_dir, config_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = config_lib.TrainConfig.from_json(f.read())
  except (ValueError, TypeError, KeyError) as e:
    raise run_guard.RunGuardError(
        f'{path} cannot be read ({type(e).__name__}: {e}); it is what makes '
        'a resume safe. Restore it, or pick a new --model_dir.') from None
  refused, noted = config_lib.config_changes(saved, config)
  if refused:
    lines = '; '.join(f'--{name} was {old!r}, now {new!r}'
                      for name, old, new in refused)
    raise run_guard.RunGuardError(
        f'{work_dir} holds a run with other settings ({lines}). '
        'Resuming would not continue that run. Re-run with its flags '
        f'(--flagfile={os.path.join(work_dir, FLAGS_FILE)}), or pick '
        'a new --model_dir for the new settings.')
  for name, old, new, consequence in noted if log_notes else ():
    logging.warning('--%s changed from %r to %r: %s', name, old, new,
                    consequence)


def write_run_files(work_dir, config, info, flags_text, autotune_record):
  """Writes the resolved config, the data description, flags.txt (when
  `flags_text` is not None) and the formulations autotune chose."""
  files = {
      config_lib.CONFIG_FILE: config.to_json(),
      config_lib.INFO_FILE: json.dumps({
          'name': info.name, 'image_shape': list(info.image_shape),
          'num_classes': info.num_classes,
          'split_sizes': info.split_sizes,
          'num_targets': info.num_targets,
          'class_names': list(info.class_names)}, indent=2),
  }
  if flags_text is not None:
    files[FLAGS_FILE] = flags_text
  files[autotune.RECORD_FILE] = json.dumps(autotune_record, indent=2,
                                           default=str)
  for name, text in files.items():
    atomic.write_atomic(os.path.join(work_dir, name), text)


class MetricsFile:
  """`metrics.json`: every evaluation of the run, oldest first, and the
  latest; rewritten atomically after each one."""

  def __init__(self, work_dir):
    self.path = os.path.join(work_dir, METRICS_FILE)

  def history(self):
    return run_guard.read_metrics_history(self.path)

  def append(self, results, step):
    history = self.history()
    history.append(dict(results, step=int(step)))
    atomic.write_atomic(self.path, json.dumps(
        {'latest': history[-1], 'history': history}, indent=2))

  def evaluation_at(self, step, split):
    """The newest evaluation at `step` on `split`, or None."""
    for entry in reversed(self.history()):
      if (isinstance(entry, dict) and entry.get('step') == step and
          entry.get('split') == split):
        return entry
    return None


def hparams(config) -> dict:
  """The run's settings as TensorBoard HParams: scalars and strings.

  Run-control fields (directories, cadences, the machine's replicas) are
  left out, and so are the data fields this data set does not use: they do
  not tell runs apart.
  """
  idle = {f'data.{name}' for name in config.data.idle_fields()}
  skip = set(config_lib.FREE_FIELDS) | set(_NOT_HPARAMS) | idle
  values = {}
  for key, value in config_lib.flat_fields(config).items():
    if key in skip:
      continue
    name = config_lib.flat_name(key).replace('model.params.', '').replace(
        'data.', 'data_')
    if isinstance(value, (tuple, list)):
      value = ','.join(map(str, value))
    elif value is None:
      value = ''
    values[name.replace('.', '_')] = value
  return values
