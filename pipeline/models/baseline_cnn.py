"""The baseline CNN the CapsNet paper compares against (Sabour et al. 2017).

"Three convolutional layers of 256, 256, 128 channels. Each has 5x5 kernels
and stride of 1. The last convolutional layers are followed by two fully
connected layers of size 328, 192. The last fully connected layer is
connected with dropout to a 10 class softmax layer with cross entropy loss."
The paper does not say whether it pools. By default each convolution
('same' padding, ReLU) is followed by 2x2 max-pooling, which keeps the fully
connected input at 3x3x128 for 28x28 images (5x5x128 at 40x40).
`pool=False` is the other reading: no pooling, so the first fully connected
layer sees all 28x28x128 activations. That reading fits the paper's count
of 35.4M parameters for its CNN (this model without pooling has 35.4M at
28x28; with it, 2.9M).
"""

import dataclasses

import tensorflow as tf
import tf_keras as keras

from pipeline import settings
from pipeline.models import base


@dataclasses.dataclass(frozen=True)
class BaselineCNNConfig:
  """BaselineCNN's options: its constructor's arguments besides the data
  shape, each declared once (`pipeline.settings`). The defaults are the
  paper's baseline, pooled after each convolution."""
  conv_channels: tuple = settings.setting(
      (256, 256, 128), 'Channels of its convolutions.', low=1)
  conv_kernel: int = settings.setting(
      5, 'Conv1 kernel size.', low=1)
  fc_units: tuple = settings.setting(
      (328, 192), 'Units of its fully connected layers.',
      low=1)
  dropout: float = settings.setting(
      0.5, 'Dropout before the softmax.', low=0.0, below=1.0)
  pool: bool = settings.setting(
      True, '2x2 max-pooling after each convolution (the '
      'paper does not say; --nopool fits its 35.4M parameters).')

  def __post_init__(self):
    settings.check(self)


class BaselineCNN(base.CapsuleModel):
  """Conv(-pool) x3 → FC 328 → FC 192 → dropout → softmax.

  It answers the capsule models' contract so the trainer, export and
  evaluation treat it alike. `call(images, labels=None, training=False)`
  returns a dict:
    lengths: `[batch, classes]` softmax probabilities (what capsule lengths
      are for CapsNet: the class scores every tool ranks by).
    logits: `[batch, classes]` float32, what the cross-entropy loss takes.
    poses: `[batch, classes, 1]` the logits, one dimension per class: the
      serving signatures return poses for every model.
  It has no decoder, so no reconstructions. `labels` are accepted and
  ignored (the capsule models mask their decoder with them).
  """

  def __init__(self, input_shape=(28, 28, 1), num_classes=10, **kwargs):
    """`**kwargs`: `BaselineCNNConfig` fields (checked there), then Keras's
    own (e.g. `name`)."""
    options = self._take_options(BaselineCNNConfig, kwargs)
    super().__init__(**kwargs)
    o = self.options = options
    self._set_shape(input_shape, num_classes)
    self._config = dict(input_shape=self.image_shape,
                        num_classes=self.num_classes, **dataclasses.asdict(o))
    self.convs = [keras.layers.Conv2D(c, o.conv_kernel, padding='same',
                                      activation='relu', name=f'conv{i + 1}')
                  for i, c in enumerate(o.conv_channels)]
    self.pools = ([keras.layers.MaxPool2D(2, name=f'pool{i + 1}')
                   for i in range(len(o.conv_channels))] if o.pool else [])
    self.flatten = keras.layers.Flatten(name='flatten')
    self.fcs = [keras.layers.Dense(u, activation='relu', name=f'fc{i + 1}')
                for i, u in enumerate(o.fc_units)]
    self.dropout = keras.layers.Dropout(o.dropout, name='dropout')
    # The logits stay float32 under a mixed precision policy.
    self.logits = keras.layers.Dense(num_classes, dtype='float32',
                                     name='logits')

  def call(self, images, labels=None, training=False):
    del labels  # Only the capsule models' decoders use them.
    x = self._check_images(images)
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if self.pools:
        x = self.pools[i](x)
    x = self.flatten(x)
    for fc in self.fcs:
      x = fc(x)
    logits = self.logits(self.dropout(x, training=training))
    return {'lengths': tf.nn.softmax(logits), 'logits': logits,
            'poses': logits[..., None]}

  @property
  def pose_shape(self):
    return (self.num_classes, 1)

  def flops_per_example(self):
    """Forward FLOPs per example of the convolutions and dense layers."""
    h, w, _ = self.image_shape
    total = 0
    for conv in self.convs:
      flops, h, w = base.conv_flops(conv, h, w)
      total += flops
      if self.options.pool:
        h, w = h // 2, w // 2  # The 2x2 max-pooling after each.
    return int(total + sum(base.dense_flops(d)
                           for d in self.fcs + [self.logits]))
