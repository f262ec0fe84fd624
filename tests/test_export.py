"""Tests of pipeline.export: versions, atomic writes, and a fresh-process load."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import trainer as trainer_lib
from pipeline.perf import autotune
from pipeline.serving import image_headers
from pipeline.serving import publish
from pipeline.serving import restore
from pipeline.serving import signatures as signatures_lib
from pipeline.serving import warmup

from conftest import REPO
from helpers import run_trainer, TINY_MODEL, tiny_config

# Runs in a fresh interpreter that imports no project code.
_LOAD_SCRIPT = '''
import sys, numpy as np, tensorflow as tf
path, data = sys.argv[1], np.load(sys.argv[2], allow_pickle=True)
sigs = tf.saved_model.load(path).signatures
out = sigs['serving_default'](images=tf.constant(data['images']))
np.testing.assert_allclose(out['probabilities'].numpy(), data['lengths'],
                           atol=1e-5)
np.testing.assert_allclose(out['poses'].numpy(), data['poses'], atol=1e-5)
np.testing.assert_array_equal(out['classes'].numpy(), data['classes'])
enc = sigs['predict_images'](images=tf.constant(list(data['pngs'])))
np.testing.assert_allclose(enc['probabilities'].numpy(), data['png_lengths'],
                           atol=1e-5)
rec = sigs['reconstruct'](images=tf.constant(data['images']),
                          class_ids=tf.constant(data['classes']))
np.testing.assert_allclose(rec['reconstructions'].numpy(), data['recon'],
                           atol=1e-5)
dec = sigs['decode'](poses=tf.constant(data['poses']),
                     class_ids=tf.constant(data['classes']))
np.testing.assert_allclose(dec['reconstructions'].numpy(), data['recon'],
                           atol=1e-5)
assert not any(m.startswith('pipeline') for m in sys.modules)
print('LOADED OK')
'''


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('run')
  trainer = trainer_lib.Trainer(tiny_config(model_dir, train_steps=2))
  run_trainer(trainer)
  return trainer, model_dir


def test_export_loads_in_fresh_process_and_agrees(trained, tmp_path):
  trainer, model_dir = trained
  path = publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'm'))
  assert path == str(tmp_path / 'm' / '1')
  assert tf.saved_model.contains_saved_model(path)
  images = np.random.default_rng(0).uniform(size=[5, 20, 20, 1]).astype(
      np.float32)
  out = trainer.model(images, training=False)
  classes = np.argmax(out['lengths'].numpy(), -1)
  quantized = np.round(images * 255).astype(np.uint8)
  pngs = np.array([tf.io.encode_png(im).numpy() for im in quantized], object)
  png_out = trainer.model(quantized.astype(np.float32) / 255, training=False)
  recon = trainer.model.reconstruct(out['poses'], tf.one_hot(classes, 4))
  np.savez(tmp_path / 'ref.npz', images=images,
           lengths=out['lengths'].numpy(), poses=out['poses'].numpy(),
           classes=classes, pngs=pngs,
           png_lengths=png_out['lengths'].numpy(), recon=recon.numpy())
  env = dict(os.environ, PYTHONPATH='')
  proc = subprocess.run(
      [sys.executable, '-c', _LOAD_SCRIPT, path, str(tmp_path / 'ref.npz')],
      capture_output=True, text=True, cwd=str(tmp_path), env=env,
      timeout=300)
  assert 'LOADED OK' in proc.stdout, proc.stderr[-3000:]


def test_a_restored_model_infers_plainly_as_its_run_chose(trained, tmp_path):
  # An export from a checkpoint runs, without XLA, the formulations the
  # run's probe chose for that (`plain_choice` in its autotune.json); a
  # choice the model does not take is skipped; no record keeps defaults.
  _, model_dir = trained
  run = tmp_path / 'run'
  shutil.copytree(model_dir, run)
  record = {'parts': {
      'class_capsules/infer': {'choice': 'batch_major+xla',
                               'plain_choice': 'class_major'},
      'primary_capsules/infer': {'choice': 'xla',
                                 'plain_choice': 'winograd'},
      'class_capsules/train': {'choice': 'caps_major',
                               'plain_choice': 'caps_major'}}}
  (run / autotune.RECORD_FILE).write_text(json.dumps(record))
  model, _ = restore.load_checkpointed_model(str(run))
  assert model.class_capsules._plain_infer == 'class_major'
  assert model.primary._plain_infer is None
  assert model.class_capsules.formulation('train') == 'batch_major+xla'
  want = restore.load_checkpointed_model(str(model_dir))[0]
  images = tf.random.uniform([3, 20, 20, 1], seed=2)
  np.testing.assert_allclose(model(images, training=False)['lengths'],
                             want(images, training=False)['lengths'],
                             atol=1e-5)
  (run / autotune.RECORD_FILE).unlink()
  model, _ = restore.load_checkpointed_model(str(run))
  assert model.class_capsules._plain_infer is None


def test_versions_increment_and_no_temporary_left(trained, tmp_path):
  _, model_dir = trained
  base = tmp_path / 'versions'
  os.makedirs(base / '7')
  (base / '7' / 'x').write_text('taken')
  path = publish.export_from_checkpoint(str(model_dir), str(base))
  assert os.path.basename(path) == '8'
  assert sorted(os.listdir(base)) == ['7', '8']
  assert (base / '7' / 'x').read_text() == 'taken'


def test_an_export_in_another_precision_than_the_run(trained, tmp_path):
  # A float32 run exported in mixed bfloat16 (and a bf16 run in float32,
  # for a server without native bf16): the same weights, so the same
  # answers within bf16's rounding, but computed in the precision asked.
  _, model_dir = trained
  images = tf.constant(np.random.default_rng(1).uniform(
      size=[6, 20, 20, 1]).astype(np.float32))
  lengths = {}
  for precision in (None, 'mixed_bfloat16'):
    loaded = tf.saved_model.load(publish.export_from_checkpoint(
        str(model_dir), str(tmp_path / str(precision)), precision=precision))
    lengths[precision] = loaded.signatures['serving_default'](
        images=images)['probabilities'].numpy()
  np.testing.assert_allclose(lengths['mixed_bfloat16'], lengths[None],
                             atol=0.05)
  assert not np.array_equal(lengths['mixed_bfloat16'], lengths[None])


def test_batch_dimension_is_dynamic_and_shape_checked(trained, tmp_path):
  _, model_dir = trained
  loaded = tf.saved_model.load(
      publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'd')))
  fn = loaded.signatures['serving_default']
  for batch in (1, 3):
    assert fn(images=tf.zeros([batch, 20, 20, 1]))['classes'].shape == (batch,)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\?,20,20,1'):
    fn(images=tf.zeros([2, 28, 28, 1]))


def test_saved_model_cli_lists_signatures_and_warmup_parses(trained, tmp_path):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  _, model_dir = trained
  path = publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'cli'))
  proc = subprocess.run(['saved_model_cli', 'show', '--dir', path, '--all'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for name in ('serving_default', 'predict_images', 'reconstruct', 'decode'):
    assert f"signature_def['{name}']" in proc.stdout
  assert '(-1, 20, 20, 1)' in proc.stdout
  records = list(tf.data.TFRecordDataset(
      os.path.join(path, warmup.WARMUP_FILE)).as_numpy_iterator())
  signatures = []
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record)
    assert log.predict_log.request.model_spec.name == 'cli'
    signatures.append(log.predict_log.request.model_spec.signature_name)
  assert sorted(signatures) == ['decode', 'predict_images', 'reconstruct',
                                'serving_default']


def test_wrong_dtype_and_bytes_are_rejected(trained, tmp_path):
  _, model_dir = trained
  sigs = tf.saved_model.load(publish.export_from_checkpoint(
      str(model_dir), str(tmp_path / 'bad'))).signatures
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError),
                     match='float32|int32'):
    sigs['serving_default'](images=tf.zeros([1, 20, 20, 1], tf.int32))
  with pytest.raises(tf.errors.InvalidArgumentError):
    sigs['predict_images'](images=tf.constant([b'not an image']))


def test_export_command(trained, tmp_path):
  _, model_dir = trained
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.export', f'--model_dir={model_dir}',
       f'--export_dir={tmp_path}/cmd', '--precision=float32'], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'{tmp_path}/cmd/1' in proc.stdout
  bad = subprocess.run(
      [sys.executable, '-m', 'pipeline.export', f'--model_dir={tmp_path}',
       f'--export_dir={tmp_path}/new/exports'], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert bad.returncode != 0 and 'not a model directory' in bad.stderr
  # Refused, it leaves no empty export directory (nor the parent it made).
  assert not (tmp_path / 'new').exists()
  missing = subprocess.run(
      [sys.executable, '-m', 'pipeline.export', f'--model_dir={model_dir}',
       f'--export_dir={tmp_path}/cmd', '--checkpoint=/nonexistent/ckpt-1'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert missing.returncode != 0
  assert 'is not a checkpoint' in missing.stderr
  assert 'Traceback' not in missing.stderr


def test_missing_run_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a model directory'):
    publish.export_from_checkpoint(str(tmp_path), str(tmp_path / 'e'))


@pytest.mark.parametrize('name', ['ckpt-999', 'ckpt-2.index', 'nothing'])
def test_a_checkpoint_that_is_not_there_is_named(trained, tmp_path, name):
  _, model_dir = trained
  path = os.path.join(model_dir, 'checkpoints', name)
  with pytest.raises(FileNotFoundError, match='is not a checkpoint'):
    publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'e'), path)
  assert not (tmp_path / 'e').exists()


def test_large_request_runs_in_chunks(trained, tmp_path):
  trainer, model_dir = trained
  sigs = tf.saved_model.load(publish.export_from_checkpoint(
      str(model_dir), str(tmp_path / 'big'))).signatures
  n = 2 * signatures_lib.SERVING_CHUNK + 17
  images = tf.random.uniform([n, 20, 20, 1], seed=3)
  out = sigs['serving_default'](images=images)
  expected = trainer.model(images, training=False)['lengths'].numpy()
  np.testing.assert_allclose(out['probabilities'].numpy(), expected,
                             atol=1e-5)
  rec = sigs['reconstruct'](images=images, class_ids=tf.zeros([n], tf.int64))
  assert rec['reconstructions'].shape == (n, 20, 20, 1)
  graph = sigs['serving_default'].graph.as_graph_def()
  ops = {node.op for f in graph.library.function for node in f.node_def}
  assert 'While' in ops or 'StatelessWhile' in ops



# A 1x1 GIF (the classic 43-byte one) and a 3x2 24-bit BMP, written by hand.
_GIF = (b'GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!'
        b'\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00'
        b'\x00\x02\x02D\x01\x00;')


def _bmp(width, height):
  import struct  # pylint: disable=g-import-not-at-top
  row = (b'\x80\x80\x80' * width).ljust((3 * width + 3) // 4 * 4, b'\0')
  pixels = row * height
  header = struct.pack('<2sIHHI', b'BM', 54 + len(pixels), 0, 0, 54)
  info = struct.pack('<IiiHHIIiiII', 40, width, height, 1, 24, 0,
                     len(pixels), 2835, 2835, 0, 0)
  return header + info + pixels


@pytest.fixture(scope='module')
def signatures(trained, tmp_path_factory):
  _, model_dir = trained
  return tf.saved_model.load(publish.export_from_checkpoint(
      str(model_dir), str(tmp_path_factory.mktemp('guarded')))).signatures


@pytest.mark.parametrize('class_ids,match', [
    ([-1, 0], r'class_ids must lie in \[0, 4\); found one below 0'),
    ([0, 4], r'class_ids must lie in \[0, 4\); found one of 4 or more'),
    ([0, 2 ** 40], 'found one of 4 or more'),
    ([0], 'one class per example'),
    ([0, 1, 2], 'one class per example'),
])
def test_class_ids_are_checked(signatures, class_ids, match):
  ids = tf.constant(class_ids, tf.int64)
  with pytest.raises(tf.errors.InvalidArgumentError, match=match):
    signatures['reconstruct'](images=tf.zeros([2, 20, 20, 1]), class_ids=ids)
  with pytest.raises(tf.errors.InvalidArgumentError, match=match):
    signatures['decode'](poses=tf.zeros([2, 4, 4]), class_ids=ids)


@pytest.mark.parametrize('value,match', [
    (float('nan'), 'NaN or Inf'), (float('inf'), 'NaN or Inf'),
    (1.5, 'found a pixel above 1'), (-0.1, 'found a pixel below 0')])
def test_pixels_outside_the_unit_range_are_refused(signatures, value, match):
  images = tf.tensor_scatter_nd_update(tf.zeros([2, 20, 20, 1]),
                                       [[1, 3, 4, 0]], [value])
  for name, kwargs in (('serving_default', {}),
                       ('reconstruct', {'class_ids': tf.constant([0, 1],
                                                                 tf.int64)})):
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
      signatures[name](images=images, **kwargs)


def test_decode_refuses_poses_of_another_shape(signatures):
  for shape in ([1, 4, 16], [1, 5, 4], [4, 4]):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
      signatures['decode'](poses=tf.zeros(shape),
                           class_ids=tf.zeros([shape[0]], tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or Inf'):
    signatures['decode'](poses=tf.fill([1, 4, 4], float('nan')),
                         class_ids=tf.zeros([1], tf.int64))


def test_an_empty_batch_gets_an_empty_answer(signatures):
  out = signatures['serving_default'](images=tf.zeros([0, 20, 20, 1]))
  assert out['probabilities'].shape == (0, 4)
  assert out['classes'].shape == (0,) and out['poses'].shape == (0, 4, 4)
  none = tf.zeros([0], tf.int64)
  rec = signatures['reconstruct'](images=tf.zeros([0, 20, 20, 1]),
                                  class_ids=none)
  assert rec['reconstructions'].shape == (0, 20, 20, 1)
  dec = signatures['decode'](poses=tf.zeros([0, 4, 4]), class_ids=none)
  assert dec['reconstructions'].shape == (0, 20, 20, 1)
  enc = signatures['predict_images'](images=tf.constant([], tf.string))
  assert enc['probabilities'].shape == (0, 4)


def test_encoded_sizes_come_from_the_header():
  png = tf.io.encode_png(tf.zeros([7, 9, 1], tf.uint8))
  jpeg = tf.io.encode_jpeg(tf.zeros([5, 6, 3], tf.uint8))
  for data, pixels in ((png, 63), (jpeg, 30), (tf.constant(_GIF), 1),
                       (tf.constant(_bmp(3, 2)), 6),
                       (tf.constant(b'not an image'), 0)):
    assert int(image_headers.encoded_pixels(data)) == pixels


def test_predict_images_refuses_huge_images_and_reads_every_format(
    signatures):
  side = 4097  # One pixel row and column past the 4096 x 4096 budget.
  huge = tf.io.encode_png(tf.zeros([side, side, 1], tf.uint8))
  assert len(huge.numpy()) < 100_000  # Small file, huge image.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='larger than 16777216 pixels'):
    signatures['predict_images'](images=tf.stack([huge]))
  colour_png = tf.io.encode_png(tf.fill([30, 25, 3], tf.constant(128,
                                                                  tf.uint8)))
  grey = tf.fill([1, 20, 20, 1], 128 / 255)
  expected = signatures['serving_default'](images=grey)['probabilities']
  for data in (colour_png, tf.constant(_bmp(3, 2)),
               tf.io.encode_jpeg(tf.fill([8, 8, 1], tf.constant(128,
                                                                tf.uint8)))):
    out = signatures['predict_images'](images=tf.stack([data]))
    np.testing.assert_allclose(out['probabilities'].numpy(),
                               expected.numpy(), atol=2e-2)
  gif = signatures['predict_images'](images=tf.constant([_GIF]))
  assert gif['probabilities'].shape == (1, 4)



def _pil_bytes(frames, fmt, **options):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
  out = io.BytesIO()
  images[0].save(out, fmt, save_all=len(images) > 1,
                 append_images=images[1:], **options)
  return out.getvalue()


def _frames(count, height, width):
  return [np.full([height, width, 3], 40 * (i + 1)) for i in range(count)]


def _vp8l_header(width, height):
  import struct  # pylint: disable=g-import-not-at-top
  bits = (width - 1) | (height - 1) << 14
  chunk = b'\x2f' + struct.pack('<I', bits) + b'\0' * 16
  body = b'WEBP' + b'VP8L' + struct.pack('<I', len(chunk)) + chunk
  return b'RIFF' + struct.pack('<I', len(body)) + body


def test_every_format_declares_its_pixels_frames_included():
  cases = [
      (_pil_bytes(_frames(1, 12, 10), 'WEBP', lossless=True), 120),
      (_pil_bytes(_frames(1, 12, 10), 'WEBP', quality=80), 120),
      (_pil_bytes(_frames(3, 12, 10), 'WEBP', lossless=True), 360),
      (_pil_bytes(_frames(1, 12, 10), 'GIF'), 120),
      (_pil_bytes(_frames(3, 12, 10), 'GIF'), 360),
      (_vp8l_header(16383, 16383), 16383 ** 2),
      (b'RIFF\x10\x00\x00\x00WAVEfmt ', 0),
  ]
  for data, pixels in cases:
    assert int(image_headers.encoded_pixels(tf.constant(data))) == pixels, data[:40]


def test_predict_images_bounds_webp_and_animations(signatures):
  for data in (_vp8l_header(16383, 16383),
               # Two frames of 3000 x 3000: each within the budget, not both.
               _pil_bytes(_frames(2, 3000, 3000), 'GIF')):
    assert len(data) < 200_000
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match='all frames of an animation counted'):
      signatures['predict_images'](images=tf.constant([data]))
  grey = tf.fill([1, 20, 20, 1], 128 / 255)
  expected = signatures['serving_default'](images=grey)['probabilities']
  for data in (_pil_bytes([np.full([8, 8, 3], 128)], 'WEBP', lossless=True),
               _pil_bytes([np.full([8, 8, 3], 128)], 'WEBP', quality=90),
               _pil_bytes(_frames(3, 8, 8), 'GIF')):
    out = signatures['predict_images'](images=tf.constant([data]))
    assert out['probabilities'].shape == (1, 4)
  # TensorFlow's WebP decoder aborts the process on an animation inside a
  # graph ("double free or corruption"): refused before it is decoded.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='Animated WebP images are not accepted'):
    signatures['predict_images'](images=tf.constant(
        [_pil_bytes(_frames(3, 8, 8), 'WEBP', lossless=True)]))
  still = _pil_bytes([np.full([8, 8, 3], 128)], 'WEBP', lossless=True)
  out = signatures['predict_images'](images=tf.constant([still]))
  np.testing.assert_allclose(out['probabilities'].numpy(), expected.numpy(),
                             atol=2e-2)


@pytest.mark.parametrize('method,inputs,match', [
    ('_reconstruct', (tf.zeros([1, 20, 20, 1]), tf.constant(0, tf.int64)),
     r'class_ids \(int64\) must be a vector \[batch\]'),
    ('_decode', (tf.zeros([1, 4, 4]), tf.constant([[0]], tf.int64)),
     r'class_ids \(int64\) must be a vector \[batch\]'),
    ('_predict_encoded', (tf.constant(b'x'),),
     r'images \(encoded image strings\) must be a vector \[batch\]'),
])
def test_inputs_of_another_rank_are_named_inside_the_graph(
    trained, method, inputs, match):
  # Python's signature binding refuses another rank itself; TF Serving
  # feeds the graph without that check, so the graph says it too. Traced
  # here with inputs of unknown rank, as a fed graph sees them.
  trainer, _ = trained
  module = signatures_lib.ServingModule(trainer.model, (20, 20, 1))
  # The last input (the one of the wrong rank) has an unknown rank.
  specs = [tf.TensorSpec(t.shape, t.dtype) for t in inputs[:-1]]
  fn = tf.function(getattr(module, method), input_signature=specs + [
      tf.TensorSpec(None, inputs[-1].dtype)])
  with pytest.raises(tf.errors.InvalidArgumentError, match=match):
    fn(*inputs)


def test_versions_are_readable_as_the_umask_says(trained, tmp_path):
  _, model_dir = trained
  old = os.umask(0o022)
  try:
    path = publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'u'))
  finally:
    os.umask(old)
  assert os.stat(path).st_mode & 0o777 == 0o755
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      assert os.stat(os.path.join(root, name)).st_mode & 0o044 == 0o044, name


def test_only_ascii_digits_name_versions(trained, tmp_path):
  _, model_dir = trained
  base = tmp_path / 'odd'
  for name in ('\u00b2', '\u0663', '3'):  # superscript two, Arabic three
    os.makedirs(base / name)
  path = publish.export_from_checkpoint(str(model_dir), str(base))
  assert path == str(base / '4')


@pytest.fixture(scope='module', params=['another_model', 'other_options'])
def other_model_run(request, tmp_path_factory):
  """A run whose checkpoint does not fit `trained`'s model: another model,
  or CapsNet with another class-capsule size (variables of other shapes,
  which TensorFlow refuses inside the read itself)."""
  from pipeline import config as config_lib  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path_factory.mktemp(request.param)
  model = (config_lib.model_spec('baseline_cnn', conv_channels=(4, 4),
                                 fc_units=(8,))
           if request.param == 'another_model' else
           config_lib.model_spec(**dict(TINY_MODEL, class_dim=6)))
  run_trainer(trainer_lib.Trainer(tiny_config(model_dir, train_steps=2,
                                              model=model)))
  return model_dir, model.name


def _cli(tool, *args):
  return subprocess.run([sys.executable, '-m', f'pipeline.{tool}', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_checkpoint_of_another_model_is_refused_and_named(
    trained, other_model_run, tmp_path):
  _, model_dir = trained
  other_dir, other_name = other_model_run
  foreign = os.path.join(other_dir, 'checkpoints', 'ckpt-2')
  with pytest.raises(ValueError, match='does not fit the model') as raised:
    publish.export_from_checkpoint(str(model_dir), str(tmp_path / 'e'),
                                  foreign)
  assert f'the run in {other_dir} (model {other_name})' in str(raised.value)
  assert not (tmp_path / 'e').exists() or not os.listdir(tmp_path / 'e')
  for tool, extra in (('export', [f'--export_dir={tmp_path}/cli']),
                      ('evaluate', [])):
    proc = _cli(tool, f'--model_dir={model_dir}', f'--checkpoint={foreign}',
                *extra)
    assert proc.returncode != 0, (tool, proc.stdout)
    assert 'does not fit the model' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert 'unrestored values' not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('damage', ['truncate', 'remove_data'])
def test_a_damaged_checkpoint_is_named_at_export_and_evaluate(
    trained, tmp_path, damage):
  import shutil  # pylint: disable=g-import-not-at-top
  _, model_dir = trained
  copy = tmp_path / 'run'
  shutil.copytree(model_dir, copy)
  data = copy / 'checkpoints' / 'ckpt-2.data-00000-of-00001'
  if damage == 'truncate':
    data.write_bytes(data.read_bytes()[:100])
  else:
    data.unlink()
  for tool, extra in (('export', [f'--export_dir={tmp_path}/cli']),
                      ('evaluate', [])):
    proc = _cli(tool, f'--model_dir={copy}', *extra)
    assert proc.returncode != 0, (tool, proc.stdout)
    assert 'cannot be read: its files are truncated, damaged or missing' in (
        proc.stderr), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def test_export_to_a_path_that_cannot_be_a_directory(trained, tmp_path):
  _, model_dir = trained
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  for base in (blocker, blocker / 'under'):
    proc = _cli('export', f'--model_dir={model_dir}', f'--export_dir={base}')
    assert proc.returncode != 0
    assert '--export_dir' in proc.stderr and 'not writable' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_export_while_training_rotates_checkpoints_takes_the_newest(
    trained, tmp_path, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  _, model_dir = trained
  copy = tmp_path / 'run'
  shutil.copytree(model_dir, copy)
  ckpt = copy / 'checkpoints'
  real = restore.run_guard.checkpoint_readable
  calls = []

  def rotate_first(path):
    # The trainer saves ckpt-3 and deletes ckpt-2 while it is being read.
    if not calls:
      for name in os.listdir(ckpt):
        if name.startswith('ckpt-2.'):
          shutil.copy(ckpt / name, ckpt / name.replace('ckpt-2', 'ckpt-3'))
          os.remove(ckpt / name)
    calls.append(path)
    return real(path)

  monkeypatch.setattr(restore.run_guard, 'checkpoint_readable', rotate_first)
  path = publish.export_from_checkpoint(str(copy), str(tmp_path / 'e'))
  assert os.path.basename(calls[-1]) == 'ckpt-3', calls
  assert tf.saved_model.contains_saved_model(path)


def test_stale_temporary_exports_are_removed_live_ones_kept(trained, tmp_path):
  _, model_dir = trained
  base = tmp_path / 'stale'
  base.mkdir()
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  stale = base / f'{publish._tmp_prefix(int(dead.stdout))}abc'
  live = base / f'{publish._tmp_prefix(os.getpid())}def'
  other_host = base / '.tmp-export-elsewhere-1-ghi'
  for d in (stale, live, other_host):
    d.mkdir()
    (d / 'saved_model.pb').write_bytes(b'half')
  path = publish.export_from_checkpoint(str(model_dir), str(base))
  assert path == str(base / '1')
  assert not stale.exists() and live.exists() and other_host.exists()


def _compiled_functions(path):
  """Names of the functions serving_default calls that XLA must compile."""
  signature = tf.saved_model.load(path).signatures['serving_default']
  library = signature.graph.as_graph_def().library
  return [fn.signature.name for fn in library.function
          if fn.attr['_XlaMustCompile'].b]


def test_xla_export_compiles_the_capsules_and_agrees(trained, tmp_path):
  trainer, _ = trained
  model = trainer.model
  assert model.inference_compiled  # a Trainer evaluates compiled
  plain = publish.export_model(model, (20, 20, 1), str(tmp_path / 'm'))
  xla = publish.export_model(model, (20, 20, 1), str(tmp_path / 'm'), xla=True)
  # The default export is plain TF ops for a stock TF Serving, even from
  # a model that runs compiled; the mode of the model is left as it was.
  assert not _compiled_functions(plain)
  assert _compiled_functions(xla)
  assert model.inference_compiled
  images = tf.random.uniform([4, 20, 20, 1], seed=2)
  outs = [tf.saved_model.load(path).signatures['serving_default'](
      images=images) for path in (plain, xla)]
  np.testing.assert_allclose(outs[1]['probabilities'].numpy(),
                             outs[0]['probabilities'].numpy(), atol=1e-5)


def test_xla_export_of_a_model_without_a_compiled_part_is_refused(tmp_path):
  from pipeline.models import baseline_cnn  # pylint: disable=g-import-not-at-top
  model = baseline_cnn.BaselineCNN(input_shape=(12, 12, 1), num_classes=3,
                                   conv_channels=(4,), fc_units=(8,))
  model(tf.zeros([1, 12, 12, 1]))
  with pytest.raises(ValueError, match='no XLA-compiled part'):
    publish.export_model(model, (12, 12, 1), str(tmp_path / 'm'), xla=True)
  assert not os.listdir(tmp_path / 'm')


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
