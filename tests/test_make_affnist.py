"""End to end: `python -m pipeline.research.make_affnist` writes a seeded IDX test set."""

import json
import os
import subprocess
import sys

import numpy as np

from pipeline.data import affnist

from conftest import REPO
from helpers import write_idx_dir


def _run(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', 'pipeline.research.make_affnist', *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def test_writes_a_reproducible_set_and_refuses_to_overwrite(tmp_path):
  base = tmp_path / 'base'
  original = write_idx_dir(str(base), n_train=10, n_test=12)
  common = ['--dataset=fashion_mnist', '--data_source=idx',
            f'--data_dir={base}', '--seed=3']
  out = _run(*common, f'--output_dir={tmp_path / "a"}')
  assert out.returncode == 0, out.stderr
  assert 'Wrote 12 affine-transformed test images' in out.stdout
  split = affnist.load_affnist_dir(str(tmp_path / 'a'))
  assert split.images.shape == (12, 40, 40, 1)
  np.testing.assert_array_equal(split.labels, original['test'][1])
  record = json.loads((tmp_path / 'a' / 'generation.json').read_text())
  assert record['seed'] == 3 and record['examples'] == 12
  assert record['ranges']['max_rotation_degrees'] == 20.0

  assert _run(*common, f'--output_dir={tmp_path / "b"}').returncode == 0
  name = 't10k-images-idx3-ubyte.gz'
  assert ((tmp_path / 'a' / name).read_bytes() ==
          (tmp_path / 'b' / name).read_bytes())

  again = _run(*common, f'--output_dir={tmp_path / "a"}')
  assert again.returncode != 0
  assert '--overwrite' in again.stderr
  assert _run(*common, f'--output_dir={tmp_path / "a"}', '--seed=4',
              '--overwrite').returncode == 0
  assert ((tmp_path / 'a' / name).read_bytes() !=
          (tmp_path / 'b' / name).read_bytes())


def test_missing_data_is_one_clear_line(tmp_path):
  out = _run('--data_source=idx', f'--data_dir={tmp_path / "none"}',
             f'--output_dir={tmp_path / "o"}')
  assert out.returncode != 0
  assert 'does not exist' in out.stderr
  assert 'Traceback' not in out.stderr


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
