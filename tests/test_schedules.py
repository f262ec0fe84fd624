"""Tests of pipeline.core.schedules."""

import math

import numpy as np
import pytest

from pipeline.core import schedules


def _lr(schedule, step):
  return float(schedule(step))


def test_exponential_is_the_papers_decay():
  lr = schedules.LearningRate('exponential', 1e-3, 2000, 0.96)
  assert _lr(lr, 0) == pytest.approx(1e-3)
  assert _lr(lr, 2000) == pytest.approx(0.96e-3)
  assert _lr(lr, 4000) == pytest.approx(0.96 ** 2 * 1e-3)


def test_cosine_warms_up_then_decays_to_zero():
  lr = schedules.LearningRate('cosine', 2e-3, 100, warmup_steps=10)
  assert _lr(lr, 0) == pytest.approx(2e-4)
  assert _lr(lr, 4) == pytest.approx(1e-3)
  assert _lr(lr, 9) == pytest.approx(2e-3)
  assert _lr(lr, 10) == pytest.approx(2e-3)
  assert _lr(lr, 60) == pytest.approx(1e-3, rel=1e-5)
  assert _lr(lr, 35) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)),
                                      rel=1e-5)
  assert _lr(lr, 110) == pytest.approx(0.0, abs=1e-12)
  assert _lr(lr, 5000) == pytest.approx(0.0, abs=1e-12)
  values = [_lr(lr, s) for s in range(10, 111)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_applies_to_exponential_too():
  lr = schedules.LearningRate('exponential', 1e-3, 1000, 0.5, warmup_steps=4)
  np.testing.assert_allclose([_lr(lr, s) for s in range(4)],
                             [2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
  assert _lr(lr, 1000) == pytest.approx(5e-4)


@pytest.mark.parametrize('kwargs,message', [
    (dict(kind='linear'), '--lr_schedule'),
    (dict(learning_rate=0.0), '--learning_rate'),
    (dict(decay_steps=0), '--lr_decay_steps'),
    (dict(warmup_steps=-1), '--warmup_steps')])
def test_bad_settings_are_refused_by_flag_name(kwargs, message):
  args = dict(kind='cosine', learning_rate=1e-3, decay_steps=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    schedules.LearningRate(**args)


def test_config_round_trip():
  lr = schedules.LearningRate('cosine', 1e-3, 10, warmup_steps=2)
  again = schedules.LearningRate(**lr.get_config())
  assert [_lr(again, s) for s in range(14)] == [_lr(lr, s) for s in range(14)]


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
