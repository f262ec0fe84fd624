"""Exports a trained capsule model as a SavedModel that TF Serving loads as is.

  python -m pipeline.export --model_dir=runs/fashion_mnist \
      --export_dir=exports/capsnet_fashion_mnist [--xla] [--precision=float32]

The command over `pipeline.serving`: the version layout and atomic publish
(`publish`), the signatures and what they refuse (`signatures`), the warm-up
records (`warmup`) and the checkpoint restore (`restore`).
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import sys

from absl import app
from absl import flags
import tensorflow as tf

from pipeline import config as config_lib
from pipeline.core import run_guard
from pipeline.serving import publish


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.model_dir or not f.export_dir:
    raise app.UsageError('--model_dir and --export_dir are both required.')
  # A refused export (no such run, a checkpoint that does not fit) leaves
  # no empty --export_dir behind.
  with run_guard.removed_if_unused(f.export_dir):
    try:
      run_guard.check_writable(f.export_dir, '--export_dir', min_free_bytes=0)
      path = publish.export_from_checkpoint(f.model_dir, f.export_dir,
                                            f.checkpoint or None, xla=f.xla,
                                            precision=f.precision)
    except (FileNotFoundError, ValueError, run_guard.RunGuardError) as e:
      sys.exit(str(e))
    except (OSError, tf.errors.OpError) as e:
      reason = run_guard.write_failure(e)
      if reason is None:
        raise
      sys.exit(f'Error: writing the export under {f.export_dir} failed '
               f'({reason}); nothing was published. Free space or fix the '
               'permissions, then run the same command.')
  print(f'Exported SavedModel to {path}')
  return 0


if __name__ == '__main__':
  flags.DEFINE_string('model_dir', None, 'Model directory of a training run.')
  flags.DEFINE_string('export_dir', None, 'Export base (exports/<name>).')
  flags.DEFINE_string('checkpoint', None, 'A checkpoint path (default: the '
                      'latest in model_dir/checkpoints).')
  flags.DEFINE_boolean('xla', False, 'Compile the capsule part with XLA '
                       'inside the signatures (faster; needs TF Serving '
                       'with --xla_cpu_compilation_enabled).')
  flags.DEFINE_enum('precision', None, config_lib.PRECISIONS, 'Export the '
                    "model in this precision instead of the run's (its "
                    'weights are float32 in every one): float32 for servers '
                    'without native bf16, where a bf16 export is emulated.')
  sys.exit(app.run(main))
