"""The on-device loop: envs stepped inside jit match the host envs step for step, and a run with
`run.loop=device` trains, logs and resumes like one with the host loop."""

import os

import jax
import numpy as np
import pytest

from dreamerjax.data import device_envs, envs, vector_env
from dreamerjax.run import configs, device_loop, train, validation
from dreamerjax.run.logger import read_metrics
from tests.conftest import ROOT

FIELDS = ('reward', 'is_first', 'is_last', 'is_terminal')


def scanned_steps(env: device_envs.DeviceEnv, actions: np.ndarray) -> dict:
  """The step dicts of `actions` `[T, N, A]` run in one jitted scan."""
  def body(state, action):
    return env.step(state, action)
  _, steps = jax.jit(lambda state, a: jax.lax.scan(body, state, a))(env.state(), actions)
  return jax.tree.map(np.asarray, steps)


def host_steps(host: vector_env.VectorEnv, model_actions: np.ndarray, discrete: bool) -> dict:
  steps = [host.step(a.argmax(-1).astype(np.int32) if discrete else a) for a in model_actions]
  return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


@pytest.mark.parametrize('task,length', [('CartPole-v1', 300), ('Pendulum-v1', 210),
                                         ('jax:CueRecall-5', 40)])
def test_device_steps_equal_host_steps(task, length):
  # Two copies of the same envs (same seed): one stepped from the host, one inside jit.
  host, device_host = envs.make_env(task, 3, 7), envs.make_env(task, 3, 7)
  try:
    first = host.reset()
    device_first = device_host.reset()
    env = device_envs.DeviceEnv(device_host)
    for key in first:
      np.testing.assert_array_equal(first[key], device_first[key])
    rng = np.random.default_rng(0)
    size = host.act_space.num_actions
    if host.act_space.discrete:
      actions = np.eye(size, dtype=np.float32)[rng.integers(0, size, (length, 3))]
    else:
      actions = rng.uniform(-1.2, 1.2, (length, 3, size)).astype(np.float32)  # clipped
    want = host_steps(host, actions, host.act_space.discrete)
    got = scanned_steps(env, actions)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert want['is_last'].any() and want['is_first'][1:].any()  # episodes ended and restarted
  finally:
    host.close()
    device_host.close()


def test_device_env_refuses_what_it_cannot_step():
  with pytest.raises(ValueError, match='float64 actions.*run.loop=host'):
    device_envs.DeviceEnv(envs.make_env('ReacherEasy-v1', 2, 0))


def test_random_actions_cover_the_space():
  from dreamerjax.run.device_loop import random_actions
  one_hot = random_actions(jax.random.key(0), True, 1000, 3)
  assert one_hot.shape == (1000, 3) and set(np.asarray(one_hot.sum(-1))) == {1.0}
  assert np.asarray(one_hot.mean(0)).min() > 0.25
  values = np.asarray(random_actions(jax.random.key(0), False, 1000, 2))
  assert values.min() >= -1.0 and values.max() <= 1.0 and abs(values.mean()) < 0.1


def device_config(steps, loop='device', **run):
  suite = configs.load_file(os.path.join(ROOT, 'experiments', 'classic.py')).SUITE
  config = configs.experiment('task=CartPole-v1,debug', suite)
  configs.update(config, {'run': {'steps': steps, 'loop': loop, 'loop_steps': 16,
                                  'eval_every': 0, 'log_every': 64, **run}})
  # The device run also stores the acting state for replayed sequences (model.replay_context).
  config.model.replay_context = loop == 'device'
  return config


def test_device_loop_trains_logs_and_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  host = train.run(device_config(320, loop='host'), str(tmp_path / 'host'))
  programs = []
  make_chunk = device_loop.DeviceLoop._chunk

  def recorded_chunk(self):
    programs.append(make_chunk(self))
    return programs[-1]

  monkeypatch.setattr(device_loop.DeviceLoop, '_chunk', recorded_chunk)
  first = train.run(device_config(320), workdir)
  # Five chunks of 64 env steps, one compiled program: the loop values of the first call are
  # placed as the chunk returns them (a second compile cost as much as 2,000 CartPole steps).
  assert len(programs) == 5 and len(set(programs)) == 1 and programs[0]._cache_size() == 1
  # The same train ratio arithmetic: as many updates as the host loop makes in as many steps.
  assert first['env_step'] == host['env_step'] == 320
  assert first['updates'] == host['updates'] > 0
  rows = read_metrics(workdir)
  assert any('wm/loss' in row for row in rows)
  episodes = [row for row in rows if 'episode/return' in row]
  assert episodes and all(row['episode/length'] >= 1 for row in episodes)
  # Every step of an episode earns CartPole's reward of 1: returns equal lengths.
  assert all(row['episode/return'] == row['episode/length'] for row in episodes)
  # Resumed for one more chunk (16 steps of 4 envs) and a short last one (2 of 16 steps): one
  # compiled program runs both.
  programs.clear()
  second = train.run(device_config(392), workdir)
  assert second['env_step'] == 392 and second['updates'] > first['updates']
  assert len(programs) == 2 and len(set(programs)) == 1 and programs[0]._cache_size() == 1


def test_device_loop_needs_one_seed():
  config = device_config(100)
  config.num_seeds = 2
  with pytest.raises(configs.ConfigError, match='num_seeds must be 1 with --config.run.loop'):
    validation.validate(configs.resolve(config))


def test_loop_options_are_checked():
  for change in ({'loop': 'gpu'}, {'loop_steps': 0}):
    config = device_config(100, **change)
    with pytest.raises(configs.ConfigError):
      validation.validate(configs.resolve(config))
