"""The serving signatures of a capsule model (`ServingModule`).

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

import tensorflow as tf

from pipeline.serving import image_headers
from pipeline.serving.image_headers import MAX_IMAGE_PIXELS

# Signatures run large requests in chunks of this many images, so memory
# stays bounded (u_hat alone is ~0.7 MB per MNIST image in float32).
SERVING_CHUNK = 128


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
    pixels = image_headers.encoded_pixels(data)
    check = tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f'An encoded image is larger than {MAX_IMAGE_PIXELS} pixels '
        '(4096 x 4096, all frames of an animation counted); resize it, or '
        'send one frame, before sending.')
    still = tf.debugging.assert_equal(
        image_headers.animated_webp(data), False,
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

