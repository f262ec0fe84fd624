"""Test setup: quiet TF logs and two logical CPU devices for strategy tests."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The tools' --autotune=cached default keeps its choices in one file shared
# by the test processes (and the commands they start), not in the user's
# ~/.cache.
os.environ.setdefault('CAPSNET_AUTOTUNE_CACHE', os.path.join(
    __import__('tempfile').gettempdir(), 'capsnet-tests-autotune.json'))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Must happen before TF initialises its devices: tests compare one device
# against a MirroredStrategy over these two.
_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

# Tests compare float32 results at 1e-5 and tighter; TF32 (on by default on
# Ampere and later GPUs) rounds matmul and convolution inputs to 10 bits.
# The commands the tests start run as users run them, TF32 and all.
tf.config.experimental.enable_tensor_float_32_execution(False)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tools():
  """The `python -m pipeline.<tool>` commands: the modules that run
  themselves through absl's app.run (found, not listed by hand). Read from
  the checkout itself (under Bazel, through the runfiles' symlinks), which
  holds every module whatever a test's deps."""
  import glob  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(os.path.dirname(
      os.path.realpath(__file__))), 'pipeline')
  found = []
  for path in sorted(glob.glob(os.path.join(root, '**', '*.py'),
                               recursive=True)):
    with open(path) as f:
      if 'app.run(main)' in f.read():
        found.append(os.path.relpath(path[:-3], root))
  return tuple(found)


import logging as _std_logging  # pylint: disable=g-import-not-at-top,g-bad-import-order
import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


@pytest.fixture(autouse=True)
def _absl_log_level():
  """Each test starts with the absl logger's level as the session began.

  TensorFlow's SavedModel writer sets absl's verbosity to FATAL while it
  walks the model and then back to what `get_verbosity()` said, which is
  the root logger's WARNING when the absl logger has no level of its own
  (as under pytest; the tools set INFO). Without this, every INFO line a
  later test of the same process expects in `caplog` would be gone.
  """
  logger = _std_logging.getLogger('absl')
  level = logger.level
  yield
  logger.setLevel(level)


def main(path):
  """Runs one test module as a script (as Bazel's py_test does), through
  pytest, so its fixtures and this file's setup apply the same way."""
  sys.exit(pytest.main([path, '-q', '-p', 'no:cacheprovider']))
