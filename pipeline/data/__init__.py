"""Input data: sources, augmentation and the tf.data pipeline."""
