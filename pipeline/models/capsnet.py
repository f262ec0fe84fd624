"""CapsNet of "Dynamic Routing Between Capsules" (Sabour, Frosst, Hinton 2017)."""

import dataclasses

import tensorflow as tf
import tf_keras as keras

from pipeline import settings
from pipeline.models import base
from pipeline.models import capsule_ops
from pipeline.models import layers


@dataclasses.dataclass(frozen=True)
class CapsNetConfig:
  """CapsNet's options: its constructor's arguments besides the data shape.

  Each field is the one place its option is declared: its flag, help,
  bounds and resume rule come from here (`pipeline.settings`). The
  defaults are the paper's MNIST model.
  """
  conv_filters: int = settings.setting(256, 'Conv1 channels.', low=1)
  conv_kernel: int = settings.setting(9, 'Conv1 kernel size.', low=1)
  primary_channels: int = settings.setting(
      32, 'Primary capsule channels (capsule types).', low=1)
  primary_dim: int = settings.setting(8, 'Primary capsule size.', low=1)
  primary_kernel: int = settings.setting(
      9, 'PrimaryCapsules kernel size.', low=1)
  primary_strides: int = settings.setting(
      2, 'PrimaryCapsules stride.', low=1)
  class_dim: int = settings.setting(16, 'Class capsule size.', low=1)
  routing_iterations: int = settings.setting(
      3, 'Routing iterations (paper: 3).', low=1,
      high=capsule_ops.MAX_ROUTING_ITERATIONS,
      why=capsule_ops.ROUTING_ITERATIONS_WHY)
  stop_inner_gradients: bool = settings.setting(
      False, 'Stop gradients through the inner routing iterations.')
  class_bias: bool = settings.setting(
      False, 'Add a bias to the class capsules (+classes*dim).')
  use_decoder: bool = settings.setting(
      True, 'Train with the reconstruction decoder.')
  decoder_units: tuple = settings.setting(
      (512, 1024), 'Hidden units of the reconstruction decoder.', low=1)
  # On for training (the flag); off for models built outside the trainer,
  # e.g. in tests and notebooks.
  jit_compile: bool = settings.setting(
      False, 'Compile the class capsules (u_hat, routing) with XLA in '
      'training steps.', flag_default=True,
      on_resume='XLA compilation changes the order of float operations, '
                'not the model')
  routing_dtype: str = settings.setting(
      'float32', 'What CapsNet computes u_hat and the routing passes in; '
      'bfloat16 halves their memory traffic (sums, softmax and squash stay '
      'float32).', choices=layers.ROUTING_DTYPES)

  def __post_init__(self):
    settings.check(self)


class CapsNet(base.CapsuleModel):
  """Conv1 → PrimaryCapsules → ClassCapsules (dynamic routing) → Decoder.

  `jit_compile=True` lets the class capsules (u_hat and routing) run
  XLA-compiled; which formulation of each layer runs is chosen by
  `pipeline.perf.autotune` (see `tunable_parts`).

  `CapsNet()` is the paper's MNIST model: 8,215,568 parameters, 6,804,224
  without the decoder. The batch size is never fixed in the graph.

  `call(images, labels=None, training=False)` returns a dict:
    lengths: `[batch, classes]` capsule lengths (class probabilities).
    poses: `[batch, classes, dim]` the class capsules.
    coupling: `[batch, in_caps, classes]` last routing coefficients.
    reconstructions: `[batch, H, W, C]` (or `[batch, n, H, W, C]` with
      `num_reconstructions` n > 1), when the model has a decoder. Masked by
      `labels` in training, by the longest capsule(s) otherwise.
  """

  reconstructs_targets = True

  def __init__(self, input_shape=(28, 28, 1), num_classes=10,
               num_reconstructions=1, **kwargs):
    """Builds CapsNet for `input_shape` images of `num_classes` classes.

    Args:
      input_shape: `(H, W, C)`.
      num_classes: class capsules.
      num_reconstructions: objects the decoder reconstructs per image.
      **kwargs: `CapsNetConfig` fields (checked there), then Keras's own
        (e.g. `name`).
    """
    options = self._take_options(CapsNetConfig, kwargs)
    super().__init__(**kwargs)
    o = self.options = options
    self._set_shape(input_shape, num_classes)
    side = min(self.image_shape[:2])
    if side - o.conv_kernel + 1 < o.primary_kernel:
      raise ValueError(
          f'{self.image_shape[0]}x{self.image_shape[1]} images are too small '
          f'for CapsNet\'s {o.conv_kernel}x{o.conv_kernel} Conv1 and '
          f'{o.primary_kernel}x{o.primary_kernel} PrimaryCapsules: it needs '
          f'at least {o.conv_kernel + o.primary_kernel - 1} pixels a side. '
          'Use larger images (--image_shape).')
    self._config = dict(input_shape=self.image_shape,
                        num_classes=self.num_classes,
                        num_reconstructions=int(num_reconstructions),
                        **dataclasses.asdict(o))
    self.num_reconstructions = int(num_reconstructions)
    self.conv1 = keras.layers.Conv2D(o.conv_filters, o.conv_kernel,
                                     activation='relu', name='conv1')
    self.primary = layers.PrimaryCapsules(
        o.primary_channels, o.primary_dim, o.primary_kernel,
        o.primary_strides, name='primary_capsules')
    self.class_capsules = layers.ClassCapsules(
        num_classes, o.class_dim, o.routing_iterations,
        o.stop_inner_gradients, use_bias=o.class_bias,
        jit_compile=o.jit_compile, routing_dtype=o.routing_dtype,
        name='class_capsules')
    self.decoder = (layers.Decoder(self.image_shape, o.decoder_units,
                                   name='decoder')
                    if o.use_decoder else None)

  def _check_labels(self, labels):
    if labels is not None and labels.shape[-1] != self.num_classes:
      raise ValueError(
          f'labels must be one-hot or k-hot [batch, {self.num_classes}] for a '
          f'{self.num_classes}-class model, got {labels.shape}.')

  def call(self, images, labels=None, training=False):
    images = self._check_images(images)
    if labels is not None:
      labels = tf.convert_to_tensor(labels)
    self._check_labels(labels)
    x = self.conv1(images)
    primary = self.primary(x, training=training)
    poses, coupling = self.class_capsules(primary, training=training)
    lengths = capsule_ops.length(poses, axis=-1)
    outputs = {'lengths': lengths, 'poses': poses, 'coupling': coupling}
    if self.decoder is not None:
      scores = labels if (training and labels is not None) else lengths
      mask = layers.class_mask(scores, self.num_reconstructions)
      outputs['reconstructions'] = tf.cast(self.decoder(poses, mask),
                                           tf.float32)
    return outputs

  def compile_inference(self, enabled):
    on = bool(enabled) and self._config['jit_compile']
    self.class_capsules.compile_inference = on
    self.primary.compile_inference = on
    return on

  @property
  def inference_compiled(self):
    return self.class_capsules.compile_inference

  def tunable_parts(self, images):
    """The layers with formulations to choose from, and their inputs.

    Args:
      images: `[batch, H, W, C]` inputs at the batch size that will run.

    Returns:
      A dict `name -> (layer, inputs)`: PrimaryCapsules on Conv1's output,
      ClassCapsules on the primary capsules.
    """
    conv1_out = self.conv1(images)
    primary_out = self.primary(conv1_out, training=False)
    return {'primary_capsules': (self.primary, conv1_out),
            'class_capsules': (self.class_capsules, primary_out)}

  @property
  def pose_shape(self):
    return (self.num_classes, self.class_capsules.dim)

  def flops_per_example(self):
    """Forward FLOPs per example: the two convolutions, the u_hat
    transforms, routing's weighted sums and agreements, and the decoder."""
    h, w, _ = self.image_shape
    total = 0
    for conv in (self.conv1, self.primary.conv):
      flops, h, w = base.conv_flops(conv, h, w)
      total += flops
    caps = self.class_capsules
    in_caps, classes, _, dim = caps.kernel.shape
    total += 2 * int(tf.size(caps.kernel))
    total += 4 * in_caps * classes * dim * caps.routing_iterations
    if self.decoder is not None:
      total += self.num_reconstructions * sum(
          base.dense_flops(d) for d in self.decoder.hidden + [self.decoder.out])
    return int(total)

  def parts(self, images, labels):
    conv1_out = self.conv1(images)
    primary_out = self.primary(conv1_out)
    poses, _ = self.class_capsules(primary_out, training=True)
    parts = {
        'conv1': (self.conv1, [images], self.conv1.trainable_variables),
        'primary_capsules': (self.primary, [conv1_out],
                             self.primary.trainable_variables),
        'class_capsules': (lambda u: self.class_capsules(u, training=True),
                           [primary_out],
                           self.class_capsules.trainable_variables),
    }
    if self.decoder is not None:
      parts['decoder'] = (lambda p: self.reconstruct(p, labels), [poses],
                          self.decoder.trainable_variables)
    return parts
