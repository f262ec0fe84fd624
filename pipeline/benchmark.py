"""Measures input, training, inference and serving throughput; writes JSON.

  python -m pipeline.benchmark --what=input,train,inference,serving,matmul \
      --output=bench.json
  python -m pipeline.benchmark --precision=mixed_bfloat16 --what=train,inference
  python -m pipeline.benchmark --what=layers --output=layers.json
  python -m pipeline.benchmark --scaling --output=scaling.json
  python -m pipeline.benchmark --what=serving --trace_dir=/tmp/traces
  python -m pipeline.perf.profile_report --model_dir=/tmp/traces/serving_b1
  python -m pipeline.benchmark --what=input --dataset=multimnist \
      --base_dataset=fashion_mnist --data_source=idx \
      --data_dir=/usr/share/datasets/fashion-mnist --output=input.json

Takes the training flags of `pipeline.train` (model, data, batch size,
precision); the default data set is `synthetic` at MNIST shape, so it needs
no files. Every figure is a median over repeated timed runs after warm-up,
and all figures of one run come from the same process, so ratios between
them are meaningful on a noisy machine.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging

from pipeline import flags as pipeline_flags
from pipeline.core import atomic
from pipeline.core import children
from pipeline.perf import timing

pipeline_flags.define_flags()
flags.DEFINE_list('what', ['input', 'train', 'inference', 'serving',
                           'matmul'], f'What to measure, of {timing.WHATS}.')
flags.DEFINE_string('output', '', 'Write the figures as JSON here.')
flags.DEFINE_integer('repeats', 5, 'Timed repetitions (the median is kept).')
flags.DEFINE_integer('input_batches', 200, 'Batches per input timing.')
flags.DEFINE_integer('inference_batch_size', 100, 'Batch of the inference '
                     'timing.')
flags.DEFINE_string('trace_dir', '', 'Also trace one more run of each '
                    'training, inference and serving timing with the '
                    'TensorFlow profiler, each into its own directory here '
                    '(read them with pipeline.perf.profile_report --model_dir=).')
flags.DEFINE_boolean('scaling', False, 'Instead: training throughput and peak '
                     'memory over batch sizes and routing iterations, each '
                     'in its own process.')
flags.DEFINE_list('scaling_batches', ['16', '32', '100', '256'],
                  'Batch sizes of --scaling.')
flags.DEFINE_list('scaling_iterations', ['1', '3', '5'],
                  'Routing iterations of --scaling (at --batch_size).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['model_dir'].present:
    FLAGS.model_dir = tempfile.mkdtemp(prefix='capsnet-benchmark-')
  try:
    config = pipeline_flags.config_from_flags()
    if FLAGS.scaling:
      passed = [a for a in sys.argv[1:] if not a.startswith(
          ('--scaling', '--output', '--batch_size', '--routing_iterations',
           '--what'))]
      results = timing.scaling(passed, [int(b) for b in FLAGS.scaling_batches],
                             [int(i) for i in FLAGS.scaling_iterations],
                             config)
    else:
      results = timing.run_benchmarks(config, FLAGS.what, FLAGS.repeats,
                                    FLAGS.input_batches,
                                    FLAGS.inference_batch_size,
                                    FLAGS.trace_dir)
  except children.Stopped as e:
    print(str(e), file=sys.stderr, flush=True)
    return e.status
  except ValueError as e:
    sys.exit(str(e))
  timing.print_table(results)
  if FLAGS.output:
    atomic.write_json(FLAGS.output, results, indent=2)
    print(f'Wrote {FLAGS.output}')
  return 0


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  sys.exit(app.run(main))
