"""The README and the docs/ pages it links: short, and true to the tree.

Every relative link must lead to a file, every repository path in code
quotes must exist, and every `python -m pipeline.<tool>` command must name
a real tool and only flags that tool defines (read from its `--helpfull`
in a subprocess, so each tool's flags are its own). A page that moves, a
flag that is renamed or a file that is deleted breaks this test, not a
reader's copy-paste.
"""

import glob
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures

import pytest

# The checkout itself (under Bazel, through the runfiles' symlinks), whose
# tree the pages describe.
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
README = os.path.join(ROOT, 'README.md')
README_MAX_LINES = 250
# The pages the README hands its detail to (Architecture II).
DOC_PAGES = ('docs/runs.md', 'docs/models.md', 'docs/data.md',
             'docs/distribution.md', 'docs/serving.md', 'docs/benchmark.md',
             'docs/results.md', 'docs/mnist_best/README.md')
# Top-level folders whose files a page may name in code quotes.
REPO_DIRS = ('configs', 'docs', 'pipeline', 'tests', '.ci')
# Flags every absl tool takes without defining them.
ABSL_FLAGS = {'flagfile', 'helpfull', 'help', 'helpshort', 'helpxml'}


def pages():
  found = [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
  found += sorted(glob.glob(os.path.join(ROOT, 'docs', '*', 'README.md')))
  return found


def read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def relative(path):
  return os.path.relpath(path, ROOT)


def fenced_blocks(text):
  return re.findall(r'^```[a-z]*\n(.*?)^```', text, flags=re.M | re.S)


def without_fences(text):
  return re.sub(r'^```[a-z]*\n.*?^```', '', text, flags=re.M | re.S)


def code_spans(text):
  """Inline `code`, outside fenced blocks, whitespace made single spaces."""
  return [' '.join(s.split())
          for s in re.findall(r'`([^`]+)`', without_fences(text))]


def links(text):
  """Markdown link and image targets, outside fenced blocks."""
  return re.findall(r'\]\(([^)\s]+)\)', without_fences(text))


def commands(text):
  """Every `python -m pipeline.<tool> ...` a page shows, as argv lists."""
  sources = []
  for block in fenced_blocks(text):
    lines = block.replace('\\\n', ' ').split('\n')
    if any(re.match(r'\s*\$\s', line) for line in lines):
      # A console: the prompted lines are the commands, the rest output.
      lines = [line for line in lines if re.match(r'\s*\$\s', line)]
    sources += lines
  sources += code_spans(text)
  found = []
  for line in sources:
    line = re.sub(r'^\s*\$\s+', '', line)
    for match in re.finditer(r'python -m (pipeline\.[\w.]+)(.*)', line):
      rest = re.split(r'\s(?:&&|\||;|>|&)(?:\s|$)', match.group(2))[0]
      try:
        args = shlex.split(rest)
      except ValueError:  # an unbalanced quote of an inline span's prose
        args = rest.split()
      found.append([match.group(1)] + args)
  return found


def tool_flags(module):
  """The flag names `python -m <module>` accepts, from its --helpfull."""
  proc = subprocess.run(
      [sys.executable, '-m', module, '--helpfull'], cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
  names = set(ABSL_FLAGS)
  for prefix, name in re.findall(r'^\s+--(\[no\])?(\w+)[:=]',
                                 proc.stdout + proc.stderr, flags=re.M):
    names.add(name)
    if prefix:
      names.add('no' + name)
  assert len(names) > len(ABSL_FLAGS), (
      f'python -m {module} --helpfull listed no flags:\n'
      f'{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}')
  return names


def all_commands():
  return [(relative(p), argv) for p in pages() for argv in commands(read(p))]


def flagfile_commands():
  """The commands a shipped flagfile's header comments show: indented
  command lines (continued with a backslash) and commands in `quotes`."""
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.flags'))):
    comments = [line[1:] for line in read(path).split('\n')
                if line.startswith('#')]
    block, continued = [], False
    for line in comments:
      if continued or line.strip().startswith('python -m'):
        block.append(line)
      continued = bool(block) and line.endswith('\\')
    text = '```sh\n' + '\n'.join(block) + '\n```\n'
    prose = '\n'.join(line for line in comments if line not in block)
    found += [(relative(path), argv) for argv in commands(text + prose)]
  return found


@pytest.fixture(scope='module')
def flags_by_tool():
  tools = sorted({argv[0] for _, argv in all_commands() + flagfile_commands()})
  with futures.ThreadPoolExecutor(max_workers=4) as pool:
    return dict(zip(tools, pool.map(tool_flags, tools)))


def test_the_readme_is_short():
  lines = read(README).count('\n')
  assert lines <= README_MAX_LINES, (
      f'README.md has {lines} lines; move detail to a docs/ page and link it '
      f'(at most {README_MAX_LINES}).')


def test_the_readme_links_every_docs_page():
  targets = {os.path.normpath(os.path.join(ROOT, t.split('#')[0]))
             for t in links(read(README))}
  missing = [p for p in DOC_PAGES
             if os.path.join(ROOT, p) not in targets]
  assert not missing, f'README.md links none of {missing}'


def test_every_relative_link_leads_to_a_file():
  broken = []
  for page in pages():
    for target in links(read(page)):
      if re.match(r'[a-z]+:', target) or target.startswith('#'):
        continue
      path = os.path.join(os.path.dirname(page), target.split('#')[0])
      if not os.path.exists(path):
        broken.append(f'{relative(page)}: ({target})')
  assert not broken, 'links to nothing:\n' + '\n'.join(broken)


def repo_paths(span):
  """Repository paths named in a code span (placeholders left out)."""
  for word in span.split():
    word = word.strip('.,;:()"\'')
    word = word.split('=', 1)[-1]  # --flagfile=configs/x.flags
    if not word.startswith(tuple(d + '/' for d in REPO_DIRS)):
      continue
    if re.search(r'[<>$]|DIR|\.\.\.|…', word):
      continue
    yield word


def expand(path):
  """`a/{b,c}.json` as its alternatives (the pages use shell braces)."""
  match = re.search(r'\{([^}]*)\}', path)
  if not match:
    return [path]
  head, tail = path[:match.start()], path[match.end():]
  return [p for alt in match.group(1).split(',')
          for p in expand(head + alt + tail)]


def test_every_file_a_page_names_exists():
  missing = []
  for page in pages():
    text = read(page)
    spans = code_spans(text) + [
        line for block in fenced_blocks(text) for line in block.split('\n')
        if line.lstrip().startswith(('python ', '$ python', '--'))]
    for span in spans:
      for path in repo_paths(span):
        for alt in expand(path):
          if not glob.glob(os.path.join(ROOT, alt)):
            missing.append(f'{relative(page)}: {alt}')
  # Outputs a command on the page writes (a figures directory, a trace
  # report) are named as targets, not as files that must exist already.
  outputs = set()
  for _, argv in all_commands():
    for arg in argv[1:]:
      if re.match(r'--(figures|output|json|figures_dir|output_dir|trace_dir)'
                  r'=', arg):
        outputs.add(arg.split('=', 1)[1])
  missing = [m for m in missing if m.split(': ', 1)[1] not in outputs]
  assert not missing, 'named but not in the tree:\n' + '\n'.join(missing)


def test_the_pages_show_commands():
  tools = {argv[0] for _, argv in all_commands()}
  for tool in ('pipeline.train', 'pipeline.export', 'pipeline.evaluate',
               'pipeline.client', 'pipeline.benchmark'):
    assert tool in tools, f'no page shows python -m {tool}'


def test_every_command_names_a_tool_and_its_flags(flags_by_tool):
  wrong = []
  for page, argv in all_commands() + flagfile_commands():
    module, args = argv[0], argv[1:]
    known = flags_by_tool[module]
    for arg in args:
      if not arg.startswith('--'):
        continue
      name = arg[2:].split('=', 1)[0]
      if name not in known:
        wrong.append(f'{page}: python -m {module} ... {arg}: no such flag')
      if name == 'flagfile':
        value = arg.split('=', 1)[1]
        if not value.startswith('/') and not os.path.exists(
            os.path.join(ROOT, value)):
          wrong.append(f'{page}: --flagfile={value}: no such file')
  assert not wrong, '\n'.join(wrong)


def test_the_flagfile_headers_show_commands():
  # The parser reads them (a header that stops parsing is caught here).
  shown = {argv[0] for _, argv in flagfile_commands()}
  assert {'pipeline.evaluate', 'pipeline.research.experiment'} <= shown


def test_every_evaluate_command_names_what_it_scores():
  # Exactly one of a run (--model_dir) or a SavedModel (--saved_model):
  # --checkpoint alone, say, is refused by the command.
  wrong = []
  for page, argv in all_commands() + flagfile_commands():
    if argv[0] != 'pipeline.evaluate' or not any('=' in a for a in argv):
      continue  # (Prose naming a flag, `pipeline.evaluate --figures`.)
    named = [a.split('=', 1)[0] for a in argv[1:]
             if a.startswith(('--model_dir', '--saved_model'))]
    if len(named) != 1:
      wrong.append(f'{page}: python -m {" ".join(argv)}')
  assert not wrong, ('pipeline.evaluate needs exactly one of --model_dir or '
                     '--saved_model:\n' + '\n'.join(wrong))


def test_ci_runs_the_readme_test_command():
  blocks = [b.strip() for b in fenced_blocks(read(README))]
  tests = [b for b in blocks if 'pytest' in b]
  assert len(tests) == 1, f'README.md shows {len(tests)} test commands'
  command = tests[0].split('&&')[-1].strip()
  assert command.startswith('python -m pytest tests'), command
  with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as f:
    ci = [line.strip() for line in f]
  assert command in ci, f'.ci/run does not run the README\'s {command!r}'


def test_the_command_parser_reads_continued_and_prompted_lines():
  text = ('x\n```sh\n$ python -m pipeline.train --a=1 \\\n  --b=2 && echo\n'
          'Error: ... (pid 7: python -m pipeline.train --d=4) ...\n'
          '```\nand `python -m\npipeline.export --c=3`.\n')
  assert commands(text) == [['pipeline.train', '--a=1', '--b=2'],
                            ['pipeline.export', '--c=3']]


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
