"""Writes an affNIST-style test set: each test image under a random affine map.

  python -m pipeline.research.make_affnist --dataset=fashion_mnist --data_source=idx \
      --data_dir=/usr/share/datasets/fashion-mnist \
      --output_dir=data/affnist_fashion_mnist

Every test image is centred on a 40x40 canvas, rotated within ±20°, sheared
within ±0.2, scaled 0.8–1.2 per axis and translated anywhere its bounding
box fits (`pipeline.data.affine`). The output is an IDX directory
(`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) plus
`generation.json` (seed, ranges, SHA-256 of the uint8 pixels); the same seed always
gives the same bytes. Training then evaluates on it with
`--dataset=affnist --affnist_dir=<output_dir>`. An existing set is never
overwritten: pass a new --output_dir, or --overwrite.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import dataclasses
import hashlib
import os
import sys

from absl import app
from absl import flags
from absl import logging

from pipeline.core import atomic
from pipeline.data import affine
from pipeline.data import idx
from pipeline.data import sources
from pipeline.data.base import DataError

GENERATION_FILE = 'generation.json'


def make_affnist(spec, output_dir, canvas_size=40, seed=0,
                 ranges=affine.AffineRanges(), overwrite=False):
  """Transforms the test split of `spec` and writes it under `output_dir`.

  Returns:
    The generation record written to `generation.json` (a dict).

  Raises:
    DataError: for unreadable input data, or an existing set without
      `overwrite`.
  """
  if idx.has_split(output_dir, 'test') and not overwrite:
    raise DataError(f'{output_dir} already holds an affNIST-style set; pass '
                    'another --output_dir, or --overwrite to replace it.')
  test = sources.open_source(spec).split('test')
  logging.info('Transforming %d test images onto a %dx%d canvas (seed %d).',
               len(test), canvas_size, canvas_size, seed)
  split, params = affine.affine_split(test.images, test.labels, canvas_size,
                                      seed, ranges)
  idx.write_idx_split(output_dir, 'test', split.images, split.labels)
  # Of the pixels, not the .gz file: zlib versions may compress differently.
  digest = hashlib.sha256(split.images.tobytes()).hexdigest()
  record = {
      'source': {'dataset': spec.dataset, 'data_source': spec.data_source,
                 'data_dir': spec.data_dir, 'split': 'test'},
      'examples': len(split), 'canvas_size': canvas_size, 'seed': seed,
      'ranges': dataclasses.asdict(ranges),
      'images_sha256': digest,
      'params_mean_abs': {k: float(abs(v).mean()) for k, v in params.items()},
  }
  atomic.write_json(os.path.join(output_dir, GENERATION_FILE), record,
                       indent=2)
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    spec = sources.DataSpec(dataset=f.dataset, data_source=f.data_source,
                            data_dir=f.data_dir, download=f.download)
    ranges = affine.AffineRanges(f.max_rotation, f.max_shear, f.min_scale,
                                 f.max_scale)
    record = make_affnist(spec, f.output_dir, f.canvas_size, f.seed, ranges,
                          f.overwrite)
  except DataError as e:
    sys.exit(str(e))
  print(f'Wrote {record["examples"]} affine-transformed test images to '
        f'{f.output_dir} (images sha256 {record["images_sha256"][:16]}...)')
  return 0


def define_flags():
  flags.DEFINE_enum('dataset', 'fashion_mnist', list(sources.DIGIT_BASES),
                    'Data set whose test split is transformed.')
  flags.DEFINE_enum('data_source', 'idx', list(sources.DATA_SOURCES),
                    'Read it from TFDS or an IDX directory.')
  flags.DEFINE_string('data_dir', '/usr/share/datasets/fashion-mnist',
                      'IDX directory (or TFDS data dir).')
  flags.DEFINE_bool('download', True, 'Let TFDS download the data.')
  flags.DEFINE_string('output_dir', 'data/affnist_fashion_mnist',
                      'Where the IDX files and generation.json go.')
  flags.DEFINE_integer('canvas_size', 40, 'Side of the output canvas.')
  flags.DEFINE_integer('seed', 0, 'Seed of every random transform.')
  flags.DEFINE_float('max_rotation', 20.0, 'Rotation range, ± degrees.')
  flags.DEFINE_float('max_shear', 0.2, 'Shear range, ±.')
  flags.DEFINE_float('min_scale', 0.8, 'Smallest scale per axis.')
  flags.DEFINE_float('max_scale', 1.2, 'Largest scale per axis.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing set.')


if __name__ == '__main__':
  define_flags()
  logging.set_verbosity(logging.INFO)
  sys.exit(app.run(main))
