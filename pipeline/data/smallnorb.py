"""smallNORB as the EM paper trains on it: the 48x48 stereo pairs (downsampled
at load by `tfds_source`) cropped to 32x32, at random with brightness and
contrast jitter in training, at the centre otherwise; `--viewpoints` picks
the novel-viewpoint splits."""

import tensorflow as tf

from pipeline.data import augment, stored

CROP = 32


class SmallNORB(stored.Stored):
  """smallNORB's 5 categories, from TFDS."""

  viewpoints = True

  def __init__(self):
    super().__init__(5)

  def output_shape(self, spec, stored_shape):
    return (CROP, CROP, stored_shape[2])

  def check_splits(self, spec, train, test, where):
    del spec, train, test, where  # The crop fits the stored 48x48.

  def batch_fn(self, spec, data, images, num_classes, training):
    del spec, data, images, num_classes
    size = (CROP, CROP)

    def fn(x, y, seed):
      del y
      slack = (x.shape[1] - size[0], x.shape[2] - size[1])
      if training:
        x = augment.random_crop_batch(x, size, slack, seed)
        x = augment.brightness_contrast(x, seed + 5)
      else:
        n = tf.shape(x)[0]
        x = augment.crop_batch(x, size, tf.fill([n], slack[0] // 2),
                               tf.fill([n], slack[1] // 2))
      # The decoder reconstructs the crop as seen; the model sees it
      # standardized.
      return {'targets': tf.clip_by_value(x, 0.0, 1.0),
              'image': augment.standardize(x)}
    return fn
