"""Distribution strategies by name, and which worker is the chief."""

import tensorflow as tf

from pipeline import config as config_lib


def make_strategy(name, cpu_devices=0):
  """Creates the distribution strategy named by `--strategy`.

  Args:
    name: 'mirrored' (all local GPUs, else the CPU), 'multi_worker'
      (`MultiWorkerMirroredStrategy` from TF_CONFIG) or 'one_device'.
    cpu_devices: on a machine without GPUs, split the CPU into this many
      logical devices for 'mirrored' (tests of multi-replica behaviour).
      Must be set before TensorFlow initialises its devices.

  Returns:
    A `tf.distribute.Strategy`.
  """
  if name not in config_lib.STRATEGIES:
    raise ValueError(f'strategy must be one of {config_lib.STRATEGIES}, got '
                     f'{name!r}.')
  gpus = tf.config.list_physical_devices('GPU')
  if cpu_devices > 1 and not gpus:
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
  if name == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy('/gpu:0' if gpus else '/cpu:0')
  if gpus:
    return tf.distribute.MirroredStrategy()
  cpus = [d.name for d in tf.config.list_logical_devices('CPU')]
  return tf.distribute.MirroredStrategy(cpus)


def is_chief(strategy):
  """True on the worker that writes summaries, checkpoints and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return (resolver.task_type == 'chief' or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))
