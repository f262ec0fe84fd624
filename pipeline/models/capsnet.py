"""CapsNet of "Dynamic Routing Between Capsules" (Sabour, Frosst, Hinton 2017)."""

import dataclasses

import tensorflow as tf
import tf_keras as keras

from pipeline.models import base
from pipeline.models import capsule_ops
from pipeline.models import layers


@dataclasses.dataclass(frozen=True)
class CapsNetConfig:
  """CapsNet's options: its constructor's arguments besides the data shape.

  The defaults are the paper's MNIST model.
  """
  conv_filters: int = 256
  conv_kernel: int = 9
  primary_channels: int = 32
  primary_dim: int = 8
  primary_kernel: int = 9
  primary_strides: int = 2
  class_dim: int = 16
  routing_iterations: int = 3
  stop_inner_gradients: bool = False
  class_bias: bool = False
  use_decoder: bool = True
  decoder_units: tuple = (512, 1024)
  jit_compile: bool = False
  routing_dtype: str = 'float32'


class CapsNet(base.CapsuleModel):
  """Conv1 → PrimaryCapsules → ClassCapsules (dynamic routing) → Decoder.

  `jit_compile=True` lets the class capsules (u_hat and routing) run
  XLA-compiled; which formulation of each layer runs is chosen by
  `pipeline.autotune` (see `tunable_parts`).

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

  def __init__(self, input_shape=(28, 28, 1), num_classes=10,
               conv_filters=256, conv_kernel=9, primary_channels=32,
               primary_dim=8, primary_kernel=9, primary_strides=2,
               class_dim=16, routing_iterations=3, stop_inner_gradients=False,
               class_bias=False, use_decoder=True, decoder_units=(512, 1024),
               num_reconstructions=1, jit_compile=False,
               routing_dtype='float32', **kwargs):
    super().__init__(**kwargs)
    self._set_shape(input_shape, num_classes, routing_iterations)
    side = min(self.image_shape[:2])
    if side - conv_kernel + 1 < primary_kernel:
      raise ValueError(
          f'{self.image_shape[0]}x{self.image_shape[1]} images are too small '
          f'for CapsNet\'s {conv_kernel}x{conv_kernel} Conv1 and '
          f'{primary_kernel}x{primary_kernel} PrimaryCapsules: it needs at '
          f'least {conv_kernel + primary_kernel - 1} pixels a side. Use '
          'larger images (--image_shape).')
    self._config = dict(
        input_shape=self.image_shape, num_classes=int(num_classes),
        conv_filters=conv_filters, conv_kernel=conv_kernel,
        primary_channels=primary_channels, primary_dim=primary_dim,
        primary_kernel=primary_kernel, primary_strides=primary_strides,
        class_dim=class_dim, routing_iterations=int(routing_iterations),
        stop_inner_gradients=bool(stop_inner_gradients),
        class_bias=bool(class_bias), use_decoder=bool(use_decoder),
        decoder_units=tuple(decoder_units),
        num_reconstructions=int(num_reconstructions),
        jit_compile=bool(jit_compile), routing_dtype=str(routing_dtype))
    self.num_reconstructions = int(num_reconstructions)
    self.conv1 = keras.layers.Conv2D(conv_filters, conv_kernel,
                                     activation='relu', name='conv1')
    self.primary = layers.PrimaryCapsules(
        primary_channels, primary_dim, primary_kernel, primary_strides,
        name='primary_capsules')
    self.class_capsules = layers.ClassCapsules(
        num_classes, class_dim, routing_iterations, stop_inner_gradients,
        use_bias=class_bias, jit_compile=jit_compile,
        routing_dtype=routing_dtype, name='class_capsules')
    self.decoder = (layers.Decoder(self.image_shape, decoder_units,
                                   name='decoder') if use_decoder else None)

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
