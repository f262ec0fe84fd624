"""Tests of pipeline.flags: every bad value is refused with its flag's name."""

from absl import flags
from absl.testing import flagsaver
import pytest

from pipeline import flags as pipeline_flags

pipeline_flags.define_flags()
FLAGS = flags.FLAGS
if not FLAGS.is_parsed():
  FLAGS(['test'])


def test_defaults_build_a_config():
  cfg = pipeline_flags.config_from_flags()
  assert cfg.model.name == 'capsnet' and cfg.data.dataset == 'synthetic'


@pytest.mark.parametrize('overrides,match', [
    (dict(batch_size=0), '--batch_size must be >= 1'),
    (dict(routing_iterations=0), '--routing_iterations must be >= 1'),
    (dict(train_steps=0), '--train_steps'),
    (dict(learning_rate=0.0), '--learning_rate'),
    (dict(lr_decay_rate=1.5), '--lr_decay_rate'),
    (dict(eval_split='validation'), '--validation_size'),
    (dict(synthetic_shape=['28', '28']), '--synthetic_shape takes 3'),
    (dict(decoder_units=['a']), '--decoder_units'),
    (dict(dataset='mnist', data_source='idx'), 'needs data_dir'),
    (dict(model_dir=''), '--model_dir'),
])
def test_bad_values(overrides, match):
  with flagsaver.flagsaver(**overrides):
    with pytest.raises(ValueError, match=match):
      pipeline_flags.config_from_flags()


def test_enum_flag_lists_allowed_values():
  with pytest.raises(flags.IllegalFlagValueError, match='mnist'):
    FLAGS['dataset'].parse('imagenet')
