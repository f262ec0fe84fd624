"""Tests of pipeline.flags: every bad value is refused with its flag's name."""

import dataclasses
import glob
import os

from absl import flags
from absl.testing import flagsaver
import pytest

from pipeline import config as config_lib
from pipeline import flags as pipeline_flags
from pipeline.data import sources

from conftest import REPO

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
    (dict(warmup_steps=-1), '--warmup_steps must be >= 0'),
    (dict(lr_schedule='cosine', lr_decay_steps=0),
     '--lr_decay_steps must be >= 1'),
    (dict(eval_split='validation'), '--validation_size'),
    (dict(target_accuracy=1.5), '--target_accuracy must be <= 1.0, got 1.5'),
    (dict(target_accuracy=-0.1), '--target_accuracy'),
    (dict(synthetic_shape=['28', '28']), '--synthetic_shape takes 3'),
    (dict(decoder_units=['a']), '--decoder_units'),
    (dict(dataset='mnist', data_source='idx'), 'needs data_dir'),
    (dict(model_dir=''), '--model_dir'),
    (dict(seed=-1), '--seed must be >= 0'),
    (dict(routing_iterations=1000), '--routing_iterations must be <= 10'),
    (dict(down_weight=-5.0), '--down_weight must be >= 0'),
    (dict(m_minus=2.0, m_plus=-1.0), '0 <= m_minus < m_plus <= 1'),
    (dict(m_minus=0.9, m_plus=0.1), '0 <= m_minus < m_plus <= 1'),
    (dict(m_plus=1.5), '0 <= m_minus < m_plus <= 1'),
    (dict(reconstruction_weight=-1.0), '--reconstruction_weight'),
])
def test_bad_values(overrides, match):
  with flagsaver.flagsaver(**overrides):
    with pytest.raises(ValueError, match=match):
      pipeline_flags.config_from_flags()


@pytest.mark.parametrize('name', pipeline_flags.FLOAT_FLAGS)
@pytest.mark.parametrize('value', ['nan', 'inf', '-inf'])
def test_every_float_flag_refuses_nan_and_infinity(name, value):
  # NaN compares false with every bound: a range check alone lets it by.
  with flagsaver.flagsaver(**{name: float(value)}):
    with pytest.raises(ValueError, match=f'--{name} must be a finite number'):
      pipeline_flags.config_from_flags()


def test_every_float_flag_of_the_trainer_is_checked_for_finiteness():
  ours = FLAGS.flags_by_module_dict()[pipeline_flags.__name__]
  floats = {flag.name for flag in ours
            if isinstance(flag.parser, flags.FloatParser)}
  assert floats == set(pipeline_flags.FLOAT_FLAGS)


def test_enum_flag_lists_allowed_values():
  with pytest.raises(flags.IllegalFlagValueError, match='mnist'):
    FLAGS['dataset'].parse('imagenet')
  with pytest.raises(flags.IllegalFlagValueError, match='cosine'):
    FLAGS['lr_schedule'].parse('linear')


def test_schedule_flags_reach_the_config():
  with flagsaver.flagsaver(lr_schedule='cosine', warmup_steps=50,
                           lr_decay_steps=550):
    cfg = pipeline_flags.config_from_flags()
  assert (cfg.optimizer.lr_schedule, cfg.optimizer.warmup_steps,
          cfg.optimizer.lr_decay_steps) == (
      'cosine', 50, 550)


def test_target_accuracy_reaches_the_config_and_is_free_on_resume():
  with flagsaver.flagsaver(target_accuracy=0.99):
    cfg = pipeline_flags.config_from_flags()
  assert cfg.target_accuracy == 0.99
  assert config_lib.TrainConfig.from_json(cfg.to_json()) == cfg
  assert config_lib.config_changes(
      dataclasses.replace(cfg, target_accuracy=0.0), cfg) == ([], [])


def test_data_overrides_change_only_the_flags_given():
  run_spec = sources.DataSpec(dataset='affnist', base_dataset='fashion_mnist',
                              data_source='idx', data_dir='/d',
                              validation_size=50)
  with flagsaver.flagsaver():
    assert pipeline_flags.data_spec_with_overrides(run_spec) == run_spec
    FLAGS['affnist_dir'].parse('/affine')
    FLAGS['synthetic_size'].parse('10,5')
    spec = pipeline_flags.data_spec_with_overrides(run_spec)
    assert spec == dataclasses.replace(run_spec, affnist_dir='/affine',
                                       synthetic_size=(10, 5))
    FLAGS['data_source'].parse('tfds')
    FLAGS['base_dataset'].parse('mnist')
    FLAGS['dataset'].parse('mnist')
    FLAGS['data_source'].parse('idx')
    FLAGS['data_dir'].parse('')
    with pytest.raises(ValueError, match='needs data_dir'):
      pipeline_flags.data_spec_with_overrides(run_spec)


@pytest.mark.parametrize('model,flag,value', [
    ('matrix_capsnet', 'conv_filters', '8'),
    ('matrix_capsnet', 'use_decoder', 'false'),
    ('baseline_cnn', 'routing_iterations', '5'),
    ('baseline_cnn', 'decoder_units', '8,9'),
    ('baseline_cnn', 'jit_compile', 'false'),
    ('matrix_capsnet', 'routing_dtype', 'bfloat16'),
    ('capsnet', 'recompute_routing', 'true'),
])
def test_a_flag_the_model_does_not_take_is_refused(model, flag, value):
  with flagsaver.flagsaver():
    FLAGS['model'].parse(model)
    FLAGS[flag].parse(value)
    with pytest.raises(ValueError, match=rf'--{flag} is not an option of '
                       rf'--model={model}'):
      pipeline_flags.config_from_flags()


def test_model_flags_at_their_defaults_pass_and_fill_the_model_config():
  with flagsaver.flagsaver():
    # Included flagfiles of another model may set a flag to its default.
    FLAGS['model'].parse('baseline_cnn')
    FLAGS['routing_iterations'].parse('3')
    assert pipeline_flags.config_from_flags().model.params.dropout == 0.5
    FLAGS['model'].parse('matrix_capsnet')
    FLAGS['routing_iterations'].parse('2')
    params = pipeline_flags.config_from_flags().model.params
    assert params.routing_iterations == 2 and params.channels_a == 32
  with flagsaver.flagsaver():
    FLAGS['conv_filters'].parse('8')
    FLAGS['decoder_units'].parse('8,9')
    params = pipeline_flags.config_from_flags().model.params
    assert params.conv_filters == 8 and params.decoder_units == (8, 9)
    assert params.jit_compile and params.routing_dtype == 'float32'
    FLAGS['routing_dtype'].parse('bfloat16')
    assert (pipeline_flags.config_from_flags().model.params.routing_dtype ==
            'bfloat16')


@pytest.mark.parametrize('path', sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, 'configs', '*.flags'))))
def test_every_shipped_flagfile_parses_into_a_config(path, monkeypatch):
  # A misspelt flag or a value out of range in a config is caught here, not
  # by the user who runs it. Data is not loaded (no network, no files).
  monkeypatch.chdir(REPO)
  with flagsaver.flagsaver():
    FLAGS(['train', f'--flagfile={path}'])
    cfg = pipeline_flags.config_from_flags()
    assert cfg.train_steps > 0 and cfg.model.name in ('capsnet',
                                                       'matrix_capsnet',
                                                       'baseline_cnn')
    if path.endswith('mnist_fast.flags'):
      assert cfg.model.params.routing_dtype == 'bfloat16'
    if path.endswith('mnist_best.flags'):
      # The paper's model, candidate 8's schedule (x0.9 an epoch of 600
      # steps) for 30 epochs, the test split every epoch, nothing held back
      # (the recipe was chosen on validation).
      assert cfg.model.params.routing_iterations == 3
      assert cfg.optimizer.lr_schedule == 'exponential'
      assert cfg.optimizer.lr_decay_rate == 0.9
      assert cfg.optimizer.lr_decay_steps == 600
      assert cfg.train_steps == 30 * 600 and cfg.eval_every == 600
      assert cfg.data.validation_size == 0 and cfg.eval_split == 'test'
    # Every shipped flagfile asks for the precision the machine computes
    # fastest, resolved here to a concrete one.
    assert FLAGS.precision == 'auto'
    assert cfg.model.precision in config_lib.PRECISIONS


@pytest.mark.parametrize('path', sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, 'docs', 'mnist_best', '*.flags'))))
def test_the_recipe_search_flagfiles_parse_into_configs(path, monkeypatch):
  # docs/mnist_best/ holds the commands of issue 27's runs: each must still
  # re-run as written. The candidates score held-back training images, the
  # full runs the test split.
  monkeypatch.chdir(REPO)
  with flagsaver.flagsaver():
    FLAGS(['train', f'--flagfile={path}'])
    cfg = pipeline_flags.config_from_flags()
    assert cfg.model.params.routing_iterations == 3
    # One evaluation an epoch of the images it trains on.
    assert cfg.eval_every * cfg.batch_size == 60000 - cfg.data.validation_size
    if os.path.basename(path).startswith('candidate'):
      assert cfg.data.validation_size == 5000
      assert cfg.eval_split == 'validation'
    else:
      assert cfg.data.validation_size == 0 and cfg.eval_split == 'test'
    if path.endswith('full1.flags'):
      # Candidate 3's schedule: a cosine to 0 over 12 epochs of 600 steps.
      assert cfg.optimizer.lr_schedule == 'cosine'
      assert cfg.train_steps == 12 * 600
    if path.endswith('full2.flags'):
      # Candidate 8's schedule: x0.9 an epoch of 600 steps, 30 epochs; the
      # run configs/mnist_best.flags now re-runs.
      assert cfg.optimizer.lr_schedule == 'exponential'
      assert cfg.optimizer.lr_decay_rate == 0.9
      assert cfg.optimizer.lr_decay_steps == 600
      assert cfg.train_steps == 30 * 600
      FLAGS(['train', '--flagfile=configs/mnist_best.flags'])
      assert pipeline_flags.config_from_flags().optimizer == cfg.optimizer


@pytest.mark.parametrize('features,expected', [
    (['avx2'], 'float32'), (['avx2', 'amx_bf16'], 'mixed_bfloat16'),
    (['avx512_bf16'], 'mixed_bfloat16')])
def test_auto_precision_follows_the_cpu(features, expected, monkeypatch,
                                        tmp_path):
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(hardware, 'cpu_features', lambda: features)
  with flagsaver.flagsaver(precision='auto', model_dir=str(tmp_path / 'new')):
    assert pipeline_flags.config_from_flags().model.precision == expected


def test_auto_precision_on_resume_keeps_what_the_run_resolved(monkeypatch,
                                                               tmp_path):
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'run'
  run.mkdir()
  saved = config_lib.TrainConfig(
      model=config_lib.model_spec(precision='mixed_bfloat16'),
      model_dir=str(run))
  (run / config_lib.CONFIG_FILE).write_text(saved.to_json())
  from absl import logging  # pylint: disable=g-import-not-at-top
  warnings = []
  monkeypatch.setattr(logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  # The run started on a bf16 CPU; it resumes on one without bf16: the
  # same precision, with one line saying it is emulated here and how to
  # go on in float32.
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['avx2'])
  with flagsaver.flagsaver(precision='auto', model_dir=str(run)):
    assert (pipeline_flags.config_from_flags().model.precision ==
            'mixed_bfloat16')
  assert len(warnings) == 1
  assert f'keeps mixed_bfloat16, as the run in {run} records' in warnings[0]
  assert 'emulated' in warnings[0]
  assert '--precision=float32 resumes it in float32' in warnings[0]
  warnings.clear()
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['amx_bf16'])
  with flagsaver.flagsaver(precision='auto', model_dir=str(run)):
    pipeline_flags.config_from_flags()
  assert not warnings
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['avx2'])
  # An unreadable config is the run guard's business: auto then follows
  # the hardware, and the guard refuses or accepts the resume.
  (run / config_lib.CONFIG_FILE).write_text('{')
  with flagsaver.flagsaver(precision='auto', model_dir=str(run)):
    assert pipeline_flags.config_from_flags().model.precision == 'float32'


def test_explicit_emulated_precision_runs_with_a_warning(monkeypatch,
                                                         tmp_path):
  from absl import logging  # pylint: disable=g-import-not-at-top
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['avx2', 'fma'])
  warnings = []
  monkeypatch.setattr(logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  with flagsaver.flagsaver(precision='mixed_bfloat16',
                           model_dir=str(tmp_path)):
    assert (pipeline_flags.config_from_flags().model.precision ==
            'mixed_bfloat16')
  assert len(warnings) == 1 and 'emulated' in warnings[0]
  warnings.clear()
  monkeypatch.setattr(hardware, 'cpu_features', lambda: ['amx_bf16'])
  with flagsaver.flagsaver(precision='mixed_bfloat16',
                           model_dir=str(tmp_path)):
    pipeline_flags.config_from_flags()
  assert not warnings


def test_an_isa_cap_oneDNN_does_not_know_is_a_flag_error(monkeypatch,
                                                         tmp_path):
  # The entry points turn config_from_flags' ValueError into a usage error.
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX3')
  for precision in ('auto', 'mixed_bfloat16', 'float32'):
    with flagsaver.flagsaver(precision=precision, model_dir=str(tmp_path)):
      with pytest.raises(ValueError, match='ONEDNN_MAX_CPU_ISA=AVX3 is not '
                         'an ISA oneDNN knows'):
        pipeline_flags.config_from_flags()
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  with flagsaver.flagsaver(precision='auto', model_dir=str(tmp_path)):
    assert pipeline_flags.config_from_flags().model.precision == 'float32'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_max_isa=AVX3')
  with flagsaver.flagsaver(precision='float32', model_dir=str(tmp_path)):
    with pytest.raises(ValueError, match='--xla_cpu_max_isa=AVX3 in XLA_FLAGS '
                       'is not an ISA XLA knows'):
      pipeline_flags.config_from_flags()


def test_16_bit_math_under_a_cap_that_has_none_is_a_flag_error(monkeypatch,
                                                                tmp_path):
  from pipeline.perf import hardware  # pylint: disable=g-import-not-at-top
  # An AVX-512 BF16 CPU capped to AVX2: oneDNN would abort on a bf16 op.
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: [
      'flags\t\t: avx2 fma avx512f avx512_vnni avx512_bf16'])
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  new_run = str(tmp_path / 'new')
  with flagsaver.flagsaver(precision='mixed_bfloat16', model_dir=new_run):
    with pytest.raises(ValueError, match=r'^--precision=mixed_bfloat16 cannot '
                       'run under ONEDNN_MAX_CPU_ISA=AVX2 on this AVX-512 CPU'):
      pipeline_flags.config_from_flags()
  with flagsaver.flagsaver(precision='auto', model_dir=new_run):
    assert pipeline_flags.config_from_flags().model.precision == 'float32'
  # A bf16 run resumed under the cap: auto keeps bf16, which cannot run.
  run = tmp_path / 'run'
  run.mkdir()
  (run / config_lib.CONFIG_FILE).write_text(config_lib.TrainConfig(
      model=config_lib.model_spec(precision='mixed_bfloat16'),
      model_dir=str(run)).to_json())
  with flagsaver.flagsaver(precision='auto', model_dir=str(run)):
    with pytest.raises(ValueError, match=r'^--precision=auto \(mixed_bfloat16, '
                       f'as the run in {run} records\) cannot '
                       'run under ONEDNN_MAX_CPU_ISA=AVX2'):
      pipeline_flags.config_from_flags()
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE')
  with flagsaver.flagsaver(precision='auto', model_dir=str(run)):
    assert (pipeline_flags.config_from_flags().model.precision ==
            'mixed_bfloat16')


def test_autotune_flag_reaches_the_config_and_is_free_on_resume():
  with flagsaver.flagsaver(autotune='probe'):
    cfg = pipeline_flags.config_from_flags()
  assert cfg.runtime.autotune == 'probe'
  refused, noted = config_lib.config_changes(
      cfg, config_lib.replace(cfg, autotune='off'))
  assert not refused and not noted


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)


def test_run_flags_given_are_the_run_settings_given_as_the_config_holds_them():
  values = flags.FlagValues()
  pipeline_flags.define_flags(values)
  values(['prog', '--conv_filters=3', '--decoder_units=8,16',
          '--learning_rate=0.5', '--precision=auto', '--model=capsnet',
          '--train_steps=9', '--dataset=synthetic', '--shift_pixels=1'])
  assert pipeline_flags.run_flags_given(values) == dict(
      conv_filters=3, decoder_units=(8, 16), learning_rate=0.5,
      precision='auto', model='capsnet', train_steps=9)
  # Every run setting is a flag; the data flags are left out.
  given = flags.FlagValues()
  pipeline_flags.define_flags(given)
  given(['prog'] + [f'--{n}={values[n].value}' for n in ('batch_size',
                                                         'seed', 'm_plus')])
  assert set(pipeline_flags.run_flags_given(given)) == {'batch_size', 'seed',
                                                        'm_plus'}


@pytest.mark.parametrize('overrides,match', [
    (dict(batch_size=0), '--batch_size must be >= 1'),
    (dict(routing_iterations=0), '--routing_iterations must be >= 1'),
    (dict(eval_every=0), '--eval_every must be >= 1'),
])
def test_a_bad_value_is_refused_before_the_precision_is_resolved(
    overrides, match, caplog, tmp_path):
  # Nothing is logged above the refusal's one line.
  with flagsaver.flagsaver(precision='auto', model_dir=str(tmp_path),
                           **overrides):
    with caplog.at_level('INFO'):
      with pytest.raises(ValueError, match=match):
        pipeline_flags.config_from_flags()
  assert '--precision=auto' not in caplog.text
  with flagsaver.flagsaver(precision='auto', model_dir=str(tmp_path)):
    with caplog.at_level('INFO'):
      pipeline_flags.config_from_flags()
  assert '--precision=auto' in caplog.text
