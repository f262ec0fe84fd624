"""The tf.data input pipeline: indices → shuffle → batch → gather → augment.

Images stay uint8 in memory; the pipeline shuffles and shards example
*indices*, gathers a whole batch at once and augments it with batched TF ops
seeded from the batch number. That keeps shuffle buffers (and the input
checkpoints) small, makes every batch reproducible from `(seed, pipeline
id, batch number)` -- which is how a resumed run continues its input stream
(`start_step`) -- and keeps Python out of the hot path.

Each element is a dict:
  image: float32 `[batch, H, W, C]` (in [0, 1]; smallNORB standardised).
  label: float32 `[batch, classes]` one-hot (k-hot for MultiMNIST).
  targets: (MultiMNIST, smallNORB) what the decoder reconstructs:
    `[batch, 2, H, W, C]` for MultiMNIST, `[batch, H, W, C]` for smallNORB.
  weight: (evaluation under a strategy) float32 `[batch]`, 1 for an example
    of the split and 0 for padding: every replica gets a whole batch at
    every step, however the split divides, so a compiled model never sees a
    short or empty batch and no replica waits for another.
"""

import tensorflow as tf

from pipeline.data.base import DataError


def _fold_seed(seed, pipeline_id):
  return tf.constant([seed, 1000003 * pipeline_id + 17], tf.int64)


def _batch_transform(source, data, training, base_seed):
  """Returns `fn(batch_number, indices[, weights]) -> batch dict`: the
  batch's images gathered and made float, then the data set's own
  `batch_fn` (`base.DataSet`)."""
  num_classes = source.num_classes
  images = tf.constant(data.images)
  labels = tf.constant(data.labels)
  make = source.kind.batch_fn(source.spec, data, images, num_classes,
                              training)

  def fn(batch_number, indices, weights=None):
    seed = base_seed + tf.stack([tf.constant(0, tf.int64), 7 * batch_number])
    x = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
    y = tf.gather(labels, indices)
    out = make(x, y, seed)
    out.setdefault('label', tf.one_hot(y, num_classes))
    if weights is not None:
      out['weight'] = weights
    return out

  return fn


def _pad_evaluation(indices, n, pipelines, pipeline_id, per_step):
  """`(index, weight)` pairs: this pipeline's indices with weight 1, then
  index 0 with weight 0 up to the same whole number of steps on every
  pipeline (`per_step` examples a step)."""
  share = -(-n // pipelines)                       # the largest shard
  total = -(-share // per_step) * per_step
  own = len(range(pipeline_id, n, pipelines))
  real = indices.map(lambda i: (i, tf.constant(1.0)))
  padding = tf.data.Dataset.from_tensors(
      (tf.constant(0, tf.int64), tf.constant(0.0))).repeat(total - own)
  return real.concatenate(padding)


def _shares(global_batch_size, input_context):
  """`(per-replica batch, input pipelines, this pipeline's id, per-replica
  batches this pipeline yields per step)`.

  Raises:
    DataError: for a batch that does not divide over the replicas, or < 1.
  """
  batch = int(global_batch_size)
  if input_context is None:
    pipelines, pipeline_id, batches_per_step = 1, 0, 1
  else:
    if batch % input_context.num_replicas_in_sync:
      raise DataError(
          f'global batch size {batch} does not divide over '
          f'{input_context.num_replicas_in_sync} replicas; use a multiple.')
    batch = input_context.get_per_replica_batch_size(batch)
    pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    batches_per_step = max(
        1, input_context.num_replicas_in_sync // pipelines)
  if batch < 1:
    raise DataError(f'batch size must be >= 1, got {global_batch_size}.')
  return batch, pipelines, pipeline_id, batches_per_step


def _index_batches(n, batch, training, padded, pipelines, pipeline_id,
                   batches_per_step, seed, start_step):
  """This pipeline's batches of example indices, numbered: `(number,
  indices)`, or `(number, indices, weights)` when `padded`.

  Training shuffles and repeats the indices for ever and begins at batch
  `start_step * batches_per_step` (only indices are skipped); evaluation is
  one pass in order, padded to whole steps when `padded`.
  """
  ds = tf.data.Dataset.range(n)
  if pipelines > 1:
    ds = ds.shard(pipelines, pipeline_id)
  if padded:
    ds = _pad_evaluation(ds, n, pipelines, pipeline_id,
                         batch * batches_per_step)
  start_batch = 0
  if training:
    ds = ds.shuffle(n, seed=seed * 1000 + pipeline_id,
                    reshuffle_each_iteration=True).repeat()
    start_batch = int(start_step) * batches_per_step
    ds = ds.skip(start_batch * batch)
  ds = ds.batch(batch, drop_remainder=training or padded).enumerate(
      start=start_batch)
  if padded:
    ds = ds.map(lambda number, pair: (number, pair[0], pair[1]))
  return ds


def make_dataset(source, split, global_batch_size, training,
                 input_context=None, seed=0, deterministic=False,
                 start_step=0):
  """Builds the batched dataset of one split for one input pipeline.

  Works as the function given to
  `strategy.distribute_datasets_from_function`: with an `input_context`, the
  batch is the per-replica share of `global_batch_size`, the indices are
  sharded by input pipeline and the seed is folded with the pipeline id.

  Args:
    source: a `sources.DataSource`.
    split: 'train', 'validation' or 'test'.
    global_batch_size: examples per step over all replicas.
    training: shuffle, repeat forever, augment and drop the remainder; else
      one deterministic pass (with an `input_context`, padded to whole
      steps and weighted: see `weight` above).
    input_context: a `tf.distribute.InputContext`, or None.
    seed: base seed of shuffling and augmentation.
    deterministic: force deterministic element order (tests, reproductions).
    start_step: training only: begin where a run at this global step left
      the stream. Each step draws one per-replica batch for every replica
      this pipeline feeds (`num_replicas_in_sync / num_input_pipelines`), so
      the stream starts at batch `start_step` times that. It is a pure
      function of (seed, pipeline id, batch number): a resumed run, on any
      replica count, continues exactly where it stopped; only indices are
      skipped, not images.

  Returns:
    A `tf.data.Dataset` of batch dicts (see the module docstring).

  Raises:
    DataError: for a batch size that does not split over the replicas, or a
      split too small for one training batch.
  """
  batch, pipelines, pipeline_id, batches_per_step = _shares(
      global_batch_size, input_context)
  data = source.split(split)
  n = len(data)
  if training and n // pipelines < batch:
    raise DataError(f'{split} split has {n} examples, fewer than one batch '
                    f'of {batch} per input pipeline.')
  base_seed = _fold_seed(seed, pipeline_id)
  # An evaluation pass always keeps its order: the first batch (figures,
  # summaries) is the same every time.
  deterministic = deterministic or not training

  padded = not training and input_context is not None
  ds = _index_batches(n, batch, training, padded, pipelines, pipeline_id,
                      batches_per_step, seed, start_step)
  transform = _batch_transform(source, data, training, base_seed)
  ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True if deterministic else None)
  options = tf.data.Options()
  options.deterministic = bool(deterministic)
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
