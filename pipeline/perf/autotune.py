"""Chooses each layer's formulation by measurement on the machine that runs.

Where a layer can compute the same function in more than one way (CapsNet's
PrimaryCapsules: a strided, a space-to-depth or an XLA convolution; its
ClassCapsules: two layouts of u_hat, with or without XLA), which way is
fastest depends on the CPU or GPU, the precision, the shapes and the pass.
`tune` times every candidate at the run's real per-replica shapes (forward
and backward for training, forward for inference), checks each against the
layer's plain float32 form, keeps the fastest correct one and caches the
choice per machine, so later runs skip the probe.

Policies (`--autotune`): `cached` uses a cached choice where there is one
and probes otherwise; `probe` always measures (and refreshes the cache);
`off` keeps the layers' defaults.
"""

import contextlib
import functools
import glob
import hashlib
import json
import logging as std_logging
import os
import statistics
import sys
import tempfile
import time

from absl import logging
import numpy as np
import tensorflow as tf

from pipeline.perf import hardware

POLICIES = ('cached', 'probe', 'off')
CACHE_ENV = 'CAPSNET_AUTOTUNE_CACHE'
RECORD_FILE = 'autotune.json'
# How far a formulation's outputs and gradients may be from the float32
# reference, as a fraction of the reference's largest magnitude: XLA and
# other layouts reorder float32 sums (~1e-6); a 16-bit kernel that
# accumulates in float32 is off by ~1e-2 (bf16 keeps 8 bits of mantissa).
# A kernel that accumulates in 16 bits, or a wrong one, is off by more
# (docs/benchmark.md has the figures of each candidate and its CPU).
TOLERANCE = {'float32': 1e-3, '16-bit': 0.05}
# A candidate whose first timed call is this many times slower than the
# fastest one's is not timed further (its one call stands for it).
_SLOW = 1.5


def default_cache_path():
  """`$CAPSNET_AUTOTUNE_CACHE`, else `$XDG_CACHE_HOME` (or ~/.cache)
  `/capsnet-pipeline/autotune.json`."""
  if os.environ.get(CACHE_ENV):
    return os.environ[CACHE_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'capsnet-pipeline', 'autotune.json')


def device_kind():
  """'GPU' when TensorFlow sees a GPU (the strategy runs there), else 'CPU'."""
  return 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'


def machine_key():
  """What makes a choice valid only on this machine: the CPU and its
  features (as an ISA cap leaves them), XLA's own ISA cap where one is set,
  the GPUs and their compute capability, TensorFlow's version."""
  key = {'cpu': hardware.cpu_model(), 'cpu_features': hardware.cpu_features(),
         'gpus': [[g.name, g.compute_capability] for g in hardware.gpus()],
         'tensorflow': tf.__version__}
  xla_cap = hardware.xla_isa_cap()
  if xla_cap:
    key['xla_cpu_max_isa'] = xla_cap
  return key


@functools.lru_cache(maxsize=None)
def _source_digest(directory):
  digest = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(directory, '*.py'))):
    with open(path, 'rb') as f:
      digest.update(os.path.basename(path).encode() + b'\0' + f.read())
  return digest.hexdigest()[:16]


def code_version(layer):
  """A digest of the source of the package that defines `layer`'s class
  (for CapsNet's layers, every module of `pipeline/models/`): a choice
  timed on other code of the formulations is not reused."""
  path = getattr(sys.modules.get(type(layer).__module__), '__file__', None)
  if not path:  # Defined where no file holds it (an interactive session).
    return 'no source file'
  return _source_digest(os.path.dirname(os.path.abspath(path)))


def _layer_key(layer, inputs, mode, candidates):
  config = {k: v for k, v in layer.get_config().items() if k != 'name'}
  return json.dumps({'layer': type(layer).__name__, 'config': config,
                     'input_shape': list(inputs.shape), 'mode': mode,
                     'candidates': list(candidates),
                     'code': code_version(layer)},
                    sort_keys=True, default=str)


def cache_key(machine, layer, inputs, mode, candidates):
  """The cache entry's key: machine, layer (its config, dtype policy and
  input shape), mode, the candidates compared and the code that defines
  them (`code_version`)."""
  return json.dumps(machine, sort_keys=True, default=str) + '|' + _layer_key(
      layer, inputs, mode, candidates)


def read_cache(path):
  """The cache file's entries; {} when it is missing or unreadable (a
  corrupt cache costs a probe, never the run)."""
  try:
    with open(path) as f:
      entries = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    logging.warning('Autotune cache %s cannot be read (%s); probing again.',
                    path, e)
    return {}
  return entries if isinstance(entries, dict) else {}


def write_cache(path, new_entries):
  """Merges `new_entries` into the cache file, atomically (a concurrent
  run's entries are kept; a failed write only costs a later probe)."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    entries = read_cache(path)
    entries.update(new_entries)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix='.autotune-')
    with os.fdopen(fd, 'w') as f:
      json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning('Autotune cache %s cannot be written (%s); the next run '
                    'probes again.', path, e)


def _tolerance(layer):
  dtypes = {layer.compute_dtype, getattr(layer, 'routing_dtype', 'float32')}
  return TOLERANCE['16-bit' if dtypes & {'bfloat16', 'float16'} else
                   'float32']


def _flat32(structure):
  return [tf.cast(t, tf.float32) for t in tf.nest.flatten(structure)]


def _pass_fn(forward, inputs, variables, mode, cotangents):
  """A tf.function of one pass of `forward`: its outputs in inference; its
  outputs and the gradients of `sum(outputs * cotangents)` with respect to
  the inputs and `variables` in training. Traced without autograph (its
  source conversion was seconds of every probe): a formulation's Python
  control flow may depend on shapes, dtypes and names, not on tensors."""
  if mode == 'infer':
    return tf.function(lambda: _flat32(forward(inputs)), autograph=False)

  @tf.function(autograph=False)
  def step():
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = _flat32(forward(inputs))
      total = tf.add_n([tf.reduce_sum(o * c)
                        for o, c in zip(outputs, cotangents)])
    grads = tape.gradient(total, [inputs] + list(variables))
    return outputs + [tf.zeros([]) if g is None else tf.cast(g, tf.float32)
                      for g in grads]
  return step


class _Distance:
  """The largest difference of a candidate's tensors from the reference's
  `want`, as a fraction of the largest magnitude of each of `want` (inf for
  a shape mismatch or a NaN). The scales and one scratch buffer per tensor
  are made once: fresh temporaries of the ~16M values of a training pass
  cost more in page faults than the arithmetic."""

  def __init__(self, want):
    self.want = want
    self.scales = [max(float(np.abs(w).max(initial=0.0)), 1e-12)
                   for w in want]
    self.scratch = [np.empty_like(w) for w in want]

  def __call__(self, got):
    worst = 0.0
    for g, w, scale, buf in zip(got, self.want, self.scales, self.scratch):
      g = np.asarray(g)
      if g.shape != w.shape:
        return float('inf')
      np.subtract(g, w, out=buf, casting='unsafe')
      diff = float(np.abs(buf, out=buf).max(initial=0.0))
      if not np.isfinite(diff):
        return float('inf')
      worst = max(worst, diff / scale)
    return worst


def _call_seconds(fn):
  start = time.perf_counter()
  for t in fn():
    t.numpy()
  return time.perf_counter() - start


@contextlib.contextmanager
def _quiet_retracing():
  """Hides TensorFlow's "triggered tf.function retracing" warnings: a probe
  makes one function per candidate and calls each a few times on purpose."""
  logger = std_logging.getLogger('tensorflow')
  level = logger.level
  logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def probe(layer, inputs, mode, candidates, repeats=3):
  """Times each candidate formulation of `layer` on `inputs` in `mode`.

  Each runs once (compiling it) and is checked against `layer.reference`
  (except the one `layer.reference_formulation()` names, if the layer has
  that method: the reference itself, in the layer's dtype); a candidate
  off by more than the tolerance, or that fails, is rejected.
  The rest are timed once, and those within `_SLOW` of the fastest
  `repeats` times in all (the median is kept).

  Returns:
    A dict: `choice` (the fastest correct candidate), `seconds` (median
    seconds a call of each timed candidate), `rejected` (candidate ->
    reason), `errors` (candidate -> its distance from the reference, as a
    fraction of the reference's magnitude), `first_call_seconds` (the
    reference and each candidate -> seconds of its first call, which
    traces, compiles and runs it), `probe_seconds`.

  Raises:
    RuntimeError: when every candidate is rejected.
  """
  start = time.perf_counter()
  variables = layer.trainable_variables
  # The outputs' shapes from a trace, not a run.
  shapes = [o.shape for o in tf.function(
      lambda: _flat32(layer.reference(inputs)),
      autograph=False).get_concrete_function(
      ).structured_outputs]
  rng = np.random.default_rng(0)
  cotangents = [tf.constant(rng.standard_normal(s.as_list()), tf.float32)
                for s in shapes]
  reference = _pass_fn(layer.reference, inputs, variables, mode, cotangents)
  want = [t.numpy() for t in reference()]
  distance = _Distance(want)
  first = {'reference': time.perf_counter() - start}
  # A candidate that computes the reference itself is not compiled again.
  same = getattr(layer, 'reference_formulation', lambda: None)()
  tolerance = _tolerance(layer)
  rejected, errors, fns, times = {}, {}, {}, {}
  for name in candidates:
    if name == same:
      fn, got = reference, want
    else:
      fn = _pass_fn(lambda x, name=name: layer.run(x, name), inputs,
                    variables, mode, cotangents)
      called = time.perf_counter()
      try:
        got = [t.numpy() for t in fn()]  # Compiles it, and checks it.
      except (tf.errors.OpError, ValueError) as e:
        rejected[name] = f'failed: {type(e).__name__}: {str(e)[:200]}'
        continue
      finally:
        first[name] = time.perf_counter() - called
    errors[name] = distance(got)
    if not errors[name] <= tolerance:
      rejected[name] = (f'off by {errors[name]:.3g} of the reference\'s '
                        f'magnitude (tolerance {tolerance:g})')
      continue
    fns[name], times[name] = fn, [_call_seconds(fn)]
  # Only the candidates near the fastest single call are timed again.
  best = min((t[0] for t in times.values()), default=0.0)
  for name, fn in fns.items():
    if times[name][0] <= _SLOW * best:
      times[name] += [_call_seconds(fn) for _ in range(repeats - 1)]
  seconds = {name: statistics.median(t) for name, t in times.items()}
  if not seconds:
    raise RuntimeError(
        f'Every formulation of {layer.name} was rejected in {mode} '
        f'({"; ".join(f"{k}: {v}" for k, v in rejected.items())}); run with '
        '--autotune=off and report this machine.')
  return {'choice': min(seconds, key=seconds.get), 'seconds': seconds,
          'rejected': rejected, 'errors': errors,
          'first_call_seconds': first,
          'probe_seconds': time.perf_counter() - start}


def tune(model, batches, policy='cached', cache_path=None, repeats=3):
  """Chooses the formulation of every tunable layer of `model`.

  Args:
    model: a built `CapsuleModel`; its `tunable_parts` are set.
    batches: `{mode: images}` for the modes to choose ('train', 'infer'),
      each `[per-replica batch, H, W, C]`.
    policy: one of `POLICIES`.
    cache_path: the cache file (default: `default_cache_path()`).
    repeats: timed calls per candidate.

  Returns:
    A JSON-able record: `policy`, `device`, `machine`, `probe_seconds` and
    `parts` (`part/mode -> {choice, source ('probe', 'cache' or 'default'),
    seconds, rejected, input_shape}`).
  """
  if policy not in POLICIES:
    raise ValueError(f'autotune policy must be one of {POLICIES}, got '
                     f'{policy!r}.')
  device = device_kind()
  record = {'policy': policy, 'device': device, 'machine': machine_key(),
            'probe_seconds': 0.0, 'parts': {}}
  cache_path = cache_path or default_cache_path()
  cache = read_cache(cache_path) if policy == 'cached' else {}
  fresh = {}
  start = time.perf_counter()
  for mode, images in batches.items():
    for part, (layer, inputs) in model.tunable_parts(images).items():
      candidates = layer.formulations(mode, device)
      entry = {'input_shape': list(inputs.shape),
               'candidates': list(candidates)}
      if policy == 'off':
        entry.update(choice=layer.formulation(mode), source='default')
      else:
        key = cache_key(record['machine'], layer, inputs, mode, candidates)
        cached = cache.get(key)
        if cached and cached.get('choice') in candidates:
          entry.update(cached, source='cache')
        else:
          with _quiet_retracing():
            result = probe(layer, inputs, mode, candidates, repeats)
          entry.update(result, source='probe')
          fresh[key] = result
        layer.set_formulation(mode, entry['choice'])
        plain = _plain_choice(layer, mode, entry)
        if plain:
          entry['plain_choice'] = plain
          layer.set_plain_formulation(plain)
      record['parts'][f'{part}/{mode}'] = entry
      _log(part, mode, entry)
  record['probe_seconds'] = time.perf_counter() - start
  if fresh:
    write_cache(cache_path, fresh)
  return record


def _plain_choice(layer, mode, entry):
  """For inference with XLA-compiled candidates: the fastest timed
  candidate that does not compile, which inference runs where it may not
  compile (an export's signatures hold plain TF ops); else None."""
  if mode != 'infer' or not hasattr(layer, 'compiles'):
    return None
  seconds = entry.get('seconds') or {}
  plain = {name: t for name, t in seconds.items()
           if name in entry['candidates'] and not layer.compiles(name)}
  if len(plain) == len(seconds) or not plain:
    return None
  return min(plain, key=plain.get)


def _log(part, mode, entry):
  timings = ', '.join(f'{k} {1000 * v:.1f} ms'
                      for k, v in sorted(entry.get('seconds', {}).items(),
                                         key=lambda kv: kv[1]))
  rejected = entry.get('rejected') or {}
  plain = entry.get('plain_choice')
  plain = (f', {plain} without XLA'
           if plain and plain != entry['choice'] else '')
  logging.info('Autotune %s/%s: %s%s (%s%s%s)', part, mode, entry['choice'],
               plain, entry['source'], f'; {timings}' if timings else '',
               f'; rejected {", ".join(rejected)}' if rejected else '')


def apply_plain_choices(model, record, image_shape):
  """Sets on `model` (rebuilt from a run's checkpoint, for an export) the
  formulations its run's probe chose for inference without XLA.

  Every formulation is plain TF ops that compute the same function, so an
  export stays portable whichever runs; the run's probe is the best guess
  of the fastest. A choice this model does not take is skipped, logged.

  Returns:
    `part -> formulation` applied.
  """
  wanted = {key.split('/')[0]: entry['plain_choice']
            for key, entry in (record.get('parts') or {}).items()
            if key.endswith('/infer') and entry.get('plain_choice')}
  if not wanted:
    return {}
  parts = model.tunable_parts(tf.zeros([1, *image_shape]))
  applied = {}
  for part, name in sorted(wanted.items()):
    layer = parts.get(part, (None, None))[0]
    try:
      layer.set_plain_formulation(name)
    except (AttributeError, ValueError) as e:
      logging.warning('The run chose %s for %s inference without XLA, which '
                      'this model does not take (%s); keeping its default.',
                      name, part, e)
      continue
    applied[part] = name
  return applied


def summary(record):
  """`part/mode -> choice` of a `tune` record, for a log line or a JSON
  (with `part/mode/plain -> plain_choice` where inference without XLA runs
  another)."""
  out = {}
  for key, entry in record['parts'].items():
    out[key] = entry['choice']
    if entry.get('plain_choice') not in (None, entry['choice']):
      out[f'{key}/plain'] = entry['plain_choice']
  return out
