"""Input data: sources, augmentation and the tf.data pipeline."""

from pipeline.data.base import DataError, DatasetInfo
from pipeline.data.input_pipeline import make_dataset
from pipeline.data.sources import DataSpec, open_source
