"""Imports TensorFlow with its C++ start-up chatter silenced, for the tools.

On a CPU machine TensorFlow prints a dozen lines before a tool's first own
line: oneDNN and CPU-feature notes, 'Could not find cuda drivers', an
`E0000 ... failed call to cuInit` that is no error at all. Since TF 2.16
these come from absl's C++ logging before it is initialised, so
`TF_CPP_MIN_LOG_LEVEL` no longer hides them; the tools import this module
first, and it imports TensorFlow (and finds its devices) with the process's
stderr pointed at /dev/null. TensorFlow's Python modules log through absl
like the pipeline does (`Using MirroredStrategy ...`, `Sharding callback
duration ...`) or through the `tensorflow` logger (`Assets written to`):
the latter is lowered to warnings, and a filter on absl's handler keeps
INFO lines from the pipeline's own modules and warnings and errors from
everywhere.

A user's own `TF_CPP_MIN_LOG_LEVEL` (any value) or `--verbosity` of 1 or
more on the command line leaves everything as TensorFlow prints it. The
level this module sets is marked as its own, so the tools' child processes
are quiet as well.
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


# Set beside TF_CPP_MIN_LOG_LEVEL when this module sets it: a child process
# (an experiment's training run, a benchmark's scaling run) inherits both,
# and is quiet too rather than taking the level for the user's own.
_SET_HERE = 'PIPELINE_QUIET_TF_CPP_MIN_LOG_LEVEL'
_LEVEL = '2'


def _wanted():
  level = os.environ.get('TF_CPP_MIN_LOG_LEVEL')
  if level is not None and level != os.environ.get(_SET_HERE):
    return False
  for i, arg in enumerate(sys.argv):
    value = None
    if arg.startswith(('--verbosity=', '-v=')):
      value = arg.split('=', 1)[1]
    elif arg in ('--verbosity', '-v') and i + 1 < len(sys.argv):
      value = sys.argv[i + 1]
    if value is not None:
      try:
        return int(value) < 1
      except ValueError:
        return True
  return True


@contextlib.contextmanager
def _stderr_to_devnull():
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


QUIET = _wanted()
if QUIET:
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = os.environ[_SET_HERE] = _LEVEL
  with _stderr_to_devnull():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
    # The first device query loads the (absent) CUDA runtime: its cuInit
    # error line comes here, not at the first op.
    tf.config.list_physical_devices('GPU')
  tf.get_logger().setLevel(std_logging.WARNING)
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or
      record.pathname.startswith(_PACKAGE_DIR))
