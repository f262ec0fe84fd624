"""Runs one results experiment end to end and writes its row of the table.

  python -m pipeline.research.experiment --experiment=affine --train_steps=2000
  python -m pipeline.research.experiment --experiment=overlap --skip_training

An experiment trains CapsNet (and the baseline CNN where it has one) with
`python -m pipeline.train --flagfile=<its config>`, in subprocesses whose
output streams to the console, then scores every trained model on the
experiment's test sets, writes the figures of `pipeline.evaluate
--figures` into `<figures_dir>/<model>/`, and writes the row as JSON:
command, machine, and per model the steps, the training wall time and each
test set's accuracy. Training resumes from the runs' checkpoints, so the
same command continues an interrupted experiment (or, with more
--train_steps, a finished one). A SIGTERM, Ctrl-C or hang-up is passed on
to the training run under way, which saves its checkpoint; the experiment
then ends without scoring or writing a row, with the run's exit status
(143 for SIGTERM, 130 for Ctrl-C), as it does when the run is stopped by
itself.

  accuracy  CapsNet on Fashion-MNIST, scored on the test split once.
  affine    CapsNet and the baseline trained on translated Fashion-MNIST
            (40x40), scored on translated test items and on the
            affNIST-style set (`pipeline.research.make_affnist`, made if missing).
  affine_mnist
            the same on real MNIST (the paper's own experiment): CapsNet
            trains until its validation accuracy reaches 99.0%
            (--target_accuracy), the baseline until it reaches CapsNet's
            (matched).
  overlap   CapsNet and the baseline on overlapping Fashion-MNIST pairs;
            an example is right only when both top-2 classes are.
  overlap_mnist
            MultiMNIST from real MNIST digits (the paper's section 6):
            CapsNet trains its steps, then the baseline trains until its
            validation accuracy reaches CapsNet's last one (matched), or
            its steps run out.
"""

# First, before TensorFlow loads: silences its start-up chatter.
from pipeline import quiet  # pylint: disable=unused-import
import dataclasses
import json
import os
import shlex
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import evaluate
from pipeline import flags as pipeline_flags
from pipeline.core import atomic
from pipeline.core import children
from pipeline.data import affnist
from pipeline.data import sources
from pipeline.models import registry
from pipeline.perf import hardware
from pipeline.research import make_affnist

# Where the affNIST-style test sets are made (test_sets' placeholder value).
AFFNIST_DIR = 'data/affnist_fashion_mnist'
AFFNIST_MNIST_DIR = 'data/affnist_mnist'


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What one row of the results table trains and scores.

  Attributes:
    flagfiles: model name → its training flagfile.
    test_sets: test set name → `DataSpec` fields that change the run's data
      to it (empty: the run's own test split).
    paper: the paper's MNIST figures for this claim, for the table.
    match: the other models train until their validation accuracy reaches
      CapsNet's last one (their --target_accuracy, over their flagfile's;
      a --target_accuracy among the extra flags wins), within their steps.
  """
  flagfiles: dict
  test_sets: dict
  paper: str
  match: bool = False


EXPERIMENTS = {
    'accuracy': Experiment(
        {'capsnet': 'configs/fashion_mnist_accuracy.flags'},
        {'test': {}},
        'MNIST test error 0.25% (CapsNet, 3 routing iterations)'),
    'affine': Experiment(
        {'capsnet': 'configs/affnist_fashion_mnist.flags',
         'baseline_cnn': 'configs/affnist_fashion_mnist_baseline.flags'},
        {'translated': {}, 'affnist_style': {'affnist_dir': AFFNIST_DIR}},
        'affNIST accuracy 79% CapsNet vs 66% CNN, both at 99.2%+ on '
        'translated MNIST'),
    'affine_mnist': Experiment(
        {'capsnet': 'configs/affnist_mnist.flags',
         'baseline_cnn': 'configs/affnist_mnist_baseline.flags'},
        {'translated': {},
         'affnist_style': {'affnist_dir': AFFNIST_MNIST_DIR}},
        'affNIST accuracy 79% CapsNet vs 66% CNN, both at 99.2%+ on '
        'translated MNIST', match=True),
    'overlap': Experiment(
        {'capsnet': 'configs/multimnist_fashion_mnist.flags',
         'baseline_cnn': 'configs/multimnist_fashion_mnist_baseline.flags'},
        {'pairs': {}},
        'MultiMNIST error 5.2% CapsNet vs 8.1% CNN (both top-2 right)'),
    'overlap_mnist': Experiment(
        {'capsnet': 'configs/multimnist_mnist.flags',
         'baseline_cnn': 'configs/multimnist_mnist_baseline.flags'},
        {'pairs': {}},
        'MultiMNIST error 5.0% CapsNet vs 8.1% CNN (both top-2 right)',
        match=True),
}


def setting(flagfile, extra, name):
  """A flag's value: the last of `extra` that sets it, else the flagfile's.

  The flagfile is expanded by absl itself (includes, comments), as
  `pipeline.train` will read it.
  """
  args = flags.FlagValues().read_flags_from_files(
      [f'--flagfile={flagfile}', *extra], force_gnu=True)
  value = None
  for arg in args:
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
  return value


def flagfile_value(path, name):
  """The last value a flagfile (following its --flagfile includes) sets."""
  return setting(path, (), name)


def flags_for_model(model, extra):
  """The flags of `extra` that apply to `model`: a model flag (e.g.
  `--conv_filters`) that the model does not take is left out, with a line
  saying so, since pipeline.train would refuse it."""
  taken = registry.option_names(model)
  kept = []
  for flag in extra:
    name = flag.lstrip('-').split('=', 1)[0]
    if name.startswith('no') and name[2:] in pipeline_flags.MODEL_FLAGS:
      name = name[2:]
    if name in pipeline_flags.MODEL_FLAGS and name not in taken:
      logging.info('%s is not an option of %s; not passed to its run.', flag,
                   model)
      continue
    kept.append(flag)
  return kept


class TrainingStopped(children.Stopped):
  """A signal stopped the experiment before it scored anything (`status`:
  that of the training run, 143 for SIGTERM or 130 for Ctrl-C; see
  `preemption.exit_status`)."""


def train(flagfile, train_steps=None, extra=()):
  """Runs `python -m pipeline.train` on a flagfile (`children.run`: a
  SIGTERM, Ctrl-C or hang-up to the experiment is passed on to the run,
  which saves its checkpoint, and waited for).

  Raises:
    TrainingStopped: the run stopped early (it saved its checkpoint), or a
      signal arrived as it finished: nothing more should happen.
    RuntimeError: the run failed.
  """
  command = [sys.executable, '-m', 'pipeline.train', f'--flagfile={flagfile}']
  if train_steps:
    command.append(f'--train_steps={train_steps}')
  command += list(extra)
  print('$ python ' + ' '.join(shlex.quote(c) for c in command[1:]),
        flush=True)
  finished = children.run(command)
  returncode, received = finished.returncode, finished.received
  stopped = {128 + int(signal.SIGTERM): 'SIGTERM',
             128 + int(signal.SIGINT): 'SIGINT'}.get(returncode)
  if stopped or received:
    name = received[0] if received else stopped
    status = returncode if stopped else finished.stop_status
    state = ('stopped before its end' if stopped else
             'finished as it arrived' if returncode == 0 else
             f'ended (exit status {returncode})')
    raise TrainingStopped(
        f'{name}: the training run of {flagfile} {state}; nothing was '
        'scored and no row written. Run the same command to go on from the '
        'checkpoints.', status)
  if returncode < 0:
    raise RuntimeError(f'Training with {flagfile} was killed by '
                       f'{signal.Signals(-returncode).name}; its output is '
                       'above. The same command resumes it from its latest '
                       'checkpoint.')
  if returncode:
    raise RuntimeError(f'Training with {flagfile} failed (exit '
                       f'{returncode}); its output is above.')


def score(model_dir, test_sets, figures_dir=None):
  """Scores a run's latest checkpoint on each test set.

  Returns:
    `{test set: evaluate.evaluate results}`; figures of the first set go in
    `figures_dir`, of the others in `figures_dir/<test set>/`.
  """
  run_config, _ = config_lib.load_run(model_dir)
  predictor = evaluate.Predictor.from_checkpoint(model_dir)
  results = {}
  for i, (name, changes) in enumerate(test_sets.items()):
    source = sources.open_source(dataclasses.replace(run_config.data,
                                                     **changes))
    started = time.time()
    result = evaluate.evaluate(predictor, source, 'test')
    logging.info('%s on %s: accuracy %.4f (%d examples, %.0f s)', model_dir,
                 name, result['accuracy'], result['examples'],
                 time.time() - started)
    if figures_dir:
      # The first test set's figures in figures_dir, the others' below it.
      directory = figures_dir if i == 0 else os.path.join(figures_dir, name)
      result['figures'] = evaluate.write_figures(predictor, source, 'test',
                                                 result, directory)
    results[name] = result
  return results


def run_summary(model_dir):
  """Steps of the latest checkpoint (the one scored), and the wall time and
  figures of the run's last in-training evaluation."""
  checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir,
                                                       'checkpoints'))
  if checkpoint is None:
    raise FileNotFoundError(f'{model_dir} has no checkpoint; train it first '
                            '(leave out --skip_training).')
  with open(os.path.join(model_dir, 'metrics.json')) as f:
    latest = json.load(f)['latest']
  return {'steps': int(checkpoint.rsplit('-', 1)[1]),
          'wall_seconds': latest.get('wall_seconds'),
          'eval_step': latest['step'], 'eval_split': latest['split'],
          'eval_accuracy': latest['accuracy']}


def _test_sets(experiment, extra, affnist_dir):
  """The experiment's test sets as flag changes, `affnist_dir` put in; an
  affNIST-style set that is not on disk is made first, from the test split
  of the data the models train on."""
  test_sets = {
      t: {k: (affnist_dir or v if k == 'affnist_dir' else v)
          for k, v in changes.items()}
      for t, changes in experiment.test_sets.items()}
  for changes in test_sets.values():
    # Made unless it holds a test set: a directory that a killed maker left
    # without its images is made again.
    if ('affnist_dir' in changes and
        not affnist.holds_test_set(changes['affnist_dir'])):
      flagfile = experiment.flagfiles['capsnet']
      base = {field: setting(flagfile, extra, name) for field, name in (
          ('dataset', 'base_dataset'), ('data_source', 'data_source'),
          ('data_dir', 'data_dir'))}
      make_affnist.make_affnist(
          sources.DataSpec(**{k: v for k, v in base.items() if v}),
          changes['affnist_dir'])
  return test_sets


def _capsnet_accuracy(capsnet_dir, model):
  """The evaluation accuracy CapsNet's run reached: `model`'s target."""
  reached = run_summary(capsnet_dir)
  logging.info("%s trains until its %s accuracy reaches CapsNet's %.4f "
               '(step %d), or its steps run out.', model,
               reached['eval_split'], reached['eval_accuracy'],
               reached['eval_step'])
  return reached['eval_accuracy']


def run_experiment(name, train_steps=None, baseline_train_steps=None,
                   skip_training=False, figures_dir=None, extra=(),
                   runs_dir=None, affnist_dir=None, models=None):
  """Trains and scores every model of experiment `name`; returns the row.

  Args:
    name: a key of `EXPERIMENTS`.
    train_steps: steps of every model (None: each config's).
    baseline_train_steps: steps of the baseline, if not `train_steps`.
    skip_training: score the runs as they stand.
    figures_dir: figures go to `<figures_dir>/<model>/`.
    extra: flags added to every training command.
    runs_dir: put each run in `<runs_dir>/<its config's model_dir name>`.
    affnist_dir: the affNIST-style test set (made here if missing; None:
      the experiment's own).
    models: train and score only these of the experiment's models.
  """
  experiment = EXPERIMENTS[name]
  unknown = set(models or ()) - set(experiment.flagfiles)
  if unknown:
    raise ValueError(f'Experiment {name} has no model {sorted(unknown)}; it '
                     f'has {sorted(experiment.flagfiles)}.')
  extra = list(extra)
  test_sets = _test_sets(experiment, extra, affnist_dir)
  row = {'experiment': name, 'machine': hardware.machine(),
         'paper': experiment.paper,
         'models': {}}

  def run_dir(flagfile):
    model_dir = setting(flagfile, extra, 'model_dir')
    return (os.path.join(runs_dir, os.path.basename(model_dir)) if runs_dir
            else model_dir)

  chosen = {m: f for m, f in experiment.flagfiles.items()
            if not models or m in models}
  # Every model trains before any is scored: a resumed experiment goes
  # straight back to its unfinished training.
  targets = {}
  for model, flagfile in chosen.items():
    run_flags = flags_for_model(model, extra)
    if runs_dir:
      run_flags.append(f'--model_dir={run_dir(flagfile)}')
    if (experiment.match and model != 'capsnet' and not skip_training and
        not any(f.startswith('--target_accuracy=') for f in extra)):
      # CapsNet's run (trained above, or earlier) sets the target.
      targets[model] = _capsnet_accuracy(
          run_dir(experiment.flagfiles['capsnet']), model)
      run_flags.append(f'--target_accuracy={targets[model]!r}')
    if not skip_training:
      steps = (baseline_train_steps if model != 'capsnet' and
               baseline_train_steps else train_steps)
      train(flagfile, steps, run_flags)
  for model, flagfile in chosen.items():
    model_dir = run_dir(flagfile)
    figures = os.path.join(figures_dir, model) if figures_dir else None
    row['models'][model] = dict(
        run_summary(model_dir), model_dir=model_dir, flagfile=flagfile,
        tests=score(model_dir, test_sets, figures))
    if model in targets:
      row['models'][model]['target_accuracy'] = targets[model]
  return row


def markdown_row(row):
  """The row as a Markdown table line: one cell per model and test set."""
  cells = []
  for model, result in row['models'].items():
    tests = ', '.join(f'{t} {100 * r["accuracy"]:.2f}%'
                      for t, r in result['tests'].items())
    wall = result['wall_seconds']
    cells.append(f'{model}: {tests} ({result["steps"]} steps, '
                 f'{wall / 60:.0f} min)' if wall else f'{model}: {tests}')
  return f'| {row["experiment"]} | ' + '; '.join(cells) + ' |'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    row = run_experiment(f.experiment, f.train_steps, f.baseline_train_steps,
                         f.skip_training, f.figures_dir, f.train_flag,
                         f.runs_dir, f.affnist_dir, f.models)
  except TrainingStopped as e:
    print(str(e), file=sys.stderr, flush=True)
    return e.status
  except KeyboardInterrupt:
    # Ctrl-C while scoring (training passes it to its run, above).
    print('Interrupted while scoring; no row written. The same command '
          'goes on (with --skip_training, it only scores).', file=sys.stderr,
          flush=True)
    return 130
  except (RuntimeError, FileNotFoundError, ValueError) as e:
    sys.exit(str(e))
  row['command'] = 'python -m pipeline.research.experiment ' + ' '.join(
      shlex.quote(a) for a in sys.argv[1:])
  output = f.output or f'docs/results/{f.experiment}.json'
  os.makedirs(os.path.dirname(output) or '.', exist_ok=True)
  atomic.write_json(output, row, indent=2)
  print(markdown_row(row))
  print(f'Wrote {output}')
  return 0


def define_flags():
  flags.DEFINE_enum('experiment', None, sorted(EXPERIMENTS),
                    'Which results experiment to run.')
  flags.mark_flag_as_required('experiment')
  flags.DEFINE_integer('train_steps', None, 'Train each model to this many '
                       "steps (default: the config's).")
  flags.DEFINE_integer('baseline_train_steps', None, 'Steps of the baseline '
                       'CNN, when they differ from --train_steps.')
  flags.DEFINE_bool('skip_training', False, 'Score the runs as they are.')
  flags.DEFINE_string('figures_dir', None, 'Write figures into '
                      '<figures_dir>/<model>/.')
  flags.DEFINE_multi_string('train_flag', [], 'Extra flag for every '
                            'training run (repeatable), e.g. '
                            '--train_flag=--data_dir=/elsewhere.')
  flags.DEFINE_list('models', None, 'Only these models of the experiment '
                    '(default: all), e.g. baseline_cnn.')
  flags.DEFINE_string('runs_dir', None, 'Put the runs under this directory '
                      "instead of the configs' model_dir.")
  flags.DEFINE_string('affnist_dir', None, 'The affNIST-style test set of '
                      'affine/affine_mnist, written here if missing (default: '
                      f'{AFFNIST_DIR} / {AFFNIST_MNIST_DIR}).')
  flags.DEFINE_string('output', None, 'The row as JSON (default '
                      'docs/results/<experiment>.json).')


if __name__ == '__main__':
  define_flags()
  logging.set_verbosity(logging.INFO)
  sys.exit(app.run(main))
