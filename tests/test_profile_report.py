"""Tests of pipeline.perf.profile_report: op names to parts, self time of nested
events, the wall-time split, and the command on a real traced run."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.perf import profile_report

from conftest import REPO

TINY = ['--flagfile=configs/smoke.flags', '--precision=float32',
        '--conv_filters=8',
        '--primary_channels=4', '--class_dim=4', '--decoder_units=16,32',
        '--synthetic_shape=20,20,1', '--synthetic_size=64,32',
        '--batch_size=8', '--eval_batch_size=16', '--steps_per_loop=2',
        '--log_every=2', '--train_steps=8', '--eval_every=8',
        '--checkpoint_every=8', '--strategy=one_device', '--export_dir=',
        # The fixed formulations (XLA class capsules under --jit_compile):
        # the probe may pick plain TF ops at these tiny shapes on one CPU
        # and XLA on another, and the report's XLA attribution is tested.
        '--jit_compile', '--autotune=off']


@pytest.mark.parametrize('name,expected', [
    ('while/body/_1/while/caps_net/primary_capsules/conv/BiasAdd',
     ('primary_capsules', 'forward')),
    ('while/body/_1/gradient_tape/while/caps_net/conv1/Conv2D/'
     'Conv2DBackpropFilter', ('conv1', 'backward')),
    ('while/body/_1/while/Adam/update_0_2/Square', ('optimizer', 'update')),
    ('Adam_1/AssignAddVariableOp', ('optimizer', 'update')),
    ('while/body/_1/while/IsFinite_4', ('step', 'forward')),
    ('gradient_tape/Tile_2', ('step', 'backward')),
    ('caps_net/Cast', ('step', 'forward')),
    ('baseline_cnn/dense_1/MatMul', ('dense_1', 'forward')),
])
def test_op_names_map_to_parts_and_passes(name, expected):
  assert profile_report.classify_op(name) == expected


@pytest.mark.parametrize('module,expected', [
    ('a_forward__capsules_1547__.9', ('forward', 'capsules')),
    ('a_inference___backward__capsules_1181_1548__.6',
     ('backward', 'capsules')),
    ('a_inference__capsules_812__.3', ('forward', 'capsules')),
])
def test_xla_module_names(module, expected):
  assert profile_report._xla_function(module) == expected


def _event(ts, dur, tid=1, **args):
  return {'ts': ts, 'dur': dur, 'pid': 1, 'tid': tid, 'args': args}


def test_nested_events_keep_only_their_own_time():
  outer, inner, wait = _event(0, 100), _event(20, 30), _event(60, 20)
  segments = profile_report._segments(
      [(outer, 'outer'), (inner, 'inner'), (wait, None)])
  own = {}
  for start, end, label in segments:
    own[label] = own.get(label, 0) + end - start
  # outer: 0-20, 50-60, 80-100; a None (waiting) event is nobody's time.
  assert own == {'outer': 50, 'inner': 30}


def test_wall_time_is_split_among_what_runs_at_once():
  segments = [(0, 100, 'a'), (50, 150, 'b'), (200, 250, 'c')]
  weight, busy = profile_report._share_wall_time(segments, 0, 300)
  assert weight == pytest.approx({'a': 75, 'b': 75, 'c': 50})
  assert busy == pytest.approx(200)
  assert sum(weight.values()) == pytest.approx(busy)
  # Clipped to the window.
  weight, busy = profile_report._share_wall_time(segments, 120, 220)
  assert weight == pytest.approx({'b': 30, 'c': 20})


def test_xla_code_belongs_to_the_launch_on_its_own_thread():
  # The class capsules' compiled function launched on thread 1; the input
  # pipeline's iterator launch on thread 2 is open at the same time.
  def launch(ts, dur, tid, name, kernel):
    return dict(_event(ts, dur, tid, name=name, kernel_type=kernel),
                name='ExecutorState::ProcessAsync::Start')
  iterator = launch(0, 100, 2, 'IteratorGetNext', 'IteratorGetNext')
  forward = launch(10, 50, 1, 'caps_net/class_capsules/capsules', 'XlaLaunch')
  fusion = dict(_event(20, 10, 1, hlo_module='a_forward__capsules_12__.3'),
                name='fusion.1')
  backward_fusion = dict(
      _event(70, 10, 2, hlo_module='a_inference___backward__capsules_9_12__.1'),
      name='fusion.2')
  labels = {e['name'] + str(e['tid']): label for e, label in
            profile_report._labelled(
                [iterator, forward, fusion, backward_fusion], {})}
  assert labels['fusion.11'] == ('class_capsules', 'forward', 'XLA fusion.1')
  # The backward takes its part from the forward's launch, on any thread.
  assert labels['fusion.22'] == ('class_capsules', 'backward',
                                 'XLA fusion.2')
  assert labels['ExecutorState::ProcessAsync::Start2'][0] == 'input pipeline'


def test_xla_work_on_the_thread_pool_counts_towards_its_launch():
  launch = dict(_event(0, 100, 1, name='caps_net/primary_capsules/conv',
                       kernel_type='XlaLaunch'),
                name='ExecutorState::ProcessAsync::Start')
  thunk = dict(_event(5, 2, 3, hlo_module='a_inference__compiled_conv_7__.1'),
               name='Conv2D.1')
  worker = dict(_event(10, 80, 3), name='ThreadpoolListener::Region')
  outside = dict(_event(200, 50, 3), name='ThreadpoolListener::Region')
  threads = {(1, 3): 'tf_numa_-1_Eigen/123'}
  labelled = profile_report._labelled([launch, thunk, worker, outside],
                                      threads)
  labels = [(e['ts'], label) for e, label in labelled]
  assert (5, ('primary_capsules', 'forward', 'XLA Conv2D.1')) in labels
  assert (10, ('primary_capsules', 'forward', 'XLA (thread pool)')) in labels
  # A worker's region outside any XLA launch is no part's (TF kernels count
  # their time on their own op's event).
  assert not any(ts == 200 for ts, _ in labels)


def test_thread_pool_regions_go_to_an_xla_launch_not_any_open_one():
  def launch(ts, dur, tid, name, kernel='XlaLaunch'):
    return dict(_event(ts, dur, tid, name=name, kernel_type=kernel),
                name='ExecutorState::ProcessAsync::Start')
  # An async kernel that runs no XLA opens first (a long one, on thread 2),
  # then the compiled convolution's launch on thread 1: the workers' region
  # during both is the convolution's.
  other = launch(0, 1000, 2, 'caps_net/decoder/some_async_op', 'SomeAsyncOp')
  conv = launch(100, 100, 1, 'caps_net/primary_capsules/conv')
  thunk = dict(_event(110, 2, 1,
                      hlo_module='a_inference__compiled_conv_7__.1'),
               name='Conv2D.1')
  # Many short launches long before: the search still finds the open one.
  early = [launch(t, 5, 1, 'caps_net/class_capsules/capsules',
                  'SomeAsyncOp') for t in range(-900, -100, 10)]
  worker = dict(_event(120, 50, 3), name='ThreadpoolListener::Region')
  late = dict(_event(500, 50, 3), name='ThreadpoolListener::Region')
  threads = {(1, 3): 'tf_numa_-1_Eigen/123'}
  labelled = profile_report._labelled(
      early + [other, conv, thunk, worker, late], threads)
  labels = [(e['ts'], label) for e, label in labelled]
  assert (120, ('primary_capsules', 'forward', 'XLA (thread pool)')) in labels
  # At 500 only the non-XLA launch is open: the region is nobody's.
  assert not any(ts == 500 for ts, _ in labels)


def test_missing_trace_and_record_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='--profile_steps'):
    profile_report.latest_profile(str(tmp_path))
  trace = tmp_path / 'train' / 'plugins' / 'profile' / '2026_01_01_00_00_00'
  trace.mkdir(parents=True)
  (trace / 'host.xplane.pb').write_bytes(b'')
  assert profile_report.latest_profile(str(tmp_path)) == str(trace)
  # A directory the profiler wrote into itself (pipeline.benchmark's).
  own = tmp_path / 'serving_b1' / 'plugins' / 'profile' / '2026_01_01_00_00_01'
  own.mkdir(parents=True)
  (own / 'host.xplane.pb').write_bytes(b'')
  assert profile_report.latest_profile(str(tmp_path / 'serving_b1')) == str(
      own)
  with pytest.raises(ValueError, match='pass --steps=N'):
    profile_report.report(str(trace))


def test_headings_say_steps_or_calls():
  rep = {'model': 'capsnet', 'precision': 'float32', 'first_step': 5,
         'last_step': 6, 'step_ms': 12.3, 'parts': [], 'top_ops': []}
  assert profile_report.markdown(rep).startswith(
      'capsnet, float32, steps 5-6: 12 ms a step')
  rep.update(what='serving_b1', batch_size=1)
  assert profile_report.markdown(rep).startswith(
      'capsnet, float32, serving_b1, batch 1: 12.3 ms a call')
  rep.update(what='train', batch_size=100)
  assert ', train, batch 100: 12.3 ms a step' in profile_report.markdown(rep)


@pytest.fixture(scope='module')
def traced_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('profiled') / 'run'
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.train', *TINY,
       f'--model_dir={model_dir}', '--profile_steps=5,6'], cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return model_dir


def test_the_controller_records_the_traced_steps(traced_run):
  trace = profile_report.latest_profile(str(traced_run))
  record = profile_report.read_steps(trace)
  assert record == {'first_step': 5, 'last_step': 6, 'batch_size': 8,
                    'model': 'capsnet', 'precision': 'float32'}


def test_report_splits_the_step_among_the_model_parts(traced_run):
  rep = profile_report.report(profile_report.latest_profile(str(traced_run)))
  assert rep['steps'] == 2 and rep['step_ms'] > 0
  parts = {(r['part'], r['pass']): r['ms_per_step'] for r in rep['parts']}
  for key in [('primary_capsules', 'forward'), ('primary_capsules',
                                                'backward'),
              ('conv1', 'forward'),
              ('class_capsules', 'forward'), ('class_capsules', 'backward'),
              ('optimizer', 'update')]:
    assert parts.get(key, 0) > 0, (key, sorted(parts))
  # The XLA-compiled backward belongs to the layer, not to a bare function.
  assert not any(part.startswith('XLA ') for part, _ in parts)
  assert any(r['op'].startswith('XLA ') and r['part'] == 'class_capsules'
             for r in profile_report.report(
                 profile_report.latest_profile(str(traced_run)),
                 top=1000)['top_ops'])
  # The rows, idle included, are the step's wall time.
  assert sum(parts.values()) == pytest.approx(rep['step_ms'], rel=1e-6)
  assert sum(r['percent'] for r in rep['parts']) == pytest.approx(100.0)


def test_the_command_prints_tables_and_writes_json(traced_run, tmp_path):
  out = tmp_path / 'profile.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.perf.profile_report',
       f'--model_dir={traced_run}', '--top=5', f'--json={out}'], cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'capsnet, float32, steps 5-6:' in proc.stdout
  assert '| primary_capsules | backward |' in proc.stdout
  saved = json.loads(out.read_text())
  assert len(saved['top_ops']) == 5 and saved['batch_size'] == 8
  proc = subprocess.run(
      [sys.executable, '-m', 'pipeline.perf.profile_report',
       f'--model_dir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), timeout=300)
  assert proc.returncode != 0
  assert 'no profiler trace under' in proc.stderr
  assert 'Traceback' not in proc.stderr


if __name__ == '__main__':
  import conftest  # pylint: disable=g-import-not-at-top
  conftest.main(__file__)
