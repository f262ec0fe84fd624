"""Tests of pipeline.research.curves."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pipeline.research import curves

from conftest import REPO


def _run_dir(path, history, batch_size=100, train_size=60000):
  path.mkdir(parents=True, exist_ok=True)
  (path / 'config.json').write_text(json.dumps({'batch_size': batch_size}))
  (path / 'info.json').write_text(json.dumps(
      {'split_sizes': {'train': train_size, 'test': 10000}}))
  (path / 'metrics.json').write_text(json.dumps(
      {'latest': history[-1], 'history': history}))
  return path


def _entry(step, accuracy, wall, split='test'):
  return {'split': split, 'examples': 10000, 'accuracy': accuracy,
          'error_rate': 1 - accuracy, 'loss': 0.1, 'wall_seconds': wall,
          'step': step}


def test_rows_give_epochs_hours_and_errors(tmp_path):
  run = _run_dir(tmp_path / 'run', [
      _entry(1200, 0.99, 1800.0), _entry(600, 0.98, 900.0),
      # A resumed run evaluated step 1200 again: the later entry counts.
      _entry(1200, 0.9925, 1850.0)])
  rows = curves.read_curve(str(run))
  assert [r['step'] for r in rows] == [600, 1200]
  assert rows[0]['epoch'] == pytest.approx(1.0)
  assert rows[1]['epoch'] == pytest.approx(2.0)
  assert rows[1]['hours'] == pytest.approx(1850 / 3600)
  assert rows[1]['error_percent'] == pytest.approx(0.75)


def test_writes_json_and_svgs_that_parse(tmp_path):
  run = _run_dir(tmp_path / 'run', [_entry(600, 0.987, 700.0),
                                    _entry(1200, 0.9931, 1400.0)])
  out = tmp_path / 'docs'
  curves.write_curves(str(run), str(out), [(0.25, 'paper')])
  data = json.loads((out / 'curve.json').read_text())
  assert [r['step'] for r in data['rows']] == [600, 1200]
  for name in ('error_vs_epoch.svg', 'error_vs_hours.svg'):
    root = ET.fromstring((out / name).read_text())
    ns = '{http://www.w3.org/2000/svg}'
    points = root.findall(f'{ns}circle')
    assert len(points) == 2
    texts = ''.join(t.text or '' for t in root.iter(f'{ns}text'))
    assert 'paper 0.25' in texts
    # The first point (1.3% error) is drawn above the second (0.69%), and
    # both inside the plot area.
    ys = [float(c.get('cy')) for c in points]
    assert ys[0] < ys[1]
    assert all(40 <= y <= 345 for y in ys)


@pytest.mark.parametrize('low,high', [(0, 1.09), (0, 3.8), (0, 0.013),
                                      (0, 250)])
def test_ticks_cover_the_data(low, high):
  ticks = curves._ticks(low, high)  # pylint: disable=protected-access
  assert ticks[0] <= low and ticks[-1] >= high
  assert 3 <= len(ticks) <= 12


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a model directory'):
    curves.read_curve(str(tmp_path))
  run = _run_dir(tmp_path / 'run', [_entry(1, 0.5, 1.0)])
  os.remove(run / 'metrics.json')
  with pytest.raises(FileNotFoundError, match='has not evaluated yet'):
    curves.read_curve(str(run))


def test_bad_reference_is_refused():
  assert curves.parse_reference('0.25:paper') == (0.25, 'paper')
  with pytest.raises(ValueError, match='VALUE:LABEL'):
    curves.parse_reference('paper:0.25')


def test_milestones_are_the_first_epoch_reaching_each_accuracy(tmp_path):
  run = _run_dir(tmp_path / 'run', [
      _entry(600, 0.9890, 1.0), _entry(1200, 0.9921, 2.0),
      _entry(1800, 0.9950, 3.0), _entry(2400, 0.9940, 4.0),
      # 9,965 of 10,000 right is 99.65% though 0.9965 is not exact.
      _entry(3000, 9965 / 10000, 5.0), _entry(3600, 0.9960, 6.0)])
  rows = curves.read_curve(str(run))
  firsts = curves.milestones(rows, (99.0, 99.2, 99.5, 99.65, 99.7))
  assert {k: v and v['step'] for k, v in firsts.items()} == {
      99.0: 1200, 99.2: 1200, 99.5: 1800, 99.65: 3000, 99.7: None}
  lines = curves.milestone_lines(rows, (99.0, 99.7))
  assert lines[0] == '99.0%: first at epoch 2.00 (step 1,200, 0.00 h)'
  assert lines[1] == '99.7%: not reached (best 99.65% at epoch 5.00)'
  # The figure that counts is the last evaluation, not the best.
  assert lines[2].startswith('final: 0.40% test error at epoch 6.00')
  # A run without evaluations has nothing to say, and says nothing.
  assert curves.milestone_lines([]) == []


@pytest.mark.parametrize('text', ['0', '101', 'ninety', ''])
def test_bad_milestone_is_refused(text):
  assert curves.parse_milestone('99.65') == 99.65
  with pytest.raises(ValueError, match='accuracy in percent'):
    curves.parse_milestone(text)


def test_command(tmp_path):
  run = _run_dir(tmp_path / 'run', [_entry(600, 0.987, 700.0)])
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.research.curves', f'--model_dir={run}',
       f'--output_dir={tmp_path / "out"}', '--reference=0.25:paper'],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert '| 600 | 1.00 | 0.19 | test | 1.30 | 98.70% |' in proc.stdout
  assert '99.0%: not reached (best 98.70% at epoch 1.00)' in proc.stdout
  assert 'final: 1.30% test error at epoch 1.00' in proc.stdout
  bad = subprocess.run(
      [sys.executable, '-m', 'pipeline.research.curves', f'--model_dir={tmp_path}',
       f'--output_dir={tmp_path / "out"}'],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert bad.returncode != 0
  assert 'not a model directory' in bad.stderr


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
