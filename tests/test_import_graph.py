"""The package's import graph has no cycle, and capsule_ops stands alone."""

import ast
import glob
import os

from conftest import REPO, tools


def _module_name(path):
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _graph():
  modules = {_module_name(p): p for p in glob.glob(
      os.path.join(REPO, 'pipeline', '**', '*.py'), recursive=True)}
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        candidates = [f'{node.module}.{a.name}' for a in node.names] + [
            node.module]
      else:
        continue
      for candidate in candidates:
        if candidate in modules and candidate != name:
          edges.add(candidate)
          break
    graph[name] = edges
  return graph


def _cycle(graph):
  """A list of modules forming a cycle, or None."""
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, stack + [nxt])
        if found:
          return found
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_no_import_cycle():
  graph = _graph()
  assert 'pipeline.core.trainer' in graph and graph['pipeline.core.trainer']
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_the_cycle_finder_finds_one():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_capsule_ops_imports_nothing_from_the_package():
  assert _graph()['pipeline.models.capsule_ops'] == set()


def test_settings_import_nothing_from_the_package():
  """Configs at every layer (models, data, the run) declare their fields
  with pipeline.settings, so it must sit below all of them."""
  assert _graph()['pipeline.settings'] == set()


def test_library_code_never_reads_flags():
  tool_names = {t.replace('/', '.') for t in tools()} | {'flags'}
  for name, edges in _graph().items():
    if name.split('.', 1)[-1] in tool_names:
      continue
    path = os.path.join(REPO, *name.split('.')) + '.py'
    if not os.path.exists(path):
      continue
    with open(path) as f:
      text = f.read()
    assert 'from absl import flags' not in text, f'{name} reads flags'


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
