"""End-to-end runs of the training loop on real envpool environments, resume, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dreamerjax.run import common, configs, logger, train
from tests.conftest import ROOT


def debug_config(suite='classic', task='CartPole-v1', **run):
  config = configs.experiment(f'task={task},debug', _suite(suite))
  configs.update(config, {'run': run})
  return config


def _suite(name):
  return configs.load_file(os.path.join(ROOT, 'experiments', f'{name}.py')).SUITE


def train_script(workdir, config_arg, *overrides, timeout=600):
  command = [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'), f'--config={config_arg}',
             f'--workdir={workdir}', *overrides]
  result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stdout + result.stderr


@pytest.mark.parametrize('suite,task', [
    ('classic', 'CartPole-v1'), ('atari100k', 'Pong-v5'), ('dmc_proprio', 'CartpoleBalance-v1')])
def test_train_script_end_to_end(tmp_path, suite, task):
  workdir = tmp_path / 'run'
  output = train_script(workdir, f'experiments/{suite}.py:task={task},debug',
                        '--config.run.steps=240', '--config.run.eval_every=200',
                        # Short episodes so the evaluation (one whole episode per env) is quick.
                        '--config.env.max_episode_steps=60')
  assert 'updates/s' in output and 'ETA' in output  # the progress line
  rows = logger.read_metrics(str(workdir / 'metrics.jsonl'))
  assert max(row['step'] for row in rows) == 240
  assert any('wm/loss' in row for row in rows)
  assert any('eval/episode/return' in row for row in rows)
  # Each evaluation also writes the open-loop prediction of a replayed batch (metrics + video).
  assert any(row.get('openloop/reward_mse_h1', -1) >= 0 for row in rows)
  assert (workdir / 'videos' / 'openloop_200.gif').exists()
  assert (workdir / 'plots' / 'episode_return.png').exists()
  assert json.loads((workdir / 'config.json').read_text())['task'] == task
  assert (workdir / 'checkpoints' / '240').is_dir()


def test_resume_continues_the_same_run(tmp_path):
  workdir = str(tmp_path / 'run')
  first = train.run(debug_config(steps=200), workdir)
  assert first['env_step'] == 200 and first['updates'] > 0
  # Raising the budget extends the run: it restores the step, the replay and the counters.
  second = train.run(debug_config(steps=320), workdir)
  assert second['env_step'] == 320
  assert second['updates'] > first['updates']
  steps = [row['step'] for row in logger.read_metrics(workdir) if 'run/replay_size' in row]
  replay_sizes = [row['run/replay_size'] for row in logger.read_metrics(workdir)
                  if 'run/replay_size' in row]
  assert steps == sorted(steps) and steps[-1] == 320
  # The replay after resuming holds what was saved plus what came since (capacity 4000), plus
  # the reset observation each env stores when a run (or a resumed run) starts.
  envs = debug_config().run.envs
  assert replay_sizes[-1] == 320 + 2 * envs
  # Same budget again: nothing left to do, the run ends at once at the same step.
  third = train.run(debug_config(steps=320), workdir)
  assert third['env_step'] == 320 and third['updates'] == second['updates']


def test_replay_context_stores_the_policy_state_next_to_each_step(tmp_path):
  """With `model.replay_context`, each step in the replay holds the latent state the policy
  entered it with (the fresh state at the first step), and the train program reads it."""
  from dreamerjax.run import lock, online, parallel
  config = debug_config(prefill=0, train_ratio=1e-3)  # acting only: no updates on their own
  config.model.replay_context = True
  config, mesh = common.setup(config)
  workdir = str(tmp_path / 'run')
  loop = online.OnlineLoop(config, workdir, parallel.Layout(mesh, 1))
  try:
    carries = [jax.device_get(loop.carry['latent'])]
    for _ in range(3):
      loop._act()
      carries.append(jax.device_get(loop.carry['latent']))
    data = jax.device_get(loop.replay_state.data)
    assert set(carries[0]) == {'deter', 'stoch'} and not carries[0]['deter'].any()
    assert carries[-1]['deter'].any()
    for step, carry in enumerate(carries):
      for name, value in carry.items():
        np.testing.assert_array_equal(data[f'context_{name}'][0, :, step], value)
    _, metrics = loop.programs.train(loop.state, loop.replay_state)
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  finally:
    loop.abandon()
    lock.release(workdir)


def test_debug_run_writes_where_it_runs(tmp_path):
  workdir = tmp_path / 'run'
  train.run(debug_config(steps=40, eval_every=0), str(workdir))
  placement = json.loads((workdir / 'run.json').read_text())
  assert placement == {'platform': jax.default_backend(), 'device_count': jax.device_count(),
                       'mesh': f'data={jax.device_count()}', 'process_index': 0,
                       'process_count': 1, 'num_seeds': 1}


def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  workdir = tmp_path / 'run'
  train.run(debug_config(steps=120, save_every_minutes=0.0), str(workdir))
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  latest = workdir / 'checkpoints' / str(steps[-1])
  for path in latest.rglob('*'):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b'\0' * path.stat().st_size)
  summary = train.run(debug_config(steps=160), str(workdir))
  assert summary['env_step'] == 160
  assert any('is damaged' in r.getMessage() for r in caplog.records)


@pytest.mark.reliability
def test_sigterm_saves_a_checkpoint(tmp_path, figure):
  figure('signals during a save leaving a restorable checkpoint')
  workdir = tmp_path / 'run'
  command = [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'),
             '--config=experiments/classic.py:task=CartPole-v1,debug', f'--workdir={workdir}',
             '--config.run.steps=1000000', '--config.run.save_every_minutes=1000']
  process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=ROOT)
  deadline = time.time() + 300
  metrics = workdir / 'metrics.jsonl'
  while time.time() < deadline and not (metrics.exists() and 'wm/loss' in metrics.read_text()):
    time.sleep(1)
  process.send_signal(signal.SIGTERM)
  seen = []
  for line in process.stdout:  # a second signal while the last checkpoint is written
    seen.append(line)
    if 'Got SIGTERM' in line:
      process.send_signal(signal.SIGINT)
      break
  output, _ = process.communicate(timeout=120)
  output = ''.join(seen) + output
  assert process.returncode == 0, output[-3000:]
  assert 'Stopped by SIGTERM' in output and 'Got SIGINT again' in output
  saved = [p for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and int(saved[0].name) > 0
  assert common.restore(str(workdir))[0] == int(saved[0].name)
  assert not (workdir / 'run.lock').exists()


@pytest.mark.parametrize('change,message', [
    (dict(task='CartPol-v1'), 'CartPole-v1'),
    (dict(variant='dreamerv9'), 'unknown variant'),
    (dict(size='13m'), 'unknown size preset'),
    (dict(run=dict(train_ratio=0.0)), 'train_ratio must be > 0'),
    (dict(run=dict(replay_capacity=10)), 'replay_capacity'),
    (dict(model=dict(latent='beta')), 'latent must be'),
    (dict(parallel=dict(param_rules=(('kernel', ('model', None)),))), 'names mesh axes'),
    (dict(parallel=dict(param_rules=(('kernel', ('data', None, None, None)),))),
     'more entries than'),
    (dict(parallel=dict(param_rules=(('kernel', 'data'),))), 'must be a tuple'),
    (dict(num_seeds=0), 'num_seeds must be >= 1'),
])
def test_bad_input_is_rejected_before_compiling(tmp_path, change, message):
  config = debug_config()
  configs.update(config, change)
  start = time.time()
  with pytest.raises(ValueError, match=message):
    train.run(config, str(tmp_path / 'run'))
  assert time.time() - start < 30
  assert not (tmp_path / 'run').exists()  # nothing written


def test_unknown_experiment_option():
  with pytest.raises(ValueError, match='unknown experiment option'):
    configs.experiment('taks=CartPole-v1', {})


def test_incompatible_workdir_needs_force(tmp_path):
  workdir = str(tmp_path / 'run')
  train.run(debug_config(steps=100), workdir)
  changed = debug_config(steps=100)
  changed.run.batch_length = 8
  changed.agent.horizon = 3
  with pytest.raises(ValueError, match=r'run.batch_length: saved 16, now 8') as error:
    train.run(changed, workdir)
  assert 'agent.horizon' in str(error.value) and '--config.run.force=True' in str(error.value)
  changed.run.force = True
  assert train.run(changed, workdir)['env_step'] == 100


def test_a_run_saved_before_a_key_existed_still_resumes(tmp_path):
  # Keys added later (here `model.state` and `model.prior_layers`, which resolve fills in from
  # the size and arch) count as the values they resolve to for the saved run.
  config = configs.resolve(debug_config(steps=100))
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['model']['state'], saved['model']['prior_layers']
  path = tmp_path / 'config.json'
  path.write_text(json.dumps(saved))
  assert common._config_differences(config, str(path)) == []
  config.model.prior_layers = 2
  assert common._config_differences(config, str(path)) == ['model.prior_layers: saved 1, now 2']


def test_a_run_saved_before_flat_moments_resumes_with_them_per_leaf(tmp_path):
  # Before `optim.flat` existed the moments were kept per leaf, so such a run's checkpoints
  # restore only with --config.optim.flat=False, and the config check names that key.
  config = configs.resolve(debug_config(steps=100))
  saved = json.loads(json.dumps(config.to_dict()))
  del saved['optim']['flat']
  path = tmp_path / 'config.json'
  path.write_text(json.dumps(saved))
  assert common._config_differences(config, str(path)) == ['optim.flat: saved False, now True']
  config.optim.flat = False
  assert common._config_differences(config, str(path)) == []


def test_batch_not_divisible_by_devices(run_with_devices):
  output = run_with_devices('''
      from dreamerjax.run import configs, train
      config = configs.experiment('task=CartPole-v1,debug', {})
      config.run.batch_size = 6
      try:
        train.run(config, '/tmp/never-created-dreamerjax')
      except ValueError as error:
        print('ERROR', error)
      ''', device_count=4)
  assert 'batch_size=6 is not divisible by the 4 devices' in output
