"""Tests of pipeline.core.run_files: the resume check, metrics.json, HParams."""

import json

import pytest

from pipeline import config as config_lib
from pipeline.core import run_files
from pipeline.core import run_guard
from pipeline.data import sources

from helpers import tiny_config


def test_metrics_file_keeps_every_evaluation_and_finds_one(tmp_path):
  metrics = run_files.MetricsFile(str(tmp_path))
  assert metrics.history() == []
  metrics.append({'split': 'test', 'accuracy': 0.5}, 4)
  metrics.append({'split': 'validation', 'accuracy': 0.6}, 4)
  metrics.append({'split': 'test', 'accuracy': 0.7}, 8)
  saved = json.loads((tmp_path / run_files.METRICS_FILE).read_text())
  assert saved['latest'] == {'split': 'test', 'accuracy': 0.7, 'step': 8}
  assert [e['step'] for e in saved['history']] == [4, 4, 8]
  assert metrics.evaluation_at(4, 'validation')['accuracy'] == 0.6
  assert metrics.evaluation_at(4, 'test')['accuracy'] == 0.5
  assert metrics.evaluation_at(8, 'validation') is None


def test_check_same_run_refuses_a_changed_model_and_notes_a_free_change(
    tmp_path, caplog):
  cfg = tiny_config(tmp_path)
  run_files.check_same_run(str(tmp_path), cfg)  # No saved run: nothing to do.
  (tmp_path / config_lib.CONFIG_FILE).write_text(cfg.to_json())
  run_files.check_same_run(str(tmp_path),
                           config_lib.replace(cfg, train_steps=99))
  with pytest.raises(run_guard.RunGuardError, match='--learning_rate was'):
    run_files.check_same_run(str(tmp_path),
                             config_lib.replace(cfg, learning_rate=0.5))
  caplog.set_level('WARNING')
  changed = config_lib.replace(cfg,
                               deterministic=not cfg.runtime.deterministic)
  # The early check (before the model is built) refuses only; the locked
  # one logs the accepted change, once.
  run_files.check_same_run(str(tmp_path), changed, log_notes=False)
  assert '--deterministic changed from' not in caplog.text
  with pytest.raises(run_guard.RunGuardError, match='--learning_rate was'):
    run_files.check_same_run(str(tmp_path),
                             config_lib.replace(cfg, learning_rate=0.5),
                             log_notes=False)
  run_files.check_same_run(str(tmp_path), changed)
  assert caplog.text.count('--deterministic changed from') == 1


def test_an_unreadable_saved_config_is_named(tmp_path):
  (tmp_path / config_lib.CONFIG_FILE).write_text('{not json')
  with pytest.raises(run_guard.RunGuardError, match='cannot be read'):
    run_files.check_same_run(str(tmp_path), tiny_config(tmp_path))


def test_hparams_leave_out_what_does_not_tell_runs_apart(tmp_path):
  synthetic = run_files.hparams(tiny_config(tmp_path))
  assert synthetic['learning_rate'] > 0
  assert 'data_synthetic_size' in synthetic
  for name in ('model_dir', 'train_steps', 'strategy', 'cpu_devices'):
    assert not any(k.endswith(name) for k in synthetic), name
  real = run_files.hparams(tiny_config(tmp_path, data=sources.DataSpec(
      dataset='mnist', data_source='idx', data_dir=str(tmp_path))))
  assert real['data_dataset'] == 'mnist'
  assert not any(k.startswith('data_synthetic') for k in real)
  assert all(isinstance(v, (str, int, float, bool)) for v in real.values())


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
