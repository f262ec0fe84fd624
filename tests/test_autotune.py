"""Tests of pipeline.perf.autotune: wrong formulations are rejected, the fastest
correct one is kept, choices are cached per machine and reused."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from pipeline.models import capsnet
from pipeline.models import layers
from pipeline.perf import autotune
from pipeline.perf import hardware


class Doubler(keras.layers.Layer):
  """A layer with three formulations of 2 * x @ w: one right, one slow and
  right, one wrong."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.choice = {'train': 'plain', 'infer': 'plain'}
    self.runs = []

  def build(self, input_shape):
    self.w = self.add_weight(name='w', shape=[input_shape[-1], 3])

  def formulations(self, mode, device='CPU'):
    del mode, device
    return ('plain', 'slow', 'wrong')

  def formulation(self, mode):
    return self.choice[mode]

  def set_formulation(self, mode, name):
    self.choice[mode] = name

  def reference(self, x):
    return 2.0 * tf.matmul(x, self.w)

  def run(self, x, name):
    self.runs.append(name)
    if name == 'wrong':
      return 2.0 * tf.matmul(x, self.w) + 1.0
    if name == 'slow':
      # Much more work for the same value.
      y = tf.matmul(x, self.w)
      for _ in range(200):
        y = tf.matmul(tf.matmul(x, self.w) * 0.0 + y, tf.eye(3))
      return y + tf.matmul(x, self.w)
    return tf.matmul(x, self.w) + tf.matmul(x, self.w)


class Model:
  """The part of the model contract `tune` uses."""

  def __init__(self):
    self.layer = Doubler(name='doubler')
    self.layer.build([None, 4])

  def tunable_parts(self, images):
    return {'doubler': (self.layer, tf.reshape(images, [-1, 4]))}


def test_probe_rejects_a_wrong_formulation_and_keeps_the_fastest():
  model = Model()
  x = tf.random.normal([8, 4], seed=1)
  for mode in ('train', 'infer'):
    result = autotune.probe(model.layer, x, mode, ('plain', 'slow', 'wrong'))
    # (Which correct one is faster is the machine's business: no timing is
    # asserted, only that the choice is the fastest measured.)
    assert result['choice'] == min(result['seconds'],
                                   key=result['seconds'].get)
    assert 'wrong' in result['rejected'] and 'off by' in result['rejected'][
        'wrong']
    assert set(result['seconds']) == {'plain', 'slow'}
    assert result['errors']['plain'] < 1e-5


def test_probe_runs_the_reference_formulation_once():
  model = Model()
  model.layer.reference_formulation = lambda: 'plain'
  model.layer.reference = lambda x: model.layer.run(x, 'plain')
  result = autotune.probe(model.layer, tf.random.normal([8, 4], seed=1),
                          'infer', ('plain', 'slow'))
  # Traced once as the reference (and once for its output shapes), never
  # again as a candidate; still timed and choosable.
  assert model.layer.runs.count('plain') == 2
  assert 'plain' in result['seconds'] and result['errors']['plain'] == 0.0
  assert set(result['first_call_seconds']) == {'reference', 'slow'}


def test_every_formulation_wrong_is_an_error():
  model = Model()
  with pytest.raises(RuntimeError, match='Every formulation of doubler was '
                     'rejected.*--autotune=off'):
    autotune.probe(model.layer, tf.ones([2, 4]), 'infer', ('wrong',))


def test_the_distance_is_relative_to_each_reference_tensor():
  want = [np.array([1., -4.], np.float32), np.full([2, 2], 100., np.float32)]
  distance = autotune._Distance(want)  # pylint: disable=protected-access
  # Each tensor against its own largest magnitude; the worst one counts.
  assert distance([want[0] + [0., 1.], want[1]]) == pytest.approx(0.25)
  assert distance([want[0], want[1] + 1.]) == pytest.approx(0.01)
  # Its scratch carries nothing from one candidate to the next.
  assert distance([want[0], want[1]]) == 0.0
  assert distance([np.array([1., np.nan], np.float32), want[1]]) == np.inf
  assert distance([want[0], np.zeros([3, 2], np.float32)]) == np.inf
  # A tensor that is all zeros in the reference: any difference is out.
  assert autotune._Distance([np.zeros(3, np.float32)])(  # pylint: disable=protected-access
      [np.full(3, 1e-3, np.float32)]) > 1.


def test_tune_caches_and_reuses_the_choice(tmp_path):
  cache = str(tmp_path / 'cache.json')
  images = {'train': tf.random.normal([2, 4], seed=2)}
  first = Model()
  record = autotune.tune(first, images, 'cached', cache)
  entry = record['parts']['doubler/train']
  assert entry['source'] == 'probe' and entry['choice'] in ('plain', 'slow')
  assert first.layer.formulation('train') == entry['choice']
  assert len(json.load(open(cache))) == 1

  second = Model()
  second.layer.set_formulation('train', 'wrong')
  again = autotune.tune(second, images, 'cached', cache)
  assert again['parts']['doubler/train']['source'] == 'cache'
  assert second.layer.formulation('train') == entry['choice']
  assert not second.layer.runs  # nothing was measured

  # Another shape is another key; --autotune=probe measures regardless.
  other = autotune.tune(Model(), {'train': tf.ones([3, 4])}, 'cached', cache)
  assert other['parts']['doubler/train']['source'] == 'probe'
  forced = autotune.tune(Model(), images, 'probe', cache)
  assert forced['parts']['doubler/train']['source'] == 'probe'
  assert len(json.load(open(cache))) == 2


def test_a_corrupt_or_foreign_cache_costs_a_probe_not_the_run(tmp_path):
  cache = tmp_path / 'cache.json'
  cache.write_text('{not json')
  images = {'infer': tf.ones([2, 4])}
  record = autotune.tune(Model(), images, 'cached', str(cache))
  assert record['parts']['doubler/infer']['source'] == 'probe'
  entries = json.load(open(cache))
  # A cached choice that is no longer a candidate is probed again.
  key = next(iter(entries))
  entries[key]['choice'] = 'retired'
  cache.write_text(json.dumps(entries))
  again = autotune.tune(Model(), images, 'cached', str(cache))
  assert again['parts']['doubler/infer']['source'] == 'probe'


def test_off_keeps_the_defaults_and_writes_nothing(tmp_path):
  cache = tmp_path / 'cache.json'
  model = Model()
  model.layer.set_formulation('infer', 'slow')
  record = autotune.tune(model, {'infer': tf.ones([2, 4])}, 'off', str(cache))
  assert record['parts']['doubler/infer'] == {
      'input_shape': [2, 4], 'candidates': ['plain', 'slow', 'wrong'],
      'choice': 'slow', 'source': 'default'}
  assert not cache.exists() and not model.layer.runs
  with pytest.raises(ValueError, match="policy must be one of"):
    autotune.tune(model, {}, 'sometimes', str(cache))


def test_the_cache_key_names_the_machine_the_shapes_and_the_dtype():
  layer = Doubler(name='d')
  x = tf.ones([2, 4])
  machine = autotune.machine_key()
  assert {'cpu', 'cpu_features', 'gpus', 'tensorflow'} <= set(machine)
  key = autotune.cache_key(machine, layer, x, 'train', ('a', 'b'))
  assert key != autotune.cache_key(machine, layer, tf.ones([3, 4]), 'train',
                                   ('a', 'b'))
  assert key != autotune.cache_key(dict(machine, cpu='other'), layer, x,
                                   'train', ('a', 'b'))
  half = Doubler(name='d', dtype='mixed_bfloat16')
  assert key != autotune.cache_key(machine, half, x, 'train', ('a', 'b'))


def test_the_cache_key_changes_with_the_formulations_code(tmp_path,
                                                        monkeypatch):
  # A choice timed on other code of the formulations (an edit to the
  # package that defines the layer) is not reused.
  package = tmp_path / 'formulas'
  package.mkdir()
  (package / 'layer.py').write_text(
      'import tf_keras as keras\n\n'
      'class Plain(keras.layers.Layer):\n  pass\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module('formulas.layer')
  layer, x = module.Plain(), tf.ones([2, 4])
  machine = autotune.machine_key()
  key = autotune.cache_key(machine, layer, x, 'train', ('a', 'b'))
  assert key == autotune.cache_key(machine, layer, x, 'train', ('a', 'b'))
  (package / 'other.py').write_text('# a formulation changed\n')
  autotune._source_digest.cache_clear()  # A new process reads it afresh.
  assert key != autotune.cache_key(machine, layer, x, 'train', ('a', 'b'))
  assert len(autotune.code_version(layers.PrimaryCapsules(4, 2, 3, 1))) == 16
  # A layer class with no source file (defined in a notebook) still keys.
  monkeypatch.delattr(module, '__file__')
  assert autotune.code_version(layer) == 'no source file'


def test_an_isa_cap_changes_the_machine_key(monkeypatch):
  monkeypatch.setattr(hardware, '_cpuinfo', lambda: [
      'flags\t\t: avx2 fma avx512f avx512_bf16'])
  monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
  monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_multi_thread_eigen=true')
  native = autotune.machine_key()
  assert 'avx512_bf16' in native['cpu_features']
  assert 'xla_cpu_max_isa' not in native
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
  onednn_capped = autotune.machine_key()
  assert onednn_capped['cpu_features'] == ['avx2', 'fma']
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_max_isa=avx2')
  both = autotune.machine_key()
  assert both == dict(onednn_capped, xla_cpu_max_isa='AVX2')
  assert '(ONEDNN_MAX_CPU_ISA=AVX2, xla_cpu_max_isa=AVX2)' in hardware.machine()


def test_tune_on_a_capsnet_sets_correct_formulations(tmp_path):
  model = capsnet.CapsNet(input_shape=(20, 20, 1), num_classes=3,
                          conv_filters=8, primary_channels=4, primary_dim=4,
                          class_dim=4, decoder_units=(8, 16),
                          jit_compile=True)
  images = tf.random.uniform([2, 20, 20, 1], seed=3)
  model(images)
  want = model(images, training=False)['lengths']
  record = autotune.tune(model, {'train': images, 'infer': images},
                         'probe', str(tmp_path / 'c.json'), repeats=1)
  assert sorted(record['parts']) == [
      'class_capsules/infer', 'class_capsules/train',
      'primary_capsules/infer', 'primary_capsules/train']
  for key, entry in record['parts'].items():
    part, mode = key.split('/')
    assert getattr(model, 'primary' if part.startswith('primary') else
                   'class_capsules').formulation(mode) == entry['choice']
    assert not entry['rejected'], entry
  # Inference without XLA (an export's signatures) runs the fastest
  # candidate that does not compile; it is recorded and in the summary.
  for part, layer in (('primary_capsules', model.primary),
                      ('class_capsules', model.class_capsules)):
    entry = record['parts'][f'{part}/infer']
    plain = entry['plain_choice']
    assert not layer.compiles(plain)
    assert entry['seconds'][plain] == min(
        t for n, t in entry['seconds'].items() if not layer.compiles(n))
    # The summary names it where it is not the inference choice itself.
    assert autotune.summary(record).get(f'{part}/infer/plain',
                                        entry['choice']) == plain
  model.compile_inference(False)
  plain = model(images, training=False)['lengths']
  assert float(tf.reduce_max(tf.abs(plain - want))) < 1e-5
  model.compile_inference(True)
  got = model(images, training=False)['lengths']
  assert float(tf.reduce_max(tf.abs(got - want))) < 1e-5


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
