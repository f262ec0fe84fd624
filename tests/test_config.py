"""Tests of pipeline.config."""

from pipeline import config as config_lib
from pipeline.data import sources


def test_json_round_trip():
  cfg = config_lib.TrainConfig(
      model=config_lib.ModelSpec(routing_iterations=5, decoder_units=(8, 9)),
      data=sources.DataSpec(dataset='multimnist', synthetic_size=(10, 3)),
      batch_size=7)
  assert config_lib.TrainConfig.from_json(cfg.to_json()) == cfg


def test_model_kwargs_exclude_name():
  kwargs = config_lib.ModelSpec().kwargs()
  assert 'name' not in kwargs and kwargs['routing_iterations'] == 3
