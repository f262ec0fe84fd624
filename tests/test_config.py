"""Tests of pipeline.config: the JSON round trip, model specs, resume checks."""

import dataclasses
import json

import pytest

from pipeline import config as config_lib
from pipeline import settings
from pipeline.data import sources


def test_json_round_trip():
  cfg = config_lib.TrainConfig(
      model=config_lib.model_spec(routing_iterations=5, decoder_units=(8, 9)),
      data=sources.DataSpec(dataset='multimnist', synthetic_size=(10, 3)),
      batch_size=7)
  assert config_lib.TrainConfig.from_json(cfg.to_json()) == cfg
  for name in ('matrix_capsnet', 'baseline_cnn'):
    cfg = config_lib.TrainConfig(model=config_lib.model_spec(name))
    assert config_lib.TrainConfig.from_json(cfg.to_json()) == cfg


def test_reads_the_flat_model_form_of_earlier_runs():
  cfg = config_lib.TrainConfig(model=config_lib.model_spec(
      routing_iterations=5, jit_compile=True))
  raw = json.loads(cfg.to_json())
  flat = dict(raw['model'].pop('params'), name='capsnet', precision='float32')
  flat['primary_dim'] = 8
  raw['model'] = flat
  assert config_lib.TrainConfig.from_json(json.dumps(raw)) == cfg
  raw['model'] = dict(flat, name='matrix_capsnet')
  old = config_lib.TrainConfig.from_json(json.dumps(raw))
  assert old.model.params.routing_iterations == 5


def test_model_spec_kwargs_and_errors():
  spec = config_lib.model_spec()
  assert spec.kwargs()['routing_iterations'] == 3 and 'name' not in spec.kwargs()
  assert config_lib.model_spec('baseline_cnn').kwargs()['dropout'] == 0.5
  with pytest.raises(ValueError, match=r'--model=matrix_capsnet: .*conv_filters'):
    config_lib.model_spec('matrix_capsnet', conv_filters=8)
  with pytest.raises(ValueError, match='Unknown model'):
    config_lib.model_spec('resnet')
  with pytest.raises(ValueError, match='precision must be one of'):
    config_lib.model_spec(precision='float64')


def test_config_changes_refuses_what_changes_the_run():
  saved = config_lib.TrainConfig(model=config_lib.model_spec(conv_filters=8),
                                 data=config_lib.DataSpec(validation_size=50))
  same = dataclasses.replace(saved, train_steps=5000, eval_every=7,
                             model_dir='/elsewhere', export_dir='x')
  assert config_lib.config_changes(saved, same) == ([], [])
  wider = config_lib.replace(saved, model=config_lib.model_spec(
      conv_filters=64), learning_rate=0.5)
  refused, noted = config_lib.config_changes(saved, wider)
  assert refused == [('learning_rate', 0.001, 0.5), ('conv_filters', 8, 64)]
  assert noted == []
  other = dataclasses.replace(saved, model=config_lib.model_spec(
      'baseline_cnn'))
  assert config_lib.config_changes(saved, other)[0] == [
      ('model', 'capsnet', 'baseline_cnn')]
  for field, value in (('batch_size', 4), ('seed', 3)):
    refused, _ = config_lib.config_changes(
        saved, config_lib.replace(saved, **{field: value}))
    assert [r[0] for r in refused] == [field]
  moved = dataclasses.replace(saved, data=dataclasses.replace(
      saved.data, data_dir='/copy'), eval_split='validation')
  refused, noted = config_lib.config_changes(saved, moved)
  assert refused == []
  assert [n[0] for n in noted] == ['data_dir', 'eval_split']
  assert 'same data' in noted[0][3]


@pytest.mark.parametrize('old,new,carries_over', [
    ('mixed_bfloat16', 'float32', True), ('float32', 'mixed_bfloat16', True),
    ('float32', 'mixed_float16', False), ('mixed_float16', 'float32', False),
    ('mixed_bfloat16', 'mixed_float16', False)])
def test_a_resume_may_switch_between_float32_and_bfloat16_only(
    old, new, carries_over):
  # A job resumed on hardware without bf16: the variables and the optimizer
  # state are float32 in both, so the run goes on in float32. float16 adds
  # a loss-scale optimizer (another checkpoint): refused.
  saved = config_lib.TrainConfig(model=config_lib.model_spec(precision=old))
  refused, noted = config_lib.config_changes(saved, config_lib.replace(
      saved, model=config_lib.model_spec(precision=new)))
  if carries_over:
    assert refused == []
    assert noted == [('precision', old, new, config_lib.PRECISION_CHANGE)]
    assert 'optimizer state carry over' in config_lib.precision_switch_hint(
        old, '/run')
  else:
    assert refused == [('precision', old, new)] and noted == []
  assert '--warm_start=/run' in config_lib.precision_switch_hint(
      'mixed_float16', '/run')



def test_reads_the_flat_form_of_runs_before_the_configs_parts():
  """A config.json written before the optimizer, loss and runtime settings
  had configs of their own (learning_rate, seed, ... at its top) reads as
  the same config, so those runs resume."""
  cfg = config_lib.train_config(
      model=config_lib.model_spec(conv_filters=8), learning_rate=0.003,
      lr_schedule='cosine', warmup_steps=5, m_plus=0.95, seed=4,
      deterministic=True, strategy='one_device', batch_size=32)
  raw = json.loads(cfg.to_json())
  for part in config_lib.PARTS:
    raw.update(raw.pop(part))
  assert 'optimizer' not in raw and raw['learning_rate'] == 0.003
  assert config_lib.TrainConfig.from_json(json.dumps(raw)) == cfg
  with pytest.raises(ValueError, match='no field'):
    config_lib.TrainConfig.from_json(json.dumps(dict(raw, bogus=1)))


def test_train_config_routes_each_setting_to_its_part():
  cfg = config_lib.train_config(learning_rate=0.01, seed=3,
                                reconstruction_weight=0.1, batch_size=7)
  assert (cfg.optimizer.learning_rate, cfg.runtime.seed,
          cfg.loss.reconstruction_weight, cfg.batch_size) == (0.01, 3, 0.1, 7)
  assert config_lib.replace(cfg, seed=5, train_steps=9).runtime.seed == 5
  with pytest.raises(TypeError):
    config_lib.train_config(no_such_setting=1)
  with pytest.raises(settings.SettingError, match='learning_rate must be > 0'):
    config_lib.train_config(learning_rate=0.0)


def test_routing_options_a_resume_refuses_or_notes():
  """--routing_dtype changes the numbers a run trains with: refused.
  --recompute_routing only trades memory for time: noted."""
  capsnet = config_lib.TrainConfig(model=config_lib.model_spec())
  refused, noted = config_lib.config_changes(capsnet, dataclasses.replace(
      capsnet, model=config_lib.model_spec(routing_dtype='bfloat16')))
  assert refused == [('routing_dtype', 'float32', 'bfloat16')] and not noted
  em = config_lib.TrainConfig(model=config_lib.model_spec('matrix_capsnet'))
  refused, noted = config_lib.config_changes(em, dataclasses.replace(
      em, model=config_lib.model_spec('matrix_capsnet',
                                      recompute_routing=True)))
  assert refused == []
  assert [n[:3] for n in noted] == [('recompute_routing', False, True)]
  assert 'memory' in noted[0][3]

if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)


def test_run_flag_values_name_every_run_setting_but_the_data():
  cfg = config_lib.train_config(
      model=config_lib.model_spec('capsnet', 'mixed_bfloat16',
                                  conv_filters=8, decoder_units=(4, 8)),
      learning_rate=0.01, batch_size=16, seed=3)
  values = config_lib.run_flag_values(cfg)
  assert values['model'] == 'capsnet'
  assert values['precision'] == 'mixed_bfloat16'
  assert values['conv_filters'] == 8 and values['decoder_units'] == (4, 8)
  assert values['routing_iterations'] == 3  # The model's default, filled in.
  assert (values['learning_rate'], values['batch_size'],
          values['seed']) == (0.01, 16, 3)
  assert 'dataset' not in values and 'shift_pixels' not in values
  # A model spec without options stands for the model's defaults.
  bare = config_lib.run_flag_values(config_lib.train_config(
      model=config_lib.ModelSpec('baseline_cnn')))
  assert bare['model'] == 'baseline_cnn' and 'conv_filters' not in bare
