"""Tests of pipeline.settings: an option declared once, as a dataclass field,
is checked, becomes a flag, reaches the model and is refused when a resumed
run changes it."""

import dataclasses
import json

from absl import flags
import pytest

from pipeline import config as config_lib
from pipeline import flags as pipeline_flags
from pipeline import settings
from pipeline.models import registry
from pipeline.models.baseline_cnn import BaselineCNNConfig
from pipeline.models.capsnet import CapsNetConfig
from pipeline.tasks.capsnet import CapsNetTask

from helpers import ProbeConfig, ProbeModel


@pytest.fixture
def probe_registered(monkeypatch):
  monkeypatch.setitem(registry.MODELS, 'probe',
                      registry.Entry(ProbeModel, ProbeConfig, CapsNetTask))


def fresh_flags(argv):
  values = flags.FlagValues()
  pipeline_flags.define_flags(values)
  values(['prog'] + list(argv))
  return values


def test_a_setting_is_checked_with_its_name_and_range():
  with pytest.raises(settings.SettingError, match=r'^width must be >= 1, '
                     r'got 0\.$'):
    ProbeConfig(width=0)
  with pytest.raises(settings.SettingError, match='scale must be < 10.0'):
    ProbeConfig(scale=10.0)
  with pytest.raises(settings.SettingError, match='scale must be a finite'):
    ProbeConfig(scale=float('nan'))
  with pytest.raises(settings.SettingError, match="mode must be one of a, b, "
                     "got 'c'"):
    ProbeConfig(mode='c')
  with pytest.raises(settings.SettingError, match='sizes must be >= 1'):
    ProbeConfig(sizes=(2, 0))
  with pytest.raises(settings.SettingError, match='width must be a int'):
    ProbeConfig(width=True)


def test_json_forms_come_back_equal():
  config = ProbeConfig(sizes=[5, 6], scale=2)
  assert config.sizes == (5, 6) and isinstance(config.scale, float)
  assert ProbeConfig(**json.loads(json.dumps(
      dataclasses.asdict(config)))) == config


def test_the_why_of_a_bound_is_in_its_message():
  with pytest.raises(settings.SettingError,
                     match='routing_iterations must be <= 10, got 11: each '
                     'iteration is unrolled'):
    CapsNetConfig(routing_iterations=11)


def test_kinds_defaults_and_resume_notes():
  fields = {f.name: f for f in settings.described(ProbeConfig)}
  assert [settings.kind(fields[n]) for n in ('width', 'scale', 'mode',
                                             'sizes', 'fast')] == [
                                                 int, float, str, tuple, bool]
  assert settings.flag_default(fields['fast']) is True
  assert settings.flag_default(fields['width']) == 4
  assert settings.resume_notes(ProbeConfig, 'model.params.') == {
      'model.params.fast': 'speed only'}


def test_a_new_model_option_is_one_field(probe_registered, tmp_path):
  """The option exists only as `ProbeConfig.width`: it becomes a flag with
  its help, reaches the model, is range-checked with the flag's name, and a
  resumed run that changes it is refused."""
  del probe_registered
  values = fresh_flags([])
  assert 'width' in values and values['width'].help.startswith(
      'probe: hidden units.')
  assert values['width'].default == 4 and values['fast'].default is True

  argv = ['--model=probe', '--width=7', '--sizes=4,5', '--mode=b',
          f'--model_dir={tmp_path}']
  cfg = pipeline_flags.config_from_flags(fresh_flags(argv))
  assert cfg.model.params == ProbeConfig(width=7, sizes=(4, 5), mode='b',
                                         fast=True)
  model = registry.build_from_spec(cfg.model, (8, 8, 1), 3)
  assert model.options.width == 7 and model.get_config()['width'] == 7

  with pytest.raises(ValueError, match=r'^--width must be >= 1, got 0\.$'):
    pipeline_flags.config_from_flags(fresh_flags(argv + ['--width=0']))

  again = config_lib.TrainConfig.from_json(cfg.to_json())
  assert again == cfg
  changed = pipeline_flags.config_from_flags(fresh_flags(argv + ['--width=8']))
  refused, noted = config_lib.config_changes(cfg, changed)
  assert refused == [('width', 7, 8)] and not noted
  faster = pipeline_flags.config_from_flags(fresh_flags(argv + ['--nofast']))
  refused, noted = config_lib.config_changes(cfg, faster)
  assert not refused and noted == [('fast', True, False, 'speed only')]


def test_an_option_of_another_model_is_refused(probe_registered):
  del probe_registered
  with pytest.raises(ValueError, match='--width is not an option of '
                     '--model=capsnet'):
    pipeline_flags.config_from_flags(fresh_flags(['--width=9']))


def test_shared_options_keep_each_models_default():
  """`--conv_kernel` is CapsNet's (9) and the baseline's (5): not given,
  each model keeps its own; given, it reaches the model that takes it."""
  baseline = pipeline_flags.config_from_flags(
      fresh_flags(['--model=baseline_cnn']))
  assert baseline.model.params == BaselineCNNConfig()
  capsnet = pipeline_flags.config_from_flags(fresh_flags([]))
  assert capsnet.model.params.conv_kernel == 9
  assert capsnet.model.params.jit_compile is True  # the flag's own default
  given = pipeline_flags.config_from_flags(
      fresh_flags(['--model=baseline_cnn', '--conv_kernel=9', '--nopool']))
  assert given.model.params == BaselineCNNConfig(conv_kernel=9, pool=False)


def test_every_model_option_is_a_flag():
  values = fresh_flags([])
  for name, entry in registry.MODELS.items():
    for field in settings.described(entry.config_class):
      assert field.name in values, f'{name}.{field.name} has no flag'
      assert field.metadata['help'] in values[field.name].help, field.name


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
