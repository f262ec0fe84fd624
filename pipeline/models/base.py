"""The model contract every model of the pipeline answers, and its checks.

Export, evaluation and the benchmark ask a model only what this contract
says (`has_decoder`, `pose_shape`, `reconstruct`, `flops_per_example`,
`parts`), never which class it is.
"""

import dataclasses

import tensorflow as tf
import tf_keras as keras


def dense_flops(layer):
  """Forward FLOPs (2 x multiply-adds) per example of a built Dense layer."""
  return 2 * int(tf.size(layer.kernel))


def conv_flops(layer, height, width):
  """Forward FLOPs of a built 'valid' or 'same' Conv2D on `height x width`.

  Returns:
    `(flops, out_height, out_width)`.
  """
  kh, kw, cin, cout = layer.kernel.shape
  stride = layer.strides[0]
  if layer.padding == 'same':
    oh, ow = -(-height // stride), -(-width // stride)
  else:
    oh, ow = (height - kh) // stride + 1, (width - kw) // stride + 1
  return 2 * oh * ow * kh * kw * cin * cout, oh, ow


class CapsuleModel(keras.Model):
  """Base of the pipeline's models (CapsNet, MatrixCapsNet, BaselineCNN).

  `call(images, labels=None, training=False)` returns a dict with at least
  `lengths` `[batch, classes]` (the class scores every tool ranks by) and
  `poses` `[batch, classes, dim]`; a model with a decoder also returns
  `reconstructions`.

  Subclasses call `_set_shape(...)` first in `__init__`, keep their
  constructor arguments in `self._config`, set `self.decoder` when they
  have one, check inputs with `_check_images` at the start of `call`,
  and implement `pose_shape` and `flops_per_example`.
  """

  # Whether the constructor takes `num_reconstructions` (one reconstruction
  # per object of a multi-object image, MultiMNIST: 2).
  reconstructs_targets = False

  @staticmethod
  def _take_options(config_class, kwargs):
    """Pops the fields of `config_class` (the model's options) from a
    constructor's `kwargs` and builds the config, which checks them; what
    is left is Keras's own (e.g. `name`)."""
    return config_class(**{f.name: kwargs.pop(f.name)
                           for f in dataclasses.fields(config_class)
                           if f.name in kwargs})

  def _set_shape(self, input_shape, num_classes):
    """Checks and keeps the input shape and classes."""
    self.image_shape = tuple(int(d) for d in input_shape)
    if len(self.image_shape) != 3:
      raise ValueError(
          f'input_shape must be (height, width, channels), got {input_shape}.')
    self.num_classes = int(num_classes)

  def _check_images(self, images):
    """Returns `images` as a tensor; raises if not `[batch, H, W, C]`."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4 or tuple(images.shape[1:]) != self.image_shape:
      raise ValueError(
          f'{type(self).__name__} expects images of shape '
          f'[batch, {", ".join(map(str, self.image_shape))}], got '
          f'{images.shape}. Build the model with input_shape matching the '
          'data (the data set description gives it).')
    return images

  @property
  def has_decoder(self) -> bool:
    """Whether the model reconstructs its inputs from the class poses."""
    # Not a class-level default: Keras would then not track the layer.
    return getattr(self, 'decoder', None) is not None

  @property
  def pose_shape(self) -> tuple:
    """`(classes, dim)` of the `poses` output."""
    raise NotImplementedError

  def flops_per_example(self) -> int:
    """Forward FLOPs (2 x multiply-adds) per example; elementwise ops left
    out. A training step costs about three times this."""
    raise NotImplementedError

  def compile_inference(self, enabled: bool) -> bool:
    """Whether inference calls (training=False) also run the model's
    XLA-compiled part (the part `jit_compile=True` compiles for training).

    Off by default, so an exported signature holds only plain TF ops that a
    stock TF Serving runs; on, it needs a server with XLA's CPU JIT
    (`--xla_cpu_compilation_enabled`). Returns whether it is now on (False
    for a model with no compiled part).
    """
    del enabled
    return False

  @property
  def inference_compiled(self) -> bool:
    """Whether inference calls now run the XLA-compiled part."""
    return False

  def tunable_parts(self, images):
    """The layers that have several formulations (`formulations(mode)`,
    `set_formulation(mode, name)`, `run(inputs, name)`, `reference(inputs)`)
    for `pipeline.perf.autotune` to choose from, as `name -> (layer, inputs)` at
    the batch of `images`. None by default."""
    del images
    return {}

  def parts(self, images, labels):
    """The model's stages, for per-part timings.

    Args:
      images: `[batch, H, W, C]` inputs of the model's shape.
      labels: `[batch, classes]` one-hot labels.

    Returns:
      An ordered dict `name -> (fn, inputs, variables)`: each stage as a
      function of its real inputs (computed from `images`), so the stages
      run alone add up to about the whole forward pass.
    """
    raise NotImplementedError(
        f'{type(self).__name__} does not list its parts for timing.')

  def reconstruct(self, poses, mask):
    """Decodes class poses `[batch, classes, dim]` under a class `mask`
    `[batch, classes]` (or `[batch, n, classes]`) into images, float32.

    Raises:
      ValueError: when the model has no decoder.
    """
    if not self.has_decoder:
      raise ValueError(f'This {type(self).__name__} has no decoder; it '
                       'cannot reconstruct.')
    return tf.cast(self.decoder(poses, mask), tf.float32)

  def get_config(self):
    return dict(self._config)

  @classmethod
  def from_config(cls, config):
    return cls(**config)


def build(model_class, spec, image_shape, num_classes, num_targets=1):
  """Builds a `model_class` as a `config.ModelSpec` describes it and creates
  its weights.

  Args:
    model_class: a `CapsuleModel` subclass (the registry's entry for
      `spec.name`).
    spec: a `pipeline.config.ModelSpec`: the precision and the model's own
      options.
    image_shape: `(H, W, C)` of the inputs.
    num_classes: number of classes.
    num_targets: objects per image; a model with a decoder reconstructs
      each (MultiMNIST: 2).

  Returns:
    The built model. With a mixed precision, its layers compute in 16 bits
    (variables stay float32); routing, squash and the outputs are float32.
  """
  previous = keras.mixed_precision.global_policy()
  # Layers take the global policy when they are constructed; set it only for
  # this model so other models in the process keep theirs.
  keras.mixed_precision.set_global_policy(spec.precision)
  try:
    options = spec.kwargs()
    if model_class.reconstructs_targets:
      options['num_reconstructions'] = num_targets
    model = model_class(input_shape=tuple(image_shape),
                        num_classes=num_classes, **options)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  model(tf.zeros([1, *image_shape]), training=False)
  return model
