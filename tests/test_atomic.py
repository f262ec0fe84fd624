"""Tests of pipeline.core.atomic: whole files or none."""

import json
import os
import pathlib

import pytest

from pipeline.core import atomic

from conftest import REPO


def test_a_file_is_replaced_whole_and_no_temporary_is_left(tmp_path):
  path = str(tmp_path / 'row.json')
  atomic.write_json(path, {'a': 1}, indent=2)
  atomic.write_json(path, {'a': 2})
  assert json.loads(pathlib.Path(path).read_text()) == {'a': 2}
  assert os.listdir(tmp_path) == ['row.json']


def test_a_value_that_cannot_be_serialised_leaves_the_old_file(tmp_path):
  path = tmp_path / 'row.json'
  atomic.write_json(str(path), {'accuracy': 0.99})
  with pytest.raises(TypeError):
    atomic.write_json(str(path), {'accuracy': object()})
  assert json.loads(path.read_text()) == {'accuracy': 0.99}
  assert os.listdir(tmp_path) == ['row.json']


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path,
                                                             monkeypatch):
  path = tmp_path / 'flags.txt'
  atomic.write_atomic(str(path), 'old')
  def fail(src, dst):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(atomic.os, 'replace', fail)
  with pytest.raises(OSError, match='No space'):
    atomic.write_atomic(str(path), 'new')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['flags.txt']


def test_every_command_writes_its_json_through_this_module():
  # A results file (evaluate --output, a benchmark's JSON, an experiment's
  # row, a curve) written with open(..., 'w') + json.dump is emptied first:
  # a value that cannot be serialised, or a kill, leaves half of it in
  # place of the good one. The autotune cache writes its own temporary
  # file and renames it.
  allowed = {os.path.join('pipeline', 'perf', 'autotune.py')}
  offenders = []
  for root, _, files in os.walk(os.path.join(REPO, 'pipeline')):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, REPO)
      if rel in allowed:
        continue
      if 'json.dump(' in pathlib.Path(path).read_text():
        offenders.append(rel)
  assert not offenders, offenders


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
