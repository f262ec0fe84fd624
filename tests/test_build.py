"""Holds BUILD true to the tree.

Bazel cannot fetch its rules offline here, so this test reads BUILD as the
Starlark it is (a subset of Python) and checks: every module under
pipeline/ has a py_library, every test module a py_test, every tool a
py_binary, and each target's deps name the targets of the project modules
its sources import.
"""

import ast
import glob
import os

import pytest

from conftest import REPO

TOOLS = ('train', 'benchmark', 'export', 'evaluate', 'client',
         'make_affnist', 'experiment')


def _read_build():
  targets = {}

  def rule(kind):
    def record(name, srcs=(), deps=(), **kwargs):
      assert name not in targets, f'duplicate target {name}'
      targets[name] = dict(kind=kind, srcs=list(srcs), deps=list(deps),
                           **kwargs)
    return record

  namespace = {'load': lambda *a, **k: None,
               'py_library': rule('py_library'),
               'py_binary': rule('py_binary'), 'py_test': rule('py_test')}
  with open(os.path.join(REPO, 'BUILD')) as f:
    exec(compile(f.read(), 'BUILD', 'exec'), namespace)  # pylint: disable=exec-used
  return targets


TARGETS = _read_build()


def _owner(path):
  """The py_library (or py_test) whose srcs hold `path`."""
  owners = [n for n, t in TARGETS.items()
            if path in t['srcs'] and t['kind'] != 'py_binary']
  assert len(owners) == 1, f'{path} is in {owners or "no"} target'
  return owners[0]


def _module_file(dotted):
  base = os.path.join(REPO, *dotted.split('.'))
  for candidate in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.exists(candidate):
      return os.path.relpath(candidate, REPO)
  return None


def _project_imports(path):
  """Project files (pipeline/..., tests/...) that `path` imports."""
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    for name in names:
      top = name.split('.')[0]
      if top == 'pipeline':
        target = _module_file(name)
      elif (path.startswith('tests/') and
            os.path.exists(os.path.join(REPO, 'tests', top + '.py'))):
        target = f'tests/{top}.py'
      else:
        continue
      if target:
        found.add(target)
  return found


def _sources(pattern):
  return sorted(os.path.relpath(p, REPO)
                for p in glob.glob(os.path.join(REPO, pattern), recursive=True))


@pytest.mark.parametrize('path', _sources('pipeline/**/*.py'))
def test_every_module_has_a_library(path):
  assert TARGETS[_owner(path)]['kind'] == 'py_library'


@pytest.mark.parametrize('path', _sources('tests/test_*.py'))
def test_every_test_module_has_a_py_test(path):
  target = TARGETS[_owner(path)]
  assert target['kind'] == 'py_test'
  assert target.get('size') in ('small', 'medium', 'large', 'enormous')


@pytest.mark.parametrize('tool', TOOLS)
def test_every_tool_has_a_binary(tool):
  binary = TARGETS.get(tool)
  assert binary and binary['kind'] == 'py_binary'
  assert binary['main'] == f'pipeline/{tool}.py'
  assert ':' + _owner(f'pipeline/{tool}.py') in binary['deps']


@pytest.mark.parametrize('name', sorted(TARGETS))
def test_deps_cover_imports(name):
  target = TARGETS[name]
  if target['kind'] == 'py_binary':
    return  # Its main is its library's source; the library's deps are checked.
  for src in target['srcs']:
    assert os.path.exists(os.path.join(REPO, src)), f'{name}: no {src}'
    for imported in _project_imports(src):
      owner = _owner(imported)
      if owner != name:
        assert ':' + owner in target['deps'], (
            f'{name} imports {imported} but does not depend on :{owner}')
  for dep in target['deps']:
    assert dep.lstrip(':') in TARGETS, f'{name}: unknown dep {dep}'
