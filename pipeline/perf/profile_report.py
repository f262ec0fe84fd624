"""Where a training step's time goes, from a `--profile_steps` trace.

  python -m pipeline.train ... --profile_steps=31,35 --model_dir=RUN
  python -m pipeline.perf.profile_report --model_dir=RUN [--top=12] [--json=F]
  python -m pipeline.benchmark ... --trace_dir=TRACES
  python -m pipeline.perf.profile_report --model_dir=TRACES/serving_b1

TensorBoard's Profile tab shows such a trace, but needs a browser with
network (its page loads Google Charts). This reads the newest trace under
`<model_dir>/train/plugins/profile/` with the profiler plugin's own
converter (`xprof`, installed by the pinned `tensorboard-plugin-profile`)
and splits the wall time of the traced steps among the model's parts:

  part     the layer the op belongs to (`primary_capsules`, `decoder`, ...),
           `optimizer`, `input pipeline` (tf.data threads and the wait for
           the next batch), or `step` (the loss, metrics and finite check
           outside the model's layers). XLA-compiled code counts towards the
           layer whose function it compiles.
  pass     forward, backward (ops under the gradient tape), update, input.
  ms/step  the part's share of the wall time: at each instant the time is
           split evenly among the ops running then, so the rows add up to
           the step's busy time. With two cores and two ops at once, each
           gets half of that instant.

and the ops with the most time. `idle` is the wall time of the steps in
which nothing ran (waiting on a thread, Python between steps).
"""

import bisect
import collections
import glob
import json
import os
import re
import sys

from absl import app
from absl import flags

from pipeline.core import atomic
from pipeline.core.profiling import PROFILE_RECORD

_OPTIMIZER = re.compile(
    r'^(Adam|AdamW|SGD|RMSprop|Adagrad|Nadam|LossScaleOptimizer)(_\d+)?$')
_CONTROL_FLOW = re.compile(r'^(while|body|cond|_\d+)$')
_XLA_FUNCTION = re.compile(
    r'^a_(?:inference_+)?(forward|backward)?_*(.*?)(?:_\d+)*__(?:\.\d+)?$')


def latest_profile(model_dir):
  """The newest trace directory of a run, holding `*.xplane.pb`.

  `model_dir` is a training run (traces under `train/plugins/profile/`) or
  a directory the profiler wrote into itself, as `pipeline.benchmark
  --trace_dir` does for each timing (`plugins/profile/`).

  Raises:
    FileNotFoundError: naming the directory looked in and the flags that
      write a trace.
  """
  roots = [os.path.join(model_dir, 'train', 'plugins', 'profile'),
           os.path.join(model_dir, 'plugins', 'profile')]
  for root in roots:
    runs = sorted(d for d in glob.glob(os.path.join(root, '*'))
                  if glob.glob(os.path.join(d, '*.xplane.pb')))
    if runs:
      return runs[-1]
  raise FileNotFoundError(
      f'no profiler trace under {roots[0]} or {roots[1]}: train with '
      '--profile_steps=FIRST,LAST (or benchmark with --trace_dir) to write '
      'one.')


def read_steps(run_dir):
  """The traced steps' record the controller wrote, or None."""
  path = os.path.join(run_dir, PROFILE_RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_events(run_dir):
  """The trace's complete events and its thread names, via xprof."""
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(run_dir, '*.xplane.pb')))
  data, _ = raw_to_tool_data.xspace_to_tool_data(paths, 'trace_viewer', {})
  if not data:
    raise ValueError(f'the profiler plugin could not read the trace in '
                     f'{run_dir}.')
  trace = json.loads(data)['traceEvents']
  threads = {(e['pid'], e['tid']): e['args']['name'] for e in trace
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  return [e for e in trace if e.get('ph') == 'X'], threads


def classify_op(name):
  """`(part, pass)` of a TF op from its full name (scopes, no `:type`)."""
  parts = [p for p in name.split('/') if not _CONTROL_FLOW.match(p)]
  backward = bool(parts) and parts[0] == 'gradient_tape'
  if backward:
    parts = parts[1:]
  if parts and _OPTIMIZER.match(parts[0]):
    return 'optimizer', 'update'
  kind = 'backward' if backward else 'forward'
  if len(parts) >= 3:
    return parts[1], kind        # model scope / layer / ... / op
  return 'step', kind


def _xla_function(module):
  """('forward'|'backward', function name) of an XLA module's name."""
  match = _XLA_FUNCTION.match(module)
  if not match:
    return 'forward', module
  return match.group(1) or 'forward', match.group(2)


def _labelled(events, threads):
  """The events that are work, each with `(part, pass, op)` attached.

  TF ops carry `long_name` (`scope/name:type`); XLA thunks carry their
  `hlo_module`; an asynchronous kernel (an XLA launch, the iterator) runs
  as `ExecutorState::ProcessAsync::Start` with its node's `name`; input
  pipeline work runs on `tf_data` threads.
  """
  out = []
  xla = []
  pool = []
  for e in events:
    args = e.get('args', {})
    thread = threads.get((e['pid'], e['tid']), '')
    if thread.startswith('tf_data') and (
        'long_name' in args or e['name'].startswith('Iterator::')):
      label = ('input pipeline', 'input', e['name'])
    elif 'long_name' in args:
      name, _, op_type = args['long_name'].partition(':')
      label = classify_op(name) + (op_type or e['name'],)
    elif e['name'] == 'ExecutorState::ProcessAsync::Start' and 'name' in args:
      if args.get('kernel_type', '').startswith('IteratorGetNext'):
        label = ('input pipeline', 'input', 'IteratorGetNext (waiting)')
      else:
        label = classify_op(args['name']) + (args.get('kernel_type', ''),)
    elif 'hlo_module' in args:
      xla.append(e)
      continue
    elif e['name'] == 'ThreadpoolListener::Region' and 'Eigen' in thread:
      pool.append(e)   # a thread-pool worker's share of some op's work
      continue
    elif e['name'] == 'BlockUntilReady':
      label = None   # a launching thread waiting for XLA: not work
    else:
      continue
    out.append((e, label))
  _attribute_xla(out, xla, pool)
  return out


def _open_launch(out, candidates):
  """A function giving, for an event `e`, the launch among `candidates`
  (indices into the labelled list `out`) open when `e` ran: on its own
  thread if there is one (XLA code may run inline), else the first on any
  (on the thread pool)."""
  candidates = sorted(candidates, key=lambda i: out[i][0]['ts'])
  starts = [out[i][0]['ts'] for i in candidates]
  longest = max((out[i][0]['dur'] for i in candidates), default=0)

  def find(e):
    # Only launches that started at most the longest launch's duration
    # before `e` can still be open: a bisection, not a scan of the trace.
    lo = bisect.bisect_left(starts, e['ts'] - longest)
    hi = bisect.bisect_right(starts, e['ts'])
    during = [i for i in candidates[lo:hi]
              if e['ts'] <= out[i][0]['ts'] + out[i][0]['dur']]
    same = [i for i in during
            if (out[i][0]['pid'], out[i][0]['tid']) == (e['pid'],
                                                        e['tid'])]
    return (same or during or [None])[0]
  return find


def _attribute_xla(out, xla, pool):
  """Labels XLA's events by the layer that launched them, in place.

  Args:
    out: the labelled `(event, label)` list, XLA launches among them.
    xla: the XLA thunks' events (they carry `hlo_module`).
    pool: the intra-op pool workers' region events.
  """
  # An XLA function's part is the layer that launched its forward pass; its
  # backward is launched from the gradient function, outside any layer.
  launches = [i for i, (e, label) in enumerate(out)
              if e['name'] == 'ExecutorState::ProcessAsync::Start' and
              label[0] != 'input pipeline']

  launched = {}   # launch index → (kind, function) of the XLA it ran
  launch_of = _open_launch(out, launches)
  for e in xla:
    i = launch_of(e)
    if i is not None:
      launched.setdefault(i, _xla_function(e['args']['hlo_module']))
  owner = {fn: out[i][1][0] for i, (kind, fn) in launched.items()
           if kind == 'forward'}
  for i, (kind, fn) in launched.items():
    out[i] = (out[i][0], (owner.get(fn, f'XLA {fn}'), kind, 'XLA launch'))
  for e in xla:
    kind, fn = _xla_function(e['args']['hlo_module'])
    out.append((e, (owner.get(fn, f'XLA {fn}'), kind,
                    f'XLA {e["name"]}')))
  # XLA's parallel loops (its convolutions, large fusions) run on the intra-op
  # pool, where the trace shows only the workers' regions: each counts
  # towards the XLA launch open at the time. Outside XLA a region is
  # nobody's: TF's own kernels' time is on their op's event. Only launches
  # that ran XLA code are candidates: a plain async kernel open beside one
  # does not take its workers' time.
  xla_launch_of = _open_launch(out, launched)
  for e in pool:
    i = xla_launch_of(e)
    if i is not None:
      part, kind, _ = out[i][1]
      out.append((e, (part, kind, 'XLA (thread pool)')))


def _segments(labelled):
  """Self-time intervals `(start, end, label)`: the innermost event wins."""
  by_thread = collections.defaultdict(list)
  for e, label in labelled:
    by_thread[(e['pid'], e['tid'])].append(
        (float(e['ts']), float(e['ts']) + float(e['dur']), label))
  out = []
  for items in by_thread.values():
    items.sort(key=lambda x: (x[0], -x[1]))
    stack = []   # open events, innermost last: [end, label, self since]

    def close_until(t):
      while stack and stack[-1][0] <= t:
        end, label, since = stack.pop()
        if since < end:
          out.append((since, end, label))
        if stack:
          stack[-1][2] = end    # the parent's own time resumes

    for start, end, label in items:
      close_until(start)
      if stack:
        parent = stack[-1]
        if parent[2] < start:
          out.append((parent[2], start, parent[1]))
        end = min(end, parent[0])   # a child never outlives its parent
      stack.append([end, label, start])
    close_until(float('inf'))
  return [seg for seg in out if seg[2] is not None]


def _share_wall_time(segments, start, end):
  """Wall microseconds per label in [start, end], split among overlaps."""
  edges = sorted({start, end} | {t for s, e, _ in segments
                                 for t in (s, e) if start < t < end})
  weight = collections.defaultdict(float)
  active = collections.Counter()
  events = collections.defaultdict(list)
  for s, e, label in segments:
    s, e = max(s, start), min(e, end)
    if s < e:
      events[s].append((label, 1))
      events[e].append((label, -1))
  busy = 0.0
  for i in range(len(edges) - 1):
    for label, delta in events.get(edges[i], ()):
      active[label] += delta
      if not active[label]:
        del active[label]
    dt = edges[i + 1] - edges[i]
    count = sum(active.values())
    if count:
      busy += dt
      for label, n in active.items():
        weight[label] += dt * n / count
  return weight, busy


def _window(events):
  """The traced steps' span: the outermost function call on the host."""
  calls = [e for e in events
           if e.get('args', {}).get('tf_function_call') is not None]
  if not calls:
    raise ValueError('the trace holds no tf.function call: was it written '
                     'by pipeline.train --profile_steps?')
  longest = max(calls, key=lambda e: e['dur'])
  return float(longest['ts']), float(longest['ts']) + float(longest['dur'])


def report(run_dir, steps=None, top=12):
  """The breakdown of one trace directory, as a dict.

  Args:
    run_dir: a directory holding `*.xplane.pb` (see `latest_profile`).
    steps: the number of traced steps; default from the controller's
      `pipeline_steps.json` beside the trace.
    top: how many ops to list.

  Raises:
    ValueError: when the number of steps is unknown, or the trace is not
      of a training loop.
  """
  record = read_steps(run_dir)
  if steps is None:
    if record is None:
      raise ValueError(
          f'{os.path.join(run_dir, PROFILE_RECORD)} does not exist (a trace '
          'not written by pipeline.train, or from before it wrote one); pass '
          '--steps=N, the number of steps traced.')
    steps = record['last_step'] - record['first_step'] + 1
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}.')
  events, threads = load_events(run_dir)
  start, end = _window(events)
  weight, busy = _share_wall_time(_segments(_labelled(events, threads)),
                                  start, end)
  wall = end - start
  per_step = 1e-3 / steps   # microseconds in the trace → ms per step
  parts = collections.defaultdict(float)
  ops = collections.defaultdict(float)
  for (part, kind, op), us in weight.items():
    parts[(part, kind)] += us
    ops[(part, kind, op)] += us
  # Parts under 0.1% of the step (a stray assert, a cast) become one row.
  small = {key for key, us in parts.items() if us < 1e-3 * wall}
  if len(small) > 1:
    parts[('other', '')] = sum(parts.pop(key) for key in small)
  rows = [{'part': part, 'pass': kind, 'ms_per_step': us * per_step,
           'percent': 100.0 * us / wall}
          for (part, kind), us in sorted(parts.items(), key=lambda x: -x[1])]
  rows.append({'part': 'idle', 'pass': '', 'percent': 100.0 * (wall - busy)
               / wall, 'ms_per_step': (wall - busy) * per_step})
  top_ops = [{'part': part, 'pass': kind, 'op': op,
              'ms_per_step': us * per_step, 'percent': 100.0 * us / wall}
             for (part, kind, op), us in sorted(ops.items(),
                                                key=lambda x: -x[1])[:top]]
  out = {'trace': os.path.abspath(run_dir), 'steps': steps,
         'step_ms': wall * per_step, 'parts': rows, 'top_ops': top_ops}
  if record:
    out.update({k: record[k] for k in ('first_step', 'last_step',
                                       'batch_size', 'precision', 'model',
                                       'what')
                if k in record})
    if record.get('batch_size'):
      out['examples_per_second'] = record['batch_size'] / (
          wall * per_step / 1e3)
  return out


def markdown(rep):
  head = f'{rep.get("model", "model")}, {rep.get("precision", "")}, '
  if 'what' in rep:    # a pipeline.benchmark timing
    head += (f'{rep["what"]}, batch {rep.get("batch_size", "?")}: '
             f'{rep["step_ms"]:.1f} ms a '
             f'{"step" if rep["what"] == "train" else "call"}')
  else:
    head += (f'steps {rep.get("first_step", "?")}-'
             f'{rep.get("last_step", "?")}: {rep["step_ms"]:.0f} ms a step')
  if 'examples_per_second' in rep:
    head += f' ({rep["examples_per_second"]:.1f} examples/s)'
  lines = [head, '', '| part | pass | ms/step | % of step |',
           '| --- | --- | ---: | ---: |']
  for r in rep['parts']:
    lines.append(f'| {r["part"]} | {r["pass"]} | {r["ms_per_step"]:.1f} | '
                 f'{r["percent"]:.1f} |')
  lines += ['', '| op | part | pass | ms/step | % of step |',
            '| --- | --- | --- | ---: | ---: |']
  for r in rep['top_ops']:
    lines.append(f'| {r["op"]} | {r["part"]} | {r["pass"]} | '
                 f'{r["ms_per_step"]:.1f} | {r["percent"]:.1f} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if bool(f.model_dir) == bool(f.trace_dir):
    raise app.UsageError('Pass one of --model_dir or --trace_dir.')
  try:
    run_dir = f.trace_dir or latest_profile(f.model_dir)
    rep = report(run_dir, f.steps, f.top)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(str(e))
  print(markdown(rep))
  if f.json:
    atomic.write_json(f.json, rep, indent=2)
    print(f'Wrote {f.json}')
  return 0


if __name__ == '__main__':
  flags.DEFINE_string('model_dir', None, 'A training run with a trace '
                      '(--profile_steps); its newest trace is read.')
  flags.DEFINE_string('trace_dir', None, 'One trace directory (holding '
                      '*.xplane.pb) instead of --model_dir.')
  flags.DEFINE_integer('steps', None, 'Steps in the trace; default from '
                       f'its {PROFILE_RECORD}.')
  flags.DEFINE_integer('top', 12, 'How many ops to list.')
  flags.DEFINE_string('json', None, 'Also write the report here as JSON.')
  sys.exit(app.run(main))
