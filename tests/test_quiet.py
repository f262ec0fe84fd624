"""Tests of pipeline.quiet: TensorFlow's start-up chatter silenced, in the
tools and in the processes they start, unless the user asks for it."""

import os
import subprocess
import sys

from conftest import REPO

# A tool that starts another tool (an experiment its training runs): the
# child imports TensorFlow and says whether it was quiet.
CHILD = ('import pipeline.quiet as q; import tensorflow as tf; '
         'tf.config.list_physical_devices(); print("child quiet", q.QUIET)')
PARENT = ('import os, subprocess, sys; import pipeline.quiet as q; '
          'print("parent quiet", q.QUIET, flush=True); '
          'env = dict(os.environ, **dict(a.split("=") for a in sys.argv[1:])); '
          f'subprocess.run([sys.executable, "-c", {CHILD!r}], env=env)')
CHATTER = ('oneDNN', 'cuda drivers', 'cuInit', 'absl::InitializeLog')


def _parent(*child_env):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL',
                      'PIPELINE_QUIET_TF_CPP_MIN_LOG_LEVEL')}
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  return subprocess.run([sys.executable, '-c', PARENT, *child_env], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_a_quiet_tools_child_is_quiet_too():
  proc = _parent()
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'parent quiet True' in proc.stdout
  assert 'child quiet True' in proc.stdout, proc.stderr[-2000:]
  for chatter in CHATTER:
    assert chatter not in proc.stderr, proc.stderr[-2000:]


def test_the_users_own_level_for_a_child_wins():
  proc = _parent('TF_CPP_MIN_LOG_LEVEL=0')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'parent quiet True' in proc.stdout
  assert 'child quiet False' in proc.stdout
  assert 'oneDNN' in proc.stderr


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
