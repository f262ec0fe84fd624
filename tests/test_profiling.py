"""Tests of pipeline.core.profiling: the window's edges and its record."""

import json

from pipeline.core import profiling


def test_the_window_bounds_loops_and_is_off_without_steps(tmp_path):
  window = profiling.ProfileWindow(str(tmp_path), (5, 6), {'model': 'm'})
  # The profiler starts after step 4 and stops after step 6.
  assert window.boundaries(0) == [4, 6]
  assert window.boundaries(4) == [2]
  assert window.boundaries(6) == []
  off = profiling.ProfileWindow(str(tmp_path), (), {})
  assert off.boundaries(0) == []
  off.before_loop(0)
  off.after_loop(10, True)
  assert not off.active
  off.stop()  # Stopping a window that never started is harmless.


def test_the_record_goes_beside_the_newest_trace(tmp_path):
  root = tmp_path / 'plugins' / 'profile'
  for name in ('2026_12_01_10_00_00', '2026_12_02_09_00_00'):
    (root / name).mkdir(parents=True)
  path = profiling.record_trace(str(tmp_path), {'first_step': 5})
  assert path.endswith('2026_12_02_09_00_00')
  record = json.loads((root / '2026_12_02_09_00_00' /
                       profiling.PROFILE_RECORD).read_text())
  assert record == {'first_step': 5}
  assert not (root / '2026_12_01_10_00_00' / profiling.PROFILE_RECORD).exists()


def test_no_trace_is_a_warning_not_a_crash(tmp_path, caplog):
  caplog.set_level('WARNING')
  assert profiling.record_trace(str(tmp_path), {}) is None
  assert 'wrote no trace' in caplog.text


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
