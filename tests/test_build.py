"""Holds the BUILD files true to the tree.

`bazel test //...` (README) builds and runs them for real; this test keeps
them complete on machines without Bazel. It reads each package's BUILD as
the Starlark it is (a subset of Python) and checks: every module under
pipeline/ has a py_library in its package's BUILD, every test module a
py_test that runs it as a script, every tool a py_binary, and each target's
deps name the targets of the project modules its sources import.
"""

import ast
import glob
import os

import pytest

from conftest import REPO, tools

TOOLS = tools()
PACKAGES = tuple(sorted(
    os.path.relpath(os.path.dirname(p), REPO)
    for p in glob.glob(os.path.join(REPO, '**', 'BUILD'), recursive=True)
    if os.path.relpath(p, REPO).startswith(('pipeline', 'tests'))))


def _read_build(package):
  targets = {}

  def rule(kind):
    def record(name, srcs=(), deps=(), **kwargs):
      label = f'//{package}:{name}'
      assert label not in targets, f'duplicate target {label}'
      deps = [d if d.startswith('//') else f'//{package}{d}' for d in deps]
      targets[label] = dict(kind=kind, package=package,
                            srcs=[f'{package}/{s}' for s in srcs],
                            deps=deps, **kwargs)
    return record

  namespace = {'load': lambda *a, **k: None, 'package': lambda **k: None,
               'exports_files': lambda *a, **k: None,
               'py_library': rule('py_library'),
               'py_binary': rule('py_binary'), 'py_test': rule('py_test')}
  with open(os.path.join(REPO, package, 'BUILD')) as f:
    exec(compile(f.read(), f'{package}/BUILD', 'exec'), namespace)  # pylint: disable=exec-used
  return targets


TARGETS = {}
for _package in PACKAGES:
  TARGETS.update(_read_build(_package))


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
      if target and target != path:
        found.add(target)
  return found


def _sources(pattern):
  return sorted(os.path.relpath(p, REPO)
                for p in glob.glob(os.path.join(REPO, pattern), recursive=True))


@pytest.mark.parametrize('path', _sources('pipeline/**/*.py'))
def test_every_module_has_a_library_in_its_package(path):
  owner = TARGETS[_owner(path)]
  assert owner['kind'] == 'py_library'
  assert owner['package'] == os.path.dirname(path)


@pytest.mark.parametrize('path', _sources('tests/test_*.py'))
def test_every_test_module_has_a_py_test_that_runs_it(path):
  target = TARGETS[_owner(path)]
  assert target['kind'] == 'py_test'
  assert target.get('size') in ('small', 'medium', 'large', 'enormous')
  # Bazel runs the file as a script: it must hand itself to pytest.
  with open(os.path.join(REPO, path)) as f:
    assert "if __name__ == '__main__':" in f.read()


@pytest.mark.parametrize('tool', TOOLS)
def test_every_tool_has_a_binary(tool):
  package, name = os.path.split(os.path.join('pipeline', tool))
  binary = TARGETS.get(f'//{package}:{name}')
  assert binary and binary['kind'] == 'py_binary'
  assert binary['main'] == f'{name}.py'
  assert _owner(f'{package}/{name}.py') in binary['deps']


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
        assert owner in target['deps'], (
            f'{name} imports {imported} but does not depend on {owner}')
  for dep in target['deps']:
    if dep.split(':')[0][2:] in PACKAGES:
      assert dep in TARGETS, f'{name}: unknown dep {dep}'


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
