"""Tests of pipeline.models.registry: one table from a model's name to its
model class, its config and its task, and a new family is one entry."""

import dataclasses

import pytest
import tf_keras as keras

from pipeline import config as config_lib
from pipeline.core import trainer as trainer_lib
from pipeline.data.base import DatasetInfo
from pipeline.models import base
from pipeline.models import registry
from pipeline.models.capsnet import CapsNet
from pipeline.tasks import base as task_base
from pipeline.tasks.capsnet import CapsNetTask

from helpers import ProbeConfig, ProbeModel, run_trainer, TINY_MODEL
from helpers import tiny_config

SMALL = {
    'capsnet': TINY_MODEL,
    'matrix_capsnet': dict(channels_a=4, types_b=2, types_c=2, types_d=2,
                           routing_iterations=1),
    'baseline_cnn': dict(conv_channels=(4, 4, 4), fc_units=(8, 8)),
}


def _info(shape=(20, 20, 1), classes=4, targets=1):
  return DatasetInfo(name='probe', image_shape=shape, num_classes=classes,
                     split_sizes={'train': 8}, num_targets=targets)


def test_every_entry_pairs_a_model_its_config_and_its_task():
  assert set(SMALL) == set(registry.MODELS)
  for name, entry in registry.MODELS.items():
    assert issubclass(entry.model_class, base.CapsuleModel), name
    assert dataclasses.is_dataclass(entry.config_class), name
    assert issubclass(entry.task_class, task_base.Task), name
    assert registry.option_names(name) == tuple(
        f.name for f in dataclasses.fields(entry.config_class))


@pytest.mark.parametrize('name', sorted(SMALL))
def test_the_task_builds_the_registered_model(tmp_path, name):
  cfg = tiny_config(tmp_path, model=config_lib.model_spec(name, **SMALL[name]))
  task = registry.get_task(cfg)
  entry = registry.entry(name)
  assert type(task) is entry.task_class
  assert task.model_class is entry.model_class
  model = task.build_model(_info())
  assert type(model) is entry.model_class
  assert model.get_config()['num_classes'] == 4


def test_only_a_model_that_reconstructs_targets_is_told_how_many():
  two = registry.build_from_spec(config_lib.model_spec(**TINY_MODEL),
                                 (20, 20, 1), 4, num_targets=2)
  assert CapsNet.reconstructs_targets and two.num_reconstructions == 2
  cnn = registry.build_from_spec(
      config_lib.model_spec('baseline_cnn', **SMALL['baseline_cnn']),
      (20, 20, 1), 4, num_targets=2)
  assert not registry.entry('baseline_cnn').model_class.reconstructs_targets
  assert 'num_reconstructions' not in cnn.get_config()


def test_the_build_keeps_the_global_precision_policy():
  before = keras.mixed_precision.global_policy().name
  model = registry.build_from_spec(
      config_lib.model_spec('baseline_cnn', 'mixed_bfloat16',
                            **SMALL['baseline_cnn']), (12, 12, 1), 3)
  assert model.convs[0].compute_dtype == 'bfloat16'
  assert keras.mixed_precision.global_policy().name == before


def test_an_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet'; choose one "
                     r"of \['baseline_cnn', 'capsnet', 'matrix_capsnet'\]"):
    registry.entry('resnet')
  with pytest.raises(ValueError, match='Unknown model'):
    config_lib.model_spec('resnet')


def test_a_new_family_is_one_entry(monkeypatch, tmp_path):
  """A model registered by one entry, named nowhere else, is configured,
  built by its task and trained to the end by the unchanged trainer."""
  monkeypatch.setitem(registry.MODELS, 'probe',
                      registry.Entry(ProbeModel, ProbeConfig, CapsNetTask))
  cfg = tiny_config(tmp_path, model=config_lib.model_spec('probe', width=5))
  trainer = trainer_lib.Trainer(cfg)
  assert isinstance(trainer.model, ProbeModel)
  assert trainer.model.options == ProbeConfig(width=5)
  results = run_trainer(trainer)
  assert results['examples'] == 32 and 0.0 <= results['accuracy'] <= 1.0


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
