"""Error curves of a training run from its metrics.json, as JSON and SVG.

  python -m pipeline.research.curves --model_dir=/var/tmp/mnist_row1 \
      --output_dir=docs/mnist --reference=0.25:paper --reference=0.35:goal

Writes into `--output_dir`:
  curve.json           one row per in-training evaluation: step, epoch,
                       hours of training wall time, split, error, accuracy
  error_vs_epoch.svg   error (%) against epochs of the training split
  error_vs_hours.svg   error (%) against hours of training wall time
and prints the rows as a Markdown table, then the first epoch at which
each `--milestone` accuracy was reached (by default 99.0, 99.2, 99.5 and
99.65%, the epochs-to-accuracy columns of docs/mnist_best/), and the
final error. Needs no plotting package: the
SVG is written by hand. `--reference=VALUE:LABEL` draws a dashed line at
an error of VALUE percent (the paper's figure, a goal).
"""

import json
import math
import os
import sys

from absl import app
from absl import flags

from pipeline.core import atomic

CURVE_FILE = 'curve.json'
MILESTONES = (99.0, 99.2, 99.5, 99.65)


def read_curve(model_dir):
  """One row per evaluation in the run's metrics.json, in step order.

  Raises:
    FileNotFoundError: when `model_dir` is not a training run, or has not
      evaluated yet.
  """
  paths = {name: os.path.join(model_dir, f'{name}.json')
           for name in ('config', 'info', 'metrics')}
  for name in ('config', 'info'):
    if not os.path.exists(paths[name]):
      raise FileNotFoundError(
          f'{paths[name]} does not exist: {model_dir} is not a model '
          'directory written by pipeline.train.')
  if not os.path.exists(paths['metrics']):
    raise FileNotFoundError(
        f'{paths["metrics"]} does not exist: the run has not evaluated yet '
        '(it does every --eval_every steps and at the end).')
  with open(paths['config']) as f:
    batch_size = int(json.load(f)['batch_size'])
  with open(paths['info']) as f:
    train_size = int(json.load(f)['split_sizes']['train'])
  with open(paths['metrics']) as f:
    history = json.load(f).get('history', [])
  # A resumed run may evaluate a step twice (before and after a crash): the
  # later entry wins.
  by_step = {int(h['step']): h for h in history}
  rows = []
  for step in sorted(by_step):
    entry = by_step[step]
    rows.append({
        'step': step,
        'epoch': step * batch_size / train_size,
        'hours': (entry.get('wall_seconds') or 0.0) / 3600.0,
        'split': entry['split'],
        'examples': entry.get('examples'),
        'error_percent': 100.0 * (1.0 - entry['accuracy']),
        'accuracy': entry['accuracy'],
    })
  return rows


def _ticks(low, high, count=5):
  """About `count` round tick values spanning [low, high]."""
  span = max(high - low, 1e-9)
  raw = span / count
  magnitude = 10 ** math.floor(math.log10(raw))
  step = min((m * magnitude for m in (1, 2, 2.5, 5, 10)
              if m * magnitude >= raw), default=10 * magnitude)
  first = math.floor(low / step + 1e-9)
  last = math.ceil(high / step - 1e-9)
  return [round(i * step, 10) for i in range(first, last + 1)]


def _label(value):
  return f'{value:g}'


def svg_plot(points, x_label, y_label, title, references=()):
  """A line plot of `(x, y)` points as an SVG document (a string).

  `references`: `(y, label)` dashed horizontal lines.
  """
  width, height = 640, 400
  left, right, top, bottom = 70, 20, 40, 55
  xs = [p[0] for p in points] or [0.0]
  ys = [p[1] for p in points] + [r[0] for r in references] or [0.0]
  x_ticks = _ticks(0.0, max(xs) or 1.0)
  y_ticks = _ticks(0.0, max(ys) * 1.05 or 1.0)
  x_max, y_max = x_ticks[-1] or 1.0, y_ticks[-1] or 1.0

  def px(x):
    return left + (width - left - right) * x / x_max

  def py(y):
    return height - bottom - (height - top - bottom) * y / y_max

  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
         f'height="{height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="22" text-anchor="middle" '
         f'font-size="14">{title}</text>']
  for t in y_ticks:
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(t):.1f}" '
               f'y2="{py(t):.1f}" stroke="#ddd"/>')
    out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" '
               f'text-anchor="end">{_label(t)}</text>')
  for t in x_ticks:
    out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" '
               f'y2="{height - bottom}" stroke="#eee"/>')
    out.append(f'<text x="{px(t):.1f}" y="{height - bottom + 16}" '
               f'text-anchor="middle">{_label(t)}</text>')
  out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" '
             f'height="{height - top - bottom}" fill="none" stroke="#444"/>')
  for value, label in references:
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(value):.1f}" '
               f'y2="{py(value):.1f}" stroke="#c33" stroke-dasharray="6,4"/>')
    out.append(f'<text x="{width - right - 4}" y="{py(value) - 4:.1f}" '
               f'text-anchor="end" fill="#c33">{label} {_label(value)}'
               '</text>')
  if points:
    path = ' '.join(f'{px(x):.1f},{py(y):.1f}' for x, y in points)
    out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" '
               'stroke-width="2"/>')
    for x, y in points:
      out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" '
                 'fill="#1f77b4"/>')
  out.append(f'<text x="{(left + width - right) / 2}" y="{height - 15}" '
             f'text-anchor="middle">{x_label}</text>')
  out.append(f'<text x="18" y="{(top + height - bottom) / 2}" '
             f'text-anchor="middle" transform="rotate(-90 18 '
             f'{(top + height - bottom) / 2})">{y_label}</text>')
  out.append('</svg>')
  return '\n'.join(out) + '\n'


def parse_reference(text):
  """'0.25:paper' → (0.25, 'paper')."""
  value, _, label = text.partition(':')
  try:
    return float(value), label
  except ValueError:
    raise ValueError(f'--reference takes VALUE:LABEL with VALUE an error in '
                     f'percent, e.g. 0.25:paper; got {text!r}.') from None


def write_curves(model_dir, output_dir, references=()):
  """Writes curve.json and the two SVG plots; returns the rows."""
  rows = read_curve(model_dir)
  os.makedirs(output_dir, exist_ok=True)
  split = rows[-1]['split'] if rows else 'test'
  atomic.write_json(os.path.join(output_dir, CURVE_FILE),
                       {'model_dir': os.path.abspath(model_dir),
                        'rows': rows}, indent=2)
  for key, x_label, name in (
      ('epoch', 'epochs', 'error_vs_epoch.svg'),
      ('hours', 'hours of training (wall time)', 'error_vs_hours.svg')):
    svg = svg_plot([(r[key], r['error_percent']) for r in rows], x_label,
                   f'{split} error, %', f'{split} error against {x_label}',
                   references)
    with open(os.path.join(output_dir, name), 'w') as f:
      f.write(svg)
  return rows


def milestones(rows, accuracies=MILESTONES):
  """For each accuracy in percent, the first row that reached it, or None.

  Both sides are rounded to 1e-6 percent first: 9,965 right of 10,000
  reaches 99.65%, though 100 * (9965 / 10000) is 99.64999... in floating
  point.
  """
  firsts = {}
  for target in accuracies:
    firsts[target] = next(
        (r for r in rows
         if round(100.0 * r['accuracy'], 6) >= round(target, 6)), None)
  return firsts


def _percent(value):
  """99.0 → '99.0', 99.65 → '99.65'."""
  text = f'{value:.2f}'.rstrip('0')
  return text + '0' if text.endswith('.') else text


def milestone_lines(rows, accuracies=MILESTONES):
  """One line per milestone and one for the final error, as text (none
  for a run without evaluations)."""
  if not rows:
    return []
  lines = []
  best = max(rows, key=lambda r: r['accuracy'])
  for target, row in milestones(rows, accuracies).items():
    if row is None:
      lines.append(f'{_percent(target)}%: not reached (best '
                   f'{100 * best["accuracy"]:.2f}% at epoch '
                   f'{best["epoch"]:.2f})')
    else:
      lines.append(f'{_percent(target)}%: first at epoch {row["epoch"]:.2f} '
                   f'(step {row["step"]:,}, {row["hours"]:.2f} h)')
  last = rows[-1]
  lines.append(f'final: {last["error_percent"]:.2f}% {last["split"]} error '
               f'at epoch {last["epoch"]:.2f} (step {last["step"]:,}, '
               f'{last["hours"]:.2f} h)')
  return lines


def parse_milestone(text):
  """'99.65' → 99.65, an accuracy in percent."""
  try:
    value = float(text)
  except ValueError:
    value = None
  if value is None or not 0.0 < value <= 100.0:
    raise ValueError(f'--milestone takes an accuracy in percent in (0, 100], '
                     f'e.g. 99.5; got {text!r}.')
  return value


def markdown(rows):
  lines = ['| step | epoch | hours | split | error % | accuracy |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in rows:
    lines.append(f'| {r["step"]:,} | {r["epoch"]:.2f} | {r["hours"]:.2f} | '
                 f'{r["split"]} | {r["error_percent"]:.2f} | '
                 f'{100 * r["accuracy"]:.2f}% |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  if not f.model_dir or not f.output_dir:
    raise app.UsageError('--model_dir and --output_dir are both required.')
  try:
    references = [parse_reference(r) for r in f.reference]
    targets = [parse_milestone(m) for m in f.milestone]
    rows = write_curves(f.model_dir, f.output_dir, references)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(str(e))
  print(markdown(rows))
  print('\n'.join(milestone_lines(rows, targets)))
  print(f'Wrote {CURVE_FILE}, error_vs_epoch.svg and error_vs_hours.svg to '
        f'{f.output_dir}')
  return 0


if __name__ == '__main__':
  flags.DEFINE_string('model_dir', None, 'Model directory of a training run.')
  flags.DEFINE_string('output_dir', None, 'Where the curves go.')
  flags.DEFINE_multi_string('reference', [], 'VALUE:LABEL: a dashed line at '
                            'an error of VALUE percent.')
  flags.DEFINE_multi_string('milestone', [f'{m:g}' for m in MILESTONES],
                            'An accuracy in percent: prints the first epoch '
                            'that reached it.')
  sys.exit(app.run(main))
