"""Exports a trained capsule model as a SavedModel that TF Serving loads as is.

  python -m pipeline.export --model_dir=runs/fashion_mnist \
      --export_dir=exports/capsnet_fashion_mnist [--xla]

Versions go to `<export_dir>/<integer>/`, the layout TF Serving polls: the
next integer after the highest one there. Each is written under a hidden
temporary name in the same directory and renamed when complete, so a
half-written version is never visible, and an existing one is never
overwritten (rename refuses a non-empty target; the next number is tried).

Signatures (dynamic batch dimension, named inputs and outputs):
  serving_default  images float32 [batch, H, W, C] in [0, 1]
                   → probabilities [batch, classes] (capsule lengths),
                     classes int64 [batch], poses [batch, classes, dim],
                     and class_names string [batch] when the training data
                     named its classes (an image folder's sub-folders)
  predict_images   images string [batch] (encoded PNG, JPEG, GIF, BMP or
                   WebP, grey or colour, any size up to MAX_IMAGE_PIXELS,
                   all frames of an animation counted) → the same
                   outputs; decoded, converted to the model's channels (1 or
                   3) and resized in the graph
  reconstruct      images [batch, H, W, C], class_ids int64 [batch]
                   → reconstructions [batch, H, W, C], poses
  decode           poses [batch, classes, dim], class_ids int64 [batch]
                   → reconstructions (to inspect or perturb a pose)
`assets.extra/tf_serving_warmup_requests` holds one PredictionLog per
signature, so TF Serving warms the model up before it takes traffic.

Every signature refuses what it cannot answer, with a message naming the
input: images of another shape, NaN/Inf pixels or pixels outside [0, 1],
class ids outside [0, classes) or not one per example, poses of another
capsule shape, encoded images larger than MAX_IMAGE_PIXELS (checked from the
header, before any pixel is decoded). A batch of zero examples gets an
empty answer of the right shape.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import os
import re
import shutil
import socket
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import run_guard
from pipeline.models import registry

WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')
# Signatures run large requests in chunks of this many images, so memory
# stays bounded (u_hat alone is ~0.7 MB per MNIST image in float32).
SERVING_CHUNK = 128
# The most pixels predict_images decodes from one encoded image: 4096 x 4096
# (64 MiB as 4-channel uint8, 256 MiB as float32), all frames of an animated
# GIF or WebP counted; larger ones are refused from their headers before
# decoding.
MAX_IMAGE_PIXELS = 4096 * 4096


def _uint(data, offset, size, big_endian):
  """Unsigned integer of `size` bytes at `offset` of a string, int64."""
  raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, size),
                                 tf.uint8), tf.int64)
  powers = tf.range(size, dtype=tf.int64)
  if big_endian:
    powers = tf.reverse(powers, [0])
  return tf.reduce_sum(raw * (256 ** powers))


def _byte(data, pos):
  """The byte at `pos` of a string (0 past its end), int64."""
  padded = data + b'\0'
  last = tf.cast(tf.strings.length(padded), tf.int64) - 1
  raw = tf.io.decode_raw(
      tf.strings.substr(padded, tf.minimum(tf.cast(pos, tf.int64), last), 1),
      tf.uint8)
  return tf.cast(tf.reduce_sum(raw), tf.int64)


def _gif_frames(data):
  """How many frames a GIF holds, by walking its blocks (the decoder
  decodes every frame, each of the logical screen's size)."""
  n = tf.cast(tf.strings.length(data), tf.int64)
  flags = _byte(data, 10)
  table = tf.where(flags >= 128, 3 * 2 ** (flags % 8 + 1),
                   tf.constant(0, tf.int64))

  # mode 0: at a block's introducer; mode 1: in its data sub-blocks.
  def body(pos, frames, mode):
    b = _byte(data, pos)
    image = tf.logical_and(tf.equal(mode, 0), tf.equal(b, 0x2C))
    extension = tf.logical_and(tf.equal(mode, 0), tf.equal(b, 0x21))
    local = _byte(data, pos + 9)
    local_table = tf.where(local >= 128, 3 * 2 ** (local % 8 + 1),
                           tf.constant(0, tf.int64))
    pos_next = tf.where(
        image, pos + 11 + local_table,
        tf.where(extension, pos + 2,
                 tf.where(tf.equal(mode, 1), pos + b + 1, n)))
    mode_next = tf.where(tf.logical_or(image, extension),
                         tf.constant(1, tf.int64),
                         tf.where(tf.logical_and(tf.equal(mode, 1),
                                                 tf.equal(b, 0)),
                                  tf.constant(0, tf.int64), mode))
    return pos_next, frames + tf.cast(image, tf.int64), mode_next

  _, frames, _ = tf.while_loop(
      lambda pos, frames, mode: pos < n, body,
      (13 + table, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
  return tf.maximum(frames, 1)


def _webp_pixels(padded, data):
  """Pixels of every frame a WebP declares: the canvas times the
  animation frames (ANMF chunks), from its RIFF chunks."""
  chunk = tf.strings.substr(padded, 12, 4)
  lossy = (_uint(padded, 26, 2, False) % 16384) * (
      _uint(padded, 28, 2, False) % 16384)
  bits = _uint(padded, 21, 4, False)
  lossless = (bits % 16384 + 1) * (bits // 16384 % 16384 + 1)
  canvas = (_uint(padded, 24, 3, False) + 1) * (_uint(padded, 27, 3, False) + 1)
  n = tf.cast(tf.strings.length(data), tf.int64)

  def body(pos, frames):
    size = _uint(padded, pos + 4, 4, False)
    anmf = tf.equal(tf.strings.substr(data + b'\0' * 8, pos, 4), b'ANMF')
    return pos + 8 + size + size % 2, frames + tf.cast(anmf, tf.int64)

  _, frames = tf.while_loop(lambda pos, frames: pos + 8 <= n, body,
                            (tf.constant(12, tf.int64),
                             tf.constant(0, tf.int64)))
  extended = canvas * tf.maximum(frames, 1)
  return tf.case([(tf.equal(chunk, b'VP8 '), lambda: lossy),
                  (tf.equal(chunk, b'VP8L'), lambda: lossless),
                  (tf.equal(chunk, b'VP8X'), lambda: extended)],
                 default=lambda: tf.constant(0, tf.int64))


def animated_webp(data):
  """Whether `data` is a WebP with the animation flag (an animated WebP
  must carry it, in its VP8X chunk): TensorFlow 2.21's decoder corrupts
  memory on those inside a graph (the process aborts), so they are refused
  before decoding."""
  padded = data + b'\0' * 32
  return tf.reduce_all(tf.stack([
      tf.equal(tf.strings.substr(padded, 0, 4), b'RIFF'),
      tf.equal(tf.strings.substr(padded, 8, 4), b'WEBP'),
      tf.equal(tf.strings.substr(padded, 12, 4), b'VP8X'),
      tf.equal(_byte(data, 20) // 2 % 2, 1)]))


def encoded_pixels(data):
  """Pixels an encoded PNG, JPEG, GIF, BMP or WebP decodes to, from its
  headers alone: height x width, times the frames for an animated GIF or
  WebP (their decoders decode every frame). 0 for other bytes (decoding
  then refuses them)."""
  padded = data + b'\0' * 32  # Header reads never run past the end.
  magic = tf.strings.substr(padded, 0, 4)

  def jpeg():
    return tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2],
                                  tf.int64))

  def other():
    png = _uint(padded, 16, 4, True) * _uint(padded, 20, 4, True)
    gif = _uint(padded, 6, 2, False) * _uint(padded, 8, 2, False)
    # A BMP's height is negative for top-down rows.
    bmp_height = _uint(padded, 22, 4, False)
    bmp_height = tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height,
                          bmp_height)
    bmp = _uint(padded, 18, 4, False) * bmp_height
    webp = tf.logical_and(tf.equal(magic, b'RIFF'), tf.equal(
        tf.strings.substr(padded, 8, 4), b'WEBP'))
    return tf.case([(tf.equal(magic, b'\x89PNG'), lambda: png),
                    (tf.equal(tf.strings.substr(magic, 0, 3), b'GIF'),
                     lambda: gif * _gif_frames(data)),
                    (tf.equal(tf.strings.substr(magic, 0, 2), b'BM'),
                     lambda: bmp),
                    (webp, lambda: _webp_pixels(padded, data))],
                   default=lambda: tf.constant(0, tf.int64))

  return tf.cond(tf.equal(tf.strings.substr(magic, 0, 2), b'\xff\xd8'), jpeg,
                 other)


class ServingModule(tf.Module):
  """A built capsule model wrapped with the serving signatures.

  Args:
    model: a built `pipeline.models.base.CapsuleModel`.
    image_shape: `(H, W, C)` of its inputs.
    class_names: the classes' names; when given, serving_default and
      predict_images also return `class_names` (string `[batch]`, the name
      of each predicted class).
  """

  def __init__(self, model, image_shape, class_names=()):
    super().__init__()
    self.model = model
    self.image_shape = tuple(int(d) for d in image_shape)
    self.class_names = tuple(str(n) for n in class_names)
    if self.class_names and len(self.class_names) != model.num_classes:
      raise ValueError(f'{len(self.class_names)} class names for a '
                       f'{model.num_classes}-class model.')
    images = tf.TensorSpec([None, *self.image_shape], tf.float32, 'images')
    class_ids = tf.TensorSpec([None], tf.int64, 'class_ids')
    self.serving_default = tf.function(self._predict, input_signature=[images])
    self.predict_images = tf.function(
        self._predict_encoded,
        input_signature=[tf.TensorSpec([None], tf.string, 'images')])
    self.has_decoder = model.has_decoder
    if self.has_decoder:
      num_classes, dim = model.pose_shape
      self.reconstruct = tf.function(self._reconstruct,
                                     input_signature=[images, class_ids])
      self.decode = tf.function(self._decode, input_signature=[
          tf.TensorSpec([None, num_classes, dim], tf.float32, 'poses'),
          class_ids])

  def _check(self, images):
    # Loaded signatures do not check shapes themselves: a wrong one fails here
    # with a message that names the expected [batch, H, W, C].
    images = tf.ensure_shape(images, [None, *self.image_shape])
    checks = [
        tf.debugging.assert_all_finite(
            images, 'images hold NaN or Inf pixels; send finite values in '
            '[0, 1].'),
        tf.debugging.assert_greater_equal(
            images, 0.0, message='images must lie in [0, 1] (scale 8-bit '
            'pixels by 1/255); found a pixel below 0.'),
        tf.debugging.assert_less_equal(
            images, 1.0, message='images must lie in [0, 1] (scale 8-bit '
            'pixels by 1/255); found a pixel above 1.'),
    ]
    with tf.control_dependencies(checks):
      return tf.identity(images)

  @staticmethod
  def _vector(tensor, what):
    """`tensor`, checked at run time to be rank 1 (a loaded signature lets
    any rank through, and a scalar would fail deep inside)."""
    check = tf.debugging.assert_equal(
        tf.size(tf.shape(tensor)), 1,
        message=f'{what} must be a vector [batch], one per example; got a '
        'tensor of another rank.')
    with tf.control_dependencies([check]):
      return tf.ensure_shape(tf.identity(tensor), [None])

  def _check_ids(self, class_ids, batch):
    classes = self.model.num_classes
    class_ids = self._vector(class_ids, 'class_ids (int64)')
    checks = [
        tf.debugging.assert_equal(
            tf.shape(class_ids)[0], batch, message='class_ids must hold one '
            'class per example of the batch.'),
        tf.debugging.assert_greater_equal(
            class_ids, tf.constant(0, tf.int64), message=f'class_ids must lie '
            f'in [0, {classes}); found one below 0.'),
        tf.debugging.assert_less(
            class_ids, tf.constant(classes, tf.int64), message=f'class_ids '
            f'must lie in [0, {classes}); found one of {classes} or more.'),
    ]
    with tf.control_dependencies(checks):
      return tf.identity(class_ids)

  def _chunked(self, fn, dtypes, *tensors):
    """Applies `fn` to consecutive chunks of the batch and concatenates.

    `dtypes` maps each output of `fn` to its dtype and its shape past the
    batch dimension.
    """
    n = tf.shape(tensors[0])[0]
    chunks = (n + SERVING_CHUNK - 1) // SERVING_CHUNK

    def body(i, acc):
      start = i * SERVING_CHUNK
      size = tf.minimum(SERVING_CHUNK, n - start)
      part = fn(*[t[start:start + size] for t in tensors])
      return i + 1, {k: acc[k].write(i, v) for k, v in part.items()}

    # Each output's shape past the batch is known, so an empty batch
    # concatenates to an empty answer of the right shape.
    acc = {k: tf.TensorArray(d, size=chunks, infer_shape=False,
                             element_shape=tf.TensorShape([None, *shape]))
           for k, (d, shape) in dtypes.items()}
    _, acc = tf.while_loop(lambda i, _: i < chunks, body, (0, acc),
                           parallel_iterations=1)
    return {k: v.concat() for k, v in acc.items()}

  def _predict_chunk(self, images):
    outputs = self.model(images, training=False)
    classes = tf.argmax(outputs['lengths'], axis=-1)
    answer = {'probabilities': outputs['lengths'], 'classes': classes,
              'poses': outputs['poses']}
    if self.class_names:
      answer['class_names'] = tf.gather(tf.constant(self.class_names),
                                        classes)
    return answer

  def _outputs(self):
    classes, dim = self.model.pose_shape
    outputs = {'probabilities': (tf.float32, [classes]),
               'classes': (tf.int64, []),
               'poses': (tf.float32, [classes, dim])}
    if self.class_names:
      outputs['class_names'] = (tf.string, [])
    return outputs

  def _predict(self, images):
    return self._chunked(self._predict_chunk, self._outputs(),
                         self._check(images))

  def _decode_one(self, data):
    h, w, c = self.image_shape
    pixels = encoded_pixels(data)
    check = tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f'An encoded image is larger than {MAX_IMAGE_PIXELS} pixels '
        '(4096 x 4096, all frames of an animation counted); resize it, or '
        'send one frame, before sending.')
    still = tf.debugging.assert_equal(
        animated_webp(data), False,
        message='Animated WebP images are not accepted (TensorFlow cannot '
        'decode them safely); send one frame, as PNG or a still WebP.')
    with tf.control_dependencies([check, still]):
      # Decoded with its own channels (GIF decodes to RGB, BMP may carry
      # alpha), then converted to the model's.
      image = tf.io.decode_image(data, expand_animations=False)
    channels = tf.shape(image)[-1]
    if c in (1, 3):
      grey = image[..., :1]
      colour = tf.cond(channels >= 3, lambda: image[..., :3],
                       lambda: tf.image.grayscale_to_rgb(grey))
      if c == 1:
        image = tf.cond(channels >= 3,
                        lambda: tf.image.rgb_to_grayscale(colour),
                        lambda: grey)
      else:
        image = colour
    else:
      with tf.control_dependencies([tf.debugging.assert_equal(
          channels, c, message=f'This model takes {c}-channel images.')]):
        image = tf.identity(image)
    image = tf.ensure_shape(image, [None, None, c])
    image = tf.image.convert_image_dtype(image, tf.float32)
    return tf.image.resize(image, [h, w])

  def _predict_encoded(self, images):
    images = self._vector(images, 'images (encoded image strings)')
    decoded = tf.map_fn(self._decode_one, images,
                        fn_output_signature=tf.TensorSpec(self.image_shape,
                                                          tf.float32))
    return self._predict(decoded)

  def _mask(self, class_ids):
    return tf.one_hot(class_ids, self.model.num_classes)

  def _reconstruct_chunk(self, images, class_ids):
    outputs = self.model(images, training=False)
    return {'reconstructions': self.model.reconstruct(outputs['poses'],
                                                      self._mask(class_ids)),
            'poses': outputs['poses']}

  def _reconstruct(self, images, class_ids):
    images = self._check(images)
    outputs = self._outputs()
    return self._chunked(
        self._reconstruct_chunk,
        {'reconstructions': (tf.float32, self.image_shape),
         'poses': outputs['poses']},
        images, self._check_ids(class_ids, tf.shape(images)[0]))

  def _decode_chunk(self, poses, class_ids):
    return {'reconstructions': self.model.reconstruct(poses,
                                                      self._mask(class_ids))}

  def _decode(self, poses, class_ids):
    poses = tf.ensure_shape(poses, [None, *self.model.pose_shape])
    checks = [tf.debugging.assert_all_finite(
        poses, 'poses hold NaN or Inf; send finite values.')]
    with tf.control_dependencies(checks):
      poses = tf.identity(poses)
    return self._chunked(self._decode_chunk,
                         {'reconstructions': (tf.float32, self.image_shape)},
                         poses, self._check_ids(class_ids, tf.shape(poses)[0]))

  def signatures(self):
    sigs = {'serving_default': self.serving_default,
            'predict_images': self.predict_images}
    if self.has_decoder:
      sigs.update(reconstruct=self.reconstruct, decode=self.decode)
    return sigs


def warmup_inputs(image_shape, num_classes, class_dim, has_decoder):
  """One small input dict per signature, for the warmup file."""
  images = np.zeros([2, *image_shape], np.float32)
  png = tf.io.encode_png(tf.zeros(
      [image_shape[0], image_shape[1], 1 if image_shape[2] == 1 else 3],
      tf.uint8)).numpy()
  inputs = {'serving_default': {'images': images},
            'predict_images': {'images': np.array([png], object)}}
  if has_decoder:
    ids = np.zeros([2], np.int64)
    inputs['reconstruct'] = {'images': images, 'class_ids': ids}
    inputs['decode'] = {
        'poses': np.zeros([2, num_classes, class_dim], np.float32),
        'class_ids': ids}
  return inputs


def write_warmup(path, model_name, inputs):
  """Writes TF Serving warmup records: a PredictionLog per signature."""
  # Imported here: only exporting needs the serving protos.
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for signature, tensors in inputs.items():
      request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
          name=model_name, signature_name=signature))
      for key, value in tensors.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


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
      `ServingModule`); empty: none.
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
  module = ServingModule(model, image_shape, class_names)
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
    write_warmup(os.path.join(tmp, WARMUP_FILE), os.path.basename(export_base),
                 warmup_inputs(module.image_shape, model.num_classes,
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


def _owner(checkpoint):
  """What run a checkpoint belongs to, for messages: `<run dir> (model
  <name>)` when its `config.json` says, else its directory."""
  run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
  try:
    config, _ = config_lib.load_run(run_dir)
    return f'the run in {run_dir} (model {config.model.name})'
  except (OSError, ValueError, KeyError, TypeError):
    return os.path.dirname(os.path.abspath(checkpoint))


def load_checkpointed_model(model_dir, checkpoint=None):
  """Rebuilds a training run's model and restores a checkpoint into it.

  Every variable of the model must come from the checkpoint: a checkpoint
  of another model (or of other settings) is refused, never half-restored.
  The checkpoint is read whole before it is used, so a damaged one is named
  rather than failing half-way.

  Args:
    model_dir: the run's model directory.
    checkpoint: a checkpoint path; None for the latest (the state file's,
      else the newest `ckpt-N` on disk).

  Returns:
    `(model, info dict)`.

  Raises:
    FileNotFoundError: for a directory without run files or checkpoints.
    ValueError: for a checkpoint that cannot be read or does not fit.
  """
  config, info = config_lib.load_run(model_dir)
  model = registry.build_from_spec(config.model, info['image_shape'],
                                   info['num_classes'], info['num_targets'])
  if checkpoint is not None:
    if not tf.io.gfile.exists(checkpoint + '.index'):
      raise FileNotFoundError(
          f'{checkpoint} is not a checkpoint (no {checkpoint}.index); pass '
          f'a path like {model_dir}/checkpoints/ckpt-N, or leave the '
          'checkpoint out for the latest.')
    _restore(model, checkpoint, model_dir, config.model.name)
    return model, info
  # The latest checkpoint of a run that is still training can be rotated
  # away while it is read: then the newest one is taken instead.
  directory = os.path.join(model_dir, 'checkpoints')
  for _ in range(5):
    checkpoint = tf.train.latest_checkpoint(directory)
    if checkpoint is None or not tf.io.gfile.exists(checkpoint + '.index'):
      on_disk = run_guard.checkpoints_on_disk(directory)
      checkpoint = on_disk[-1] if on_disk else None
    if checkpoint is None:
      raise FileNotFoundError(
          f'{directory} holds no checkpoint; train first or pass a '
          'checkpoint path.')
    try:
      _restore(model, checkpoint, model_dir, config.model.name)
      return model, info
    except ValueError:
      if tf.io.gfile.exists(checkpoint + '.index'):
        raise
      logging.info('%s was removed while it was read (a run is still '
                   'training); taking the newest one.', checkpoint)
  raise ValueError(f'The checkpoints of {directory} kept being replaced '
                   'while they were read; pass one as --checkpoint.')


def _restore(model, checkpoint, model_dir, model_name):
  """Restores every variable of `model` from `checkpoint`, or refuses."""
  earlier = [p for p in run_guard.checkpoints_on_disk(
      os.path.dirname(os.path.abspath(checkpoint)))
             if p != os.path.abspath(checkpoint)]
  hint = (f' Earlier checkpoints: {", ".join(earlier[-3:])} (pass one as '
          '--checkpoint).' if earlier else '')
  damaged = ValueError(f'Checkpoint {checkpoint} cannot be read: its files '
                       f'are truncated, damaged or missing.{hint}')
  if not run_guard.checkpoint_readable(checkpoint):
    raise damaged
  try:
    status = tf.train.Checkpoint(model=model).read(checkpoint)
  except (tf.errors.OpError, ValueError) as e:
    raise damaged from e
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(
        f'Checkpoint {checkpoint} does not fit the model of {model_dir} '
        f'({model_name}): {str(e).splitlines()[0][:200]} It belongs '
        f'to {_owner(checkpoint)}; export or evaluate it with that run\'s '
        '--model_dir.') from None
  # The optimizer's slots and the step counter are not needed to serve.
  status.expect_partial()


def export_from_checkpoint(model_dir, export_base, checkpoint=None,
                           xla=False):
  """Exports a checkpoint of a training run; returns the version path."""
  model, info = load_checkpointed_model(model_dir, checkpoint)
  return export_model(model, info['image_shape'], export_base,
                      info.get('class_names', ()), xla=xla)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.model_dir or not f.export_dir:
    raise app.UsageError('--model_dir and --export_dir are both required.')
  try:
    run_guard.check_writable(f.export_dir, '--export_dir', min_free_bytes=0)
    path = export_from_checkpoint(f.model_dir, f.export_dir,
                                  f.checkpoint or None, xla=f.xla)
  except (FileNotFoundError, ValueError, run_guard.RunGuardError) as e:
    raise app.UsageError(str(e)) from None
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
  sys.exit(app.run(main))
