"""Publishes a model as the next SavedModel version TF Serving polls.

Versions go to `<export_dir>/<integer>/`, the layout TF Serving polls: the
next integer after the highest one there. Each is written under a hidden
temporary name in the same directory and renamed when complete, so a
half-written version is never visible, and an existing one is never
overwritten (rename refuses a non-empty target; the next number is tried).
"""

import os
import re
import shutil
import socket
import tempfile

from absl import logging
import tensorflow as tf

from pipeline.serving import restore
from pipeline.serving import signatures
from pipeline.serving import warmup


def _umask():
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def next_version(export_base):
  """The next integer version under `export_base` (1 for an empty base)."""
  if not os.path.isdir(export_base):
    return 1
  # Only plain ASCII digits name versions ('²'.isdigit() is true too).
  versions = [int(d) for d in os.listdir(export_base)
              if re.fullmatch('[0-9]+', d)]
  return max(versions, default=0) + 1


def _tmp_prefix(pid):
  return f'.tmp-export-{socket.gethostname()}-{pid}-'


def remove_stale_exports(export_base):
  """Removes temporary exports that killed exporters left in `export_base`.

  A temporary directory is named after its writer's host and pid; one of
  this host whose process no longer runs is provably stale. Others (a live
  exporter's, another host's) are left alone.

  Returns:
    The paths removed.
  """
  removed = []
  pattern = re.compile(
      re.escape(f'.tmp-export-{socket.gethostname()}-') + r'(\d+)-')
  for name in sorted(os.listdir(export_base)):
    match = pattern.match(name)
    if not match:
      continue
    try:
      os.kill(int(match.group(1)), 0)
      continue  # Its writer still runs.
    except ProcessLookupError:
      pass
    except PermissionError:
      continue  # Someone else's live process.
    path = os.path.join(export_base, name)
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
    logging.info('Removed %s, left by an export that did not finish.', path)
  return removed


def export_model(model, image_shape, export_base, class_names=(),
                 xla=False):
  """Writes `model` as the next version under `export_base`.

  Args:
    model: a built model whose call returns `lengths` and `poses`.
    image_shape: `(H, W, C)` of its inputs.
    export_base: the model's base directory (`exports/<name>`); its last
      path component names the model in the warmup requests.
    class_names: the classes' names, served as `class_names` (see
      `signatures.ServingModule`); empty: none.
    xla: compile the model's capsule part with XLA inside the signatures
      (`CapsuleModel.compile_inference`): faster, but served only by a TF
      Serving started with `--xla_cpu_compilation_enabled`. The default
      export holds plain TF ops.

  Returns:
    The path of the new version directory.

  Raises:
    PermissionError / OSError: if `export_base` cannot be written.
  """
  export_base = os.path.abspath(export_base)
  os.makedirs(export_base, exist_ok=True)
  module = signatures.ServingModule(model, image_shape, class_names)
  # The signatures are traced in the mode asked for, whatever mode the
  # caller's model is in (a Trainer's evaluates compiled), which is restored.
  previous = model.inference_compiled
  if model.compile_inference(xla) != xla:
    model.compile_inference(previous)
    raise ValueError(f'{type(model).__name__} has no XLA-compiled part to '
                     'export (train it with --jit_compile, or export '
                     'without --xla).')
  remove_stale_exports(export_base)
  tmp = tempfile.mkdtemp(prefix=_tmp_prefix(os.getpid()), dir=export_base)
  try:
    # mkdtemp makes it 0700 whatever the umask; a version is as readable
    # as the umask says (TF Serving often runs under another account).
    os.chmod(tmp, 0o777 & ~_umask())
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    warmup.write_warmup(
        os.path.join(tmp, warmup.WARMUP_FILE), os.path.basename(export_base),
        warmup.warmup_inputs(module.image_shape, model.num_classes,
                             model.pose_shape[1], module.has_decoder))
    while True:
      target = os.path.join(export_base, str(next_version(export_base)))
      try:
        os.rename(tmp, target)
        return target
      except OSError:
        if not os.path.isdir(target):
          raise
  finally:
    model.compile_inference(previous)
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def export_from_checkpoint(model_dir, export_base, checkpoint=None,
                           xla=False, precision=None):
  """Exports a checkpoint of a training run; returns the version path.
  `precision` builds the exported model in another precision than the
  run's (float32 for servers without native bf16, say)."""
  model, info = restore.load_checkpointed_model(model_dir, checkpoint,
                                                precision)
  return export_model(model, info['image_shape'], export_base,
                      info.get('class_names', ()), xla=xla)
