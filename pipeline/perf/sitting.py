"""One benchmark sitting, measured as Performance III's targets are: the
plain one-file script, the pipeline's benchmark in the precision `auto`
picks (probing on an empty cache, then from that cache) and in float32,
then the plain script again; every figure's ratio to the plain script's two
runs, judged against the targets, in one JSON and one table.

  python -m pipeline.perf.sitting --output_dir=docs/perf/<cpu>_<day>
  python -m pipeline.perf.sitting --output_dir=/tmp/capped --isa_cap=AVX2

Writes into --output_dir each benchmark's JSON (`auto_probe.json`,
`auto_cached.json`, `float32_probe.json`), the console of every command
(`sitting.log`, with the CPU and the commit) and the judgement
(`sitting.json`); prints the table. The autotune cache is the sitting's own
(`autotune_cache.json` there, emptied at the start), so the probe's cost is
measured, not a cached choice's. `--isa_cap=AVX2` runs every command under
`ONEDNN_MAX_CPU_ISA` and `--xla_cpu_max_isa` (the plain script too): what
`auto` and the probe do on a CPU without AVX-512, emulated.

A training run beside a sitting takes half the cores and both figures with
them, so it refuses to start while other processes use more than
`--max_busy` cores (sampled over 2 s), naming the busiest. A SIGTERM or
Ctrl-C is passed on to the command running and ends the sitting (exit 143
or 130), judging nothing. The exit status is 1 when a command failed or a
target was missed.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

from pipeline.core import atomic
from pipeline.core import children

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
PLAIN_SCRIPT = os.path.join(REPO, '..', 'shared', 'bench', 'plain_capsnet.py')
# Performance III's targets, as ratios to the plain script's float32.
TARGET = 1.25
BF16_TARGET = 1.8
FLOOR = 1.0
PROBE_SECONDS = 20.0
CACHED_SECONDS = 1.0
BENCH_WHAT = 'train,inference,serving,matmul'
# The commands of a sitting, in order: (name, kind, arguments).
STEPS = (
    ('plain_before', 'plain', ()),
    ('auto_probe', 'bench', ('--precision=auto', '--autotune=probe',
                             f'--what={BENCH_WHAT}')),
    ('auto_cached', 'bench', ('--precision=auto', '--autotune=cached',
                              '--what=train,inference')),
    ('float32_probe', 'bench', ('--precision=float32', '--autotune=probe',
                                f'--what={BENCH_WHAT}')),
    ('plain_after', 'plain', ()),
)
_RESULT = re.compile(r'^RESULT \|.*\| train ([\d.]+) ex/s .*\| infer '
                     r'([\d.]+) ex/s', re.M)


class SittingError(Exception):
  """A sitting cannot start, or a command of it failed."""


def plain_result(output):
  """`(train, inference)` examples/s of the plain script's RESULT line.

  Raises:
    SittingError: when `output` has no such line.
  """
  found = _RESULT.findall(output)
  if not found:
    raise SittingError('the plain script printed no `RESULT | ... | train N '
                       'ex/s ... | infer N ex/s` line (see sitting.log).')
  train, infer = found[-1]
  return float(train), float(infer)


def _ratios(values, plains):
  """`[least, most]` of every pairing of `values` with `plains`."""
  ratios = [v / p for v in values for p in plains]
  return [round(min(ratios), 3), round(max(ratios), 3)]


def judge(plain, auto_probe, auto_cached, float32_probe):
  """The sitting's figures, ratios and targets.

  Args:
    plain: `[(train, inference), (train, inference)]` of the plain script,
      before and after.
    auto_probe, auto_cached, float32_probe: the benchmark JSONs.

  Returns:
    A dict: `figures` (examples/s), `ratios` (`[least, most]` over every
    pairing with the plain script's two runs), `targets` (each with its
    ratio or seconds and `met`) and `met` (all of them).
  """
  plain_train = [p[0] for p in plain]
  plain_infer = [p[1] for p in plain]
  autos = (auto_probe, auto_cached)
  precision = auto_probe['precision']
  figures = {
      'plain_train': plain_train, 'plain_inference': plain_infer,
      'auto_precision': precision,
      'auto_train': [r['train_examples_per_second'] for r in autos],
      'auto_inference': [r['inference_examples_per_second'] for r in autos],
      'auto_inference_xla': [r.get('inference_xla_examples_per_second')
                             for r in autos],
      'float32_train': float32_probe['train_examples_per_second'],
      'float32_inference': float32_probe['inference_examples_per_second'],
      'auto_serving': auto_probe.get('serving_examples_per_second'),
      'probe_seconds': auto_probe.get('autotune_probe_seconds'),
      'cached_probe_seconds': auto_cached.get('autotune_probe_seconds'),
      'float32_probe_seconds': float32_probe.get('autotune_probe_seconds'),
      'matmul_gflops': auto_probe.get('matmul_gflops'),
      'matmul_bf16_gflops': auto_probe.get('matmul_bf16_gflops'),
      'auto_train_fraction_of_matmul_peak': auto_probe.get(
          'train_fraction_of_matmul_peak'),
      'auto_inference_fraction_of_matmul_peak': auto_probe.get(
          'inference_fraction_of_matmul_peak'),
      'float32_train_fraction_of_matmul_peak': float32_probe.get(
          'train_fraction_of_matmul_peak'),
  }
  ratios = {
      'auto_train': _ratios(figures['auto_train'], plain_train),
      'auto_inference': _ratios(figures['auto_inference'], plain_infer),
      'float32_train': _ratios([figures['float32_train']], plain_train),
      'float32_inference': _ratios([figures['float32_inference']],
                                   plain_infer),
  }
  if all(figures['auto_inference_xla']):
    ratios['auto_inference_xla'] = _ratios(figures['auto_inference_xla'],
                                           plain_infer)
  targets = [
      dict(target=f'auto ({precision}) training >= {TARGET}x the plain '
           'script', ratio=ratios['auto_train'],
           met=ratios['auto_train'][0] >= TARGET),
      dict(target=f'auto ({precision}) inference >= {TARGET}x the plain '
           'script (plain ops: what the default SavedModel serves)',
           ratio=ratios['auto_inference'],
           met=ratios['auto_inference'][0] >= TARGET),
  ]
  if precision == 'mixed_bfloat16':
    targets.append(dict(
        target=f'bf16 hardware: training >= {BF16_TARGET}x the plain '
        "script's float32", ratio=ratios['auto_train'],
        met=ratios['auto_train'][0] >= BF16_TARGET))
  least = min(ratios['auto_train'][0], ratios['auto_inference'][0])
  targets.append(dict(target=f'never below {FLOOR}x in what auto picks',
                      ratio=[least], met=least >= FLOOR))
  probe, cached = figures['probe_seconds'], figures['cached_probe_seconds']
  if probe is not None and cached is not None:
    targets.append(dict(
        target=f'probe under {PROBE_SECONDS:g} s at start-up, about 0 s '
        f'cached (under {CACHED_SECONDS:g} s)',
        seconds=[round(probe, 2), round(cached, 2)],
        met=probe < PROBE_SECONDS and cached < CACHED_SECONDS))
  return dict(figures=figures, ratios=ratios, targets=targets,
              met=all(t['met'] for t in targets))


def table(result):
  """The judgement as Markdown rows, for docs/benchmark.md."""
  f, r = result['figures'], result['ratios']

  def pair(values):
    return ' / '.join(f'{v:.1f}' for v in values)

  def span(ratio):
    return '-'.join(f'{x:.2f}' for x in sorted(set(ratio))) + 'x'

  lines = [
      '| | plain script (before / after) | auto: probe / cached | float32 |',
      '| --- | ---: | ---: | ---: |',
      f'| training, examples/s | {pair(f["plain_train"])} | '
      f'{pair(f["auto_train"])} ({f["auto_precision"]}): '
      f'{span(r["auto_train"])} | {f["float32_train"]:.1f}: '
      f'{span(r["float32_train"])} |',
      f'| inference, examples/s | {pair(f["plain_inference"])} | '
      f'{pair(f["auto_inference"])}: {span(r["auto_inference"])}'
      + (f'; XLA {pair(f["auto_inference_xla"])}: '
         f'{span(r["auto_inference_xla"])}' if 'auto_inference_xla' in r
         else '') +
      f' | {f["float32_inference"]:.1f}: {span(r["float32_inference"])} |',
      '',
      '| target | measured | met |',
      '| --- | --- | --- |',
  ]
  for t in result['targets']:
    measured = (span(t['ratio']) if 'ratio' in t else
                f'{t["seconds"][0]:.1f} s; cached {t["seconds"][1]:.2f} s')
    lines.append(f'| {t["target"]} | {measured} | '
                 f'{"yes" if t["met"] else "**no**"} |')
  return '\n'.join(lines)


def cpu_use(seconds=2.0):
  """What the other processes use now: `(cores, [(pid, percent of a core,
  command)])` over `seconds`, the processes busiest first (this one left
  out; threads count with their process).
  """

  def times():
    found = {}
    for pid in os.listdir('/proc'):
      if not pid.isdigit() or int(pid) == os.getpid():
        continue
      try:
        with open(f'/proc/{pid}/stat') as f:
          fields = f.read().rsplit(')', 1)[1].split()
        found[int(pid)] = int(fields[11]) + int(fields[12])
      except (OSError, IndexError, ValueError):
        pass
    return found

  tick = os.sysconf('SC_CLK_TCK')
  before = times()
  time.sleep(seconds)
  after = times()
  used = {pid: (t - before.get(pid, t)) / tick / seconds
          for pid, t in after.items()}
  processes = []
  for pid, share in sorted(used.items(), key=lambda u: -u[1]):
    if share <= 0:
      break
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        command = f.read().replace(b'\0', b' ').decode(errors='replace')
      if not command.strip():  # A kernel thread: its name.
        with open(f'/proc/{pid}/comm') as f:
          command = f'[{f.read().strip()}]'
    except OSError:
      command = '?'
    processes.append((pid, round(100 * share), command.strip()[:120]))
  return sum(used.values()), processes


def check_idle(max_busy, seconds=2.0):
  """Refuses a sitting on a machine that is busy now.

  Judged from what the other processes use over `seconds`, not from the
  load average: that is a minute's decaying mean, still above 0.5 for
  about 80 s after a process that kept both cores busy has ended (a
  sitting started right after another was refused so).

  Returns:
    The cores' worth of CPU the other processes used.
  Raises:
    SittingError: naming the use, the busiest processes and the fix.
  """
  used, processes = cpu_use(seconds)
  if used <= max_busy:
    return used
  named = '; '.join(f'pid {pid} at {percent}%: {command}'
                    for pid, percent, command in processes[:3]
                    if percent >= 5)
  raise SittingError(
      f'other processes used {used:.2f} cores over the last {seconds:g} s '
      f'(more than --max_busy={max_busy:g}): something else is running'
      + (f' ({named})' if named else '') + '. A sitting beside it measures '
      'neither. Stop it (a training run saves and resumes on SIGTERM), or '
      'pass a higher --max_busy to measure anyway.')


def environment(isa_cap, cache):
  """The environment of every command of the sitting."""
  env = dict(os.environ, CAPSNET_AUTOTUNE_CACHE=cache)
  if isa_cap:
    env['ONEDNN_MAX_CPU_ISA'] = isa_cap
    xla = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_cpu_max_isa')]
    env['XLA_FLAGS'] = ' '.join(xla + [f'--xla_cpu_max_isa={isa_cap}'])
  return env


def _header(isa_cap):
  """What the log starts with: the CPU (lscpu's lines) and the commit."""
  lines = []
  try:
    lscpu = subprocess.run(['lscpu'], capture_output=True, text=True,
                           timeout=30).stdout.splitlines()
    lines += [l for l in lscpu if l.startswith(
        ('Model name', 'CPU family', 'Model:', 'Flags'))]
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    lines.append(subprocess.run(
        ['git', 'log', '-1', '--oneline'], cwd=REPO, capture_output=True,
        text=True, timeout=30).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  if isa_cap:
    lines.append(f'ISA cap: ONEDNN_MAX_CPU_ISA={isa_cap} '
                 f'--xla_cpu_max_isa={isa_cap}')
  return '\n'.join(lines) + '\n'


def run_sitting(output_dir, plain_command, bench_flags=(), isa_cap=None,
                log=print, load=None, busy=None):
  """Runs the sitting's commands in order; returns the judgement (also
  written to `output_dir/sitting.json`).

  Raises:
    SittingError: a command failed (its output is in sitting.log).
    children.Stopped: a signal stopped the sitting.
  """
  os.makedirs(output_dir, exist_ok=True)
  cache = os.path.join(output_dir, 'autotune_cache.json')
  if os.path.exists(cache):
    os.remove(cache)
  env = environment(isa_cap, cache)
  log_path = os.path.join(output_dir, 'sitting.log')
  started = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())
  with open(log_path, 'w') as f:
    f.write(_header(isa_cap))
  plain, benches = [], {}
  for i, (name, kind, args) in enumerate(STEPS, 1):
    if kind == 'plain':
      command = list(plain_command)
    else:
      output = os.path.join(output_dir, f'{name}.json')
      command = [sys.executable, '-m', 'pipeline.benchmark', *args,
                 f'--output={output}', *bench_flags]
    shown = ' '.join(shlex.quote(c) for c in command).replace(
        sys.executable, 'python')
    log(f'[{i}/{len(STEPS)}] {shown}')
    start = time.time()
    finished = children.run(command, capture_output=True, cwd=REPO, env=env)
    with open(log_path, 'a') as f:
      f.write(f'### {time.strftime("%H:%M:%S")} {shown}\n'
              f'{finished.stdout}{finished.stderr}')
    if finished.received:
      raise children.Stopped(
          f'{finished.received[0]}: the sitting stopped during {name}; '
          'nothing was judged.', finished.stop_status)
    if finished.returncode:
      raise SittingError(f'{shown} failed (exit {finished.returncode}); its '
                         f'output is in {log_path}.')
    if kind == 'plain':
      plain.append(plain_result(finished.stdout + finished.stderr))
      log(f'      train {plain[-1][0]:.1f}, inference {plain[-1][1]:.1f} '
          f'examples/s ({time.time() - start:.0f} s)')
    else:
      with open(output) as f:
        benches[name] = json.load(f)
      log(f'      train {benches[name]["train_examples_per_second"]:.1f}, '
          'inference '
          f'{benches[name]["inference_examples_per_second"]:.1f} examples/s'
          f' in {benches[name]["precision"]} ({time.time() - start:.0f} s)')
  result = judge(plain, benches['auto_probe'], benches['auto_cached'],
                 benches['float32_probe'])
  probe = benches['auto_probe']
  result = dict(
      cpu=probe.get('cpu'), cpu_features=probe.get('cpu_features'),
      isa_cap=isa_cap, tensorflow=probe.get('tensorflow'),
      load_average_at_start=load, other_cores_busy_at_start=busy,
      started=started,
      ended=time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
      plain_command=' '.join(plain_command[1:]),
      benchmark_flags=list(bench_flags), **result)
  atomic.write_json(os.path.join(output_dir, 'sitting.json'), result,
                    indent=2)
  return result


def define_flags():
  flags.DEFINE_string('output_dir', None, 'Where the sitting writes its '
                      'JSONs and log (required).')
  flags.DEFINE_string('plain_script', PLAIN_SCRIPT, 'The plain one-file '
                      'CapsNet (../shared/bench/plain_capsnet.py beside the '
                      'checkout on the project machines).')
  flags.DEFINE_list('plain_args', ['--jit', 'caps'],
                    "The plain script's arguments.")
  flags.DEFINE_enum('isa_cap', None, ['AVX2', 'AVX512_CORE'],
                    'Run every command under this oneDNN and XLA ISA cap.')
  flags.DEFINE_float('max_busy', 0.25, 'Refuse to start while the other '
                     "processes use more than this many cores' worth of CPU "
                     '(sampled over 2 s).')
  flags.DEFINE_multi_string('benchmark_flag', [], 'Extra flag for every '
                            'pipeline.benchmark run (repeatable).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.output_dir:
    raise app.UsageError('--output_dir is required.')
  try:
    if not os.path.isfile(f.plain_script):
      raise SittingError(
          f'the plain script is not at {f.plain_script} (it is in '
          '../shared/bench beside the checkout on the project machines); '
          'pass --plain_script=PATH.')
    busy = check_idle(f.max_busy)
    result = run_sitting(
        f.output_dir, [sys.executable, f.plain_script, *f.plain_args],
        f.benchmark_flag, f.isa_cap, load=round(os.getloadavg()[0], 2),
        busy=round(busy, 2))
  except children.Stopped as e:
    print(str(e), file=sys.stderr, flush=True)
    return e.status
  except SittingError as e:
    sys.exit(f'Error: {e}')
  print(f'\n{result["cpu"]} ({", ".join(result["cpu_features"])})'
        + (f', capped to {f.isa_cap}' if f.isa_cap else '') + '\n')
  print(table(result))
  print(f'\nWrote {os.path.join(f.output_dir, "sitting.json")}')
  return 0 if result['met'] else 1


if __name__ == '__main__':
  define_flags()
  sys.exit(app.run(main))
