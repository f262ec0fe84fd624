"""Evaluates a SavedModel or a training checkpoint on any data set split.

  python -m pipeline.evaluate --model_dir=runs/fashion_mnist --split=test \
      --output=eval.json --figures=docs/fashion_mnist
  python -m pipeline.evaluate --saved_model=exports/capsnet_fashion_mnist/1 \
      --dataset=fashion_mnist --data_source=idx \
      --data_dir=/usr/share/datasets/fashion-mnist

With --model_dir the run's own data set is used; data flags given change it
(`--affnist_dir=DIR` alone scores an affNIST run on another test set).
Writes accuracy, error rate, per-class accuracy, the confusion matrix and
each wrong example (its index in the split, label and prediction) as JSON
(MultiMNIST: an example counts only when both digits are the top two).
--figures=DIR writes PNGs: inputs beside reconstructions, the paper's
Figure 4 (each pose dimension perturbed from -0.25 to 0.25 and decoded),
Figure 5 for two-object data (each object's reconstruction in red and green)
and the confusion matrix.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import flags as pipeline_flags
from pipeline import metrics
from pipeline.core import atomic
from pipeline.data import input_pipeline, sources
from pipeline.perf import hardware
from pipeline.serving import restore

# Paper Figure 4: perturbations of each dimension, -0.25 to 0.25 by 0.05.
PERTURBATIONS = np.round(np.arange(-0.25, 0.2501, 0.05), 2)


class Predictor:
  """Class-capsule lengths and poses, and decoding, from either model form."""

  def __init__(self, predict_fn, decode_fn, image_shape, num_classes):
    self._predict = predict_fn
    self._decode = decode_fn
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes

  @classmethod
  def from_saved_model(cls, path):
    if not tf.saved_model.contains_saved_model(path):
      raise FileNotFoundError(f'{path} holds no SavedModel; pass a version '
                              'directory such as exports/<name>/1.')
    sigs = tf.saved_model.load(path).signatures
    serve = sigs['serving_default']
    spec = serve.structured_input_signature[1]['images']
    lengths_spec = serve.structured_outputs['probabilities']

    def predict(images):
      out = serve(images=images)
      return out['probabilities'], out['poses']

    decode = None
    if 'decode' in sigs:
      decode = lambda poses, ids: sigs['decode'](  # pylint: disable=g-long-lambda
          poses=poses, class_ids=ids)['reconstructions']
    return cls(predict, decode, spec.shape[1:], lengths_spec.shape[-1])

  @classmethod
  def from_checkpoint(cls, model_dir, checkpoint=None, precision=None):
    model, info = restore.load_checkpointed_model(model_dir, checkpoint,
                                                  precision)

    @tf.function
    def predict(images):
      outputs = model(images, training=False)
      return outputs['lengths'], outputs['poses']

    decode = None
    if model.has_decoder:
      decode = tf.function(lambda poses, ids: model.reconstruct(
          poses, tf.one_hot(ids, model.num_classes)))
    return cls(predict, decode, info['image_shape'], info['num_classes'])

  def predict(self, images):
    lengths, poses = self._predict(tf.convert_to_tensor(images, tf.float32))
    return lengths.numpy(), poses.numpy()

  @property
  def has_decoder(self):
    return self._decode is not None

  def decode(self, poses, class_ids):
    if self._decode is None:
      raise ValueError('This model has no decoder; figures need one.')
    return self._decode(tf.constant(poses, tf.float32),
                        tf.constant(class_ids, tf.int64)).numpy()


def evaluate(predictor, source, split, batch_size=500):
  """Runs the predictor over a whole split.

  Returns:
    A dict: split, examples, accuracy, error_rate, per_class_accuracy,
    wrong (one [index in the split, label(s), prediction(s)] per wrong
    example, in split order), and for single-label data the
    confusion_matrix (rows: true, columns: predicted); for two-object data
    (MultiMNIST) accuracy counts an example only when both labels are the
    two longest capsules.
  """
  if tuple(source.info.image_shape) != predictor.image_shape:
    raise ValueError(
        f'The model takes images {predictor.image_shape} but '
        f'{source.info.name} gives {source.info.image_shape}; pass the data '
        'flags of the data set the model was trained on.')
  if source.info.num_classes != predictor.num_classes:
    raise ValueError(
        f'The model has {predictor.num_classes} classes but '
        f'{source.info.name} has {source.info.num_classes}; pass the data '
        'flags of the data set the model was trained on.')
  k = source.info.num_targets
  classes = source.info.num_classes
  hits = examples = 0
  class_hits = np.zeros(classes)
  class_counts = np.zeros(classes)
  confusion = np.zeros([classes, classes], np.int64)
  wrong = []
  for batch in input_pipeline.make_dataset(source, split, batch_size, False,
                                           deterministic=True):
    labels = batch['label'].numpy()
    lengths, _ = predictor.predict(batch['image'])
    top = np.argsort(-lengths, axis=1)[:, :k]
    predicted = np.zeros_like(labels)
    np.put_along_axis(predicted, top, 1.0, axis=1)
    batch_hits = np.asarray(metrics.accuracy_hits(labels, lengths))
    for i in np.flatnonzero(batch_hits < 0.5):
      true = sorted(np.flatnonzero(labels[i]).tolist())
      guess = sorted(top[i].tolist())
      wrong.append([examples + int(i), true[0] if k == 1 and true else true,
                    guess[0] if k == 1 else guess])
    hits += int(np.sum(batch_hits))
    examples += len(labels)
    class_counts += labels.sum(0)
    class_hits += (labels * predicted).sum(0)
    if k == 1:
      np.add.at(confusion, (labels.argmax(1), top[:, 0]), 1)
  accuracy = hits / max(examples, 1)
  results = {
      'split': split, 'dataset': source.info.name, 'examples': examples,
      'accuracy': accuracy, 'error_rate': 1.0 - accuracy,
      'per_class_accuracy': (class_hits / np.maximum(class_counts, 1)).tolist(),
      'wrong': wrong,
  }
  if k == 1:
    results['confusion_matrix'] = confusion.tolist()
  else:
    results['both_digits_accuracy'] = accuracy
  return results


def _to_png(array, path, scale=1):
  """Writes a float [H, W, C] image in [0, 1] as PNG (C 1 or 3)."""
  array = np.clip(np.asarray(array, np.float32), 0, 1)
  if array.shape[-1] not in (1, 3):
    array = array[..., :1]
  if scale > 1:
    array = array.repeat(scale, 0).repeat(scale, 1)
  data = tf.io.encode_png(tf.constant(np.round(array * 255).astype(np.uint8)))
  tf.io.write_file(path, data)


def _grid(tiles, cols):
  """Stacks `[n, H, W, C]` tiles into a grid with `cols` columns."""
  n, h, w, c = tiles.shape
  rows = -(-n // cols)
  grid = np.ones([rows * (h + 2), cols * (w + 2), c], np.float32)
  for i, tile in enumerate(tiles):
    r, col = divmod(i, cols)
    grid[r * (h + 2) + 1:r * (h + 2) + 1 + h,
         col * (w + 2) + 1:col * (w + 2) + 1 + w] = tile
  return grid


def _rgb(image, colour=(1.0, 1.0, 1.0)):
  """A grey `[H, W, 1]` image in [0, 1] tinted as RGB (first channel)."""
  grey = np.clip(np.asarray(image, np.float32)[..., :1], 0, 1)
  return grey * np.asarray(colour, np.float32)


def _error_tiles(predictor, source, split, wrong, batch_size=500):
  """Input, reconstruction as the true class, as the predicted class, for
  each `[index, label, prediction]` of `wrong` (single-label data)."""
  wanted = {index: (label, guess) for index, label, guess in wrong}
  tiles, seen = [], 0
  for batch in input_pipeline.make_dataset(source, split, batch_size, False,
                                           deterministic=True):
    images = batch['image'].numpy()
    picked = [i for i in range(len(images)) if seen + i in wanted]
    if picked:
      chosen = images[picked]
      _, poses = predictor.predict(chosen)
      labels = np.asarray([wanted[seen + i][0] for i in picked])
      guesses = np.asarray([wanted[seen + i][1] for i in picked])
      as_true = predictor.decode(poses, labels)
      as_guess = predictor.decode(poses, guesses)
      for j in range(len(picked)):
        tiles += [np.clip(chosen[j], 0, 1), as_true[j], as_guess[j]]
    seen += len(images)
    if seen > max(wanted):
      break
  return tiles


def write_figures(predictor, source, split, results, directory, examples=8,
                  max_errors=100):
  """Writes the PNG figures of a model on a split.

  reconstructions.png: each input, then the reconstruction of each predicted
    object; perturbations.png: paper Figure 4, one row per pose dimension
    of the first example's winning capsule; pairs.png (two-object data):
    paper Figure 5, input, the two reconstructions in red and green, and
    both overlaid; confusion.png (single-label data); errors.png
    (single-label data, paper Figure 3's failure cases): for each wrong
    example in split order (the JSON's `wrong`, at most `max_errors`), the
    input, its reconstruction from the true class's capsule and from the
    predicted one's, four examples a row. Models without a decoder get the
    confusion matrix only.

  Returns:
    The paths written.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  if 'confusion_matrix' in results:
    cm = np.asarray(results['confusion_matrix'], np.float32)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    path = os.path.join(directory, 'confusion.png')
    _to_png(1.0 - cm[..., None], path, scale=24)
    paths.append(path)
  if not predictor.has_decoder:
    return paths
  batch = next(iter(input_pipeline.make_dataset(
      source, split, examples, False, deterministic=True)))
  images = batch['image'].numpy()
  lengths, poses = predictor.predict(images)
  k = source.info.num_targets
  top = np.argsort(-lengths, axis=1)[:, :k]
  recons = np.stack([predictor.decode(poses, top[:, j]) for j in range(k)],
                    axis=1)
  tiles = []
  for i in range(len(images)):
    tiles.append(np.clip(images[i], 0, 1))
    tiles.extend(recons[i])
  path = os.path.join(directory, 'reconstructions.png')
  _to_png(_grid(np.stack(tiles), 1 + k), path, scale=3)
  paths.append(path)
  if k == 2:
    red, green = (1.0, 0.2, 0.2), (0.2, 1.0, 0.2)
    tiles = []
    for i in range(len(images)):
      first, second = _rgb(recons[i, 0], red), _rgb(recons[i, 1], green)
      tiles += [_rgb(images[i]), first, second, np.maximum(first, second)]
    path = os.path.join(directory, 'pairs.png')
    _to_png(_grid(np.stack(tiles), 4), path, scale=3)
    paths.append(path)
  wrong = results.get('wrong', [])[:max_errors]
  if k == 1 and wrong:
    path = os.path.join(directory, 'errors.png')
    _to_png(_grid(np.stack(_error_tiles(predictor, source, split, wrong)),
                  3 * min(4, len(wrong))), path, scale=3)
    paths.append(path)
  pose, winner = poses[0], top[0, 0]
  dims = pose.shape[-1]
  perturbed = np.repeat(pose[None], dims * len(PERTURBATIONS), axis=0)
  for d in range(dims):
    for j, delta in enumerate(PERTURBATIONS):
      perturbed[d * len(PERTURBATIONS) + j, winner, d] += delta
  decoded = predictor.decode(perturbed, np.full([len(perturbed)], winner))
  path = os.path.join(directory, 'perturbations.png')
  _to_png(_grid(decoded, len(PERTURBATIONS)), path, scale=3)
  paths.append(path)
  return paths


def _source_for(f, run_config):
  """The run's data with the data flags given applied (a SavedModel: flags)."""
  if run_config is not None:
    return sources.open_source(
        pipeline_flags.data_spec_with_overrides(run_config.data, f))
  return sources.open_source(pipeline_flags.data_spec_from_flags(f))


# Flags of a run that pipeline.evaluate reads besides the data flags.
READ_RUN_FLAGS = ('eval_batch_size', 'model_dir')


def check_ignored_flags(f, run_config, model_dir=None):
  """Refuses a training flag given that would be ignored: the model scored
  is the one the run trained (its config.json) or the SavedModel as it was
  exported, so only the data flags, --split and --eval_batch_size apply
  (and, with --model_dir, --precision: `scoring_precision`). With
  --model_dir a flag that agrees with the run (its own flagfile, say) and
  run-control flags (--train_steps, the cadences) pass.

  Raises:
    ValueError: naming each ignored flag (and the run's value) and the fix.
  """
  given = {name: value for name, value in
           pipeline_flags.run_flags_given(f).items()
           if name not in READ_RUN_FLAGS}
  if run_config is None:
    if given:
      raise ValueError(
          f'{", ".join("--" + n for n in sorted(given))} would be ignored: '
          'a SavedModel\'s model, options and precision were fixed when it '
          'was exported, and only the data flags, --split and '
          '--eval_batch_size apply to it. Remove them.')
    return
  applies = ('only the data flags, --split, --eval_batch_size and '
             '--precision apply to pipeline.evaluate')
  saved = config_lib.run_flag_values(run_config)
  free = {key.rsplit('.', 1)[-1] for key in config_lib.FREE_FIELDS}
  ignored = []
  for name, value in sorted(given.items()):
    if name in free or name == 'precision':  # scoring_precision's.
      continue
    if name in saved:
      if value != saved[name]:
        ignored.append(f'--{name}={_shown(value)} (the run has '
                       f'{_shown(saved[name])})')
    elif f[name].value != f[name].default:
      # Another model's option at its default passes, as in training.
      ignored.append(f'--{name}={_shown(value)} (not an option of its model, '
                     f'{run_config.model.name})')
  if ignored:
    raise ValueError(
        f'{"; ".join(ignored)} would be ignored: the model scored is the one '
        f'the run in {model_dir} trained, as its config.json says, and '
        f'{applies}. Remove them (or pass the run\'s own flags).')


def scoring_precision(f, run_config, model_dir):
  """The precision to score a run in: an explicit --precision (its weights
  are float32 in every precision, so any fits), else the run's own (as
  `auto` means too), with one warning line where that is emulated here.

  Raises:
    ValueError: an ISA cap in force leaves no 16-bit kernels for it.
  """
  trained = run_config.model.precision
  explicit = f['precision'].present and f.precision != hardware.AUTO
  precision = f.precision if explicit else trained
  blocked = hardware.cap_blocks_16bit(
      precision, asked=None if explicit else
      f'Scoring in {trained}, as the run in {model_dir} trained,')
  if blocked:
    raise ValueError(blocked)
  if explicit:
    if precision != trained:
      logging.info('Scoring the run in %s in %s (it trained in %s).',
                   model_dir, precision, trained)
    return precision
  where = hardware.emulated_where(trained)
  if where:
    logging.warning('Scoring in %s, as the run in %s trained, but %s: its '
                    '16-bit math is emulated and slower than float32 here; '
                    '--precision=float32 scores it in float32.', trained,
                    model_dir, where)
  return None


def _shown(value):
  if isinstance(value, tuple):
    return ','.join(str(v) for v in value)
  return value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  # --model_dir is shared with training, where it has a default; here it
  # counts only when given.
  model_dir = f.model_dir if f['model_dir'].present else None
  if bool(f.saved_model) == bool(model_dir):
    raise app.UsageError('Pass exactly one of --saved_model (a version '
                         'directory) or --model_dir (a training run).')
  try:
    if f.saved_model:
      check_ignored_flags(f, None)
      predictor, run_config = Predictor.from_saved_model(f.saved_model), None
    else:
      run_config, _ = config_lib.load_run(model_dir)
      check_ignored_flags(f, run_config, model_dir)
      predictor = Predictor.from_checkpoint(
          model_dir, f.checkpoint or None,
          scoring_precision(f, run_config, model_dir))
    source = _source_for(f, run_config)
    results = evaluate(predictor, source, f.split, f.eval_batch_size)
    if f.figures:
      results['figures'] = write_figures(predictor, source, f.split, results,
                                         f.figures)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(str(e))
  print(f'{results["dataset"]} {results["split"]}: accuracy '
        f'{results["accuracy"]:.4f} (error {100 * results["error_rate"]:.2f}%)'
        f' on {results["examples"]} examples')
  for path in results.get('figures', []):
    print(f'Wrote {path}')
  if f.output:
    atomic.write_json(f.output, results, indent=2)
    print(f'Wrote {f.output}')
  return 0


def define_flags():
  pipeline_flags.define_flags()
  flags.DEFINE_string('saved_model', None, 'A SavedModel version directory.')
  flags.DEFINE_string('checkpoint', None, 'With --model_dir: a checkpoint '
                      'path (default: the latest).')
  flags.DEFINE_enum('split', 'test', list(sources.SPLITS), 'Split to score.')
  flags.DEFINE_string('output', None, 'Write the results as JSON here.')
  flags.DEFINE_string('figures', None, 'Write PNG figures into this folder.')


if __name__ == '__main__':
  define_flags()
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
