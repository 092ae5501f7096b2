"""Offline datasets and training: record -> load round trip, corrupt chunks, space checks, and
offline training end to end on CartPole that steps the env only to evaluate."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from dreamerjax.data import dataset, replay, vector_env
from dreamerjax.run import common, configs, evaluation, logger, offline, record, train
from tests.conftest import ROOT
from tests.test_planet import check_probes

N = 2
OBS = {'vector': ((3,), np.float32)}


def write_synthetic(directory, steps=25, chunk_steps=10, seed=0):
  """A dataset of random steps; returns it as `{field: [steps, N, ...]}`."""
  rng = np.random.default_rng(seed)
  data = {'vector': rng.normal(size=(steps, N, 3)).astype(np.float32),
          'action': np.eye(2, dtype=np.float32)[rng.integers(0, 2, (steps, N))],
          'reward': rng.normal(size=(steps, N)).astype(np.float32),
          'is_first': rng.random((steps, N)) < 0.1, 'is_last': rng.random((steps, N)) < 0.1,
          'is_terminal': np.zeros((steps, N), bool)}
  writer = dataset.Writer(str(directory), 'CartPole-v1', OBS, True, 2, N, chunk_steps)
  for t in range(steps):
    writer.add({k: v[t] for k, v in data.items()})
  writer.close()
  return data


def load_into_replay(directory, capacity=100):
  manifest = dataset.read_manifest(str(directory))
  state = replay.init(dataset.spec(manifest), N, capacity)
  state, loaded = dataset.load(str(directory), manifest, state, jax.jit(offline.add_many))
  return state, loaded


def test_record_load_round_trip_is_exact(tmp_path):
  data = write_synthetic(tmp_path / 'data')
  manifest = json.loads((tmp_path / 'data' / 'manifest.json').read_text())
  assert [c['steps'] for c in manifest['chunks']] == [10, 10, 5]
  assert manifest['steps'] == 25 and manifest['envs'] == N and manifest['task'] == 'CartPole-v1'
  state, loaded = load_into_replay(tmp_path / 'data')
  assert loaded == 25 and int(state.position) == 25
  for key, value in data.items():  # replay rows are envs: [S=1, N, C, ...]
    np.testing.assert_array_equal(np.asarray(state.data[key])[0, :, :25], np.swapaxes(value, 0, 1))
  # And back out of a replay, as `record.replay_of_run` writes it.
  steps = dataset.replay_steps(state)
  for key in ('vector', 'is_last'):
    np.testing.assert_array_equal(steps[key], data[key])


def test_corrupt_chunk_is_reported_and_skipped(tmp_path, caplog):
  data = write_synthetic(tmp_path / 'data')
  chunk = tmp_path / 'data' / 'chunk_00001.npz'
  chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
  with caplog.at_level(logging.WARNING):
    state, loaded = load_into_replay(tmp_path / 'data')
  assert loaded == 15
  assert any('chunk_00001.npz' in record.getMessage() for record in caplog.records)
  stored = np.asarray(state.data['vector'])[0]
  np.testing.assert_array_equal(stored[:, 10:15], np.swapaxes(data['vector'][20:25], 0, 1))
  assert np.asarray(state.data['is_first'])[0, :, 10].all()  # no sequence across the gap


def test_spaces_mismatch_names_what_to_change(tmp_path):
  write_synthetic(tmp_path / 'data')
  manifest = dataset.read_manifest(str(tmp_path / 'data'))
  with pytest.raises(ValueError, match='--config.task=CartPole-v1'):
    dataset.check_spaces(manifest, 'Acrobot-v1', OBS, True, 2)
  with pytest.raises(ValueError, match='observations are'):
    dataset.check_spaces(manifest, 'CartPole-v1', {'vector': ((4,), np.float32)}, True, 2)
  with pytest.raises(ValueError, match='actions are'):
    dataset.check_spaces(manifest, 'CartPole-v1', OBS, False, 2)
  dataset.check_spaces(manifest, 'CartPole-v1', OBS, True, 2)
  with pytest.raises(FileNotFoundError, match='scripts/record.py'):
    dataset.read_manifest(str(tmp_path))


def test_offline_training_steps_the_env_only_to_evaluate(tmp_path, monkeypatch):
  suite = configs.load_file(os.path.join(ROOT, 'experiments', 'classic.py')).SUITE
  config = configs.experiment('task=CartPole-v1,variant=dreamerv4,debug', suite)
  out = str(tmp_path / 'data')
  manifest = record.random_policy(configs.resolve(config), out, steps=240, envs=N,
                                  chunk_steps=40)
  assert manifest['steps'] == 121 and manifest['episodes'] > 0
  configs.update(config, {'run': dict(dataset=out, steps=12, log_every=6, eval_every=12,
                                      eval_episodes=1),
                          'env': dict(max_episode_steps=20)})
  evaluating, env_steps = [False], []
  real_evaluate, real_step = common.evaluate, vector_env.VectorEnv.step

  def evaluate(*args, **kwargs):
    evaluating[0] = True
    try:
      return real_evaluate(*args, **kwargs)
    finally:
      evaluating[0] = False

  def step(self, action):
    assert evaluating[0], 'offline training stepped the env outside an evaluation'
    env_steps.append(len(action))
    return real_step(self, action)

  monkeypatch.setattr(common, 'evaluate', evaluate)
  monkeypatch.setattr(vector_env.VectorEnv, 'step', step)
  workdir = str(tmp_path / 'run')
  summary = train.run(config, workdir)
  assert summary['updates'] == 12 and summary['dataset_steps'] == 121 * N
  assert 0 < sum(env_steps) <= 20  # one evaluation episode of at most 20 steps
  rows = logger.read_metrics(workdir)
  assert any('ac/bc_loss' in row for row in rows)
  assert [row['eval/episode/return'] for row in rows if 'eval/episode/return' in row]
  monkeypatch.setattr(vector_env.VectorEnv, 'step', real_step)
  check_probes(tmp_path / 'run')  # probes work on offline runs (checkpoint without replay)
  # Recording from that checkpoint: the policy mode, then with every action replaced at random.
  actions = {}
  for epsilon in (0.0, 1.0):
    manifest = record.checkpoint_policy(workdir, str(tmp_path / f'eps{epsilon}'), steps=80,
                                        envs=N, mode='eval', epsilon=epsilon)
    assert manifest['steps'] == 41 and manifest['source']['epsilon'] == epsilon
    steps = load_into_replay(tmp_path / f'eps{epsilon}')[0].data['action']
    actions[epsilon] = np.asarray(steps)
    assert np.isin(actions[epsilon], [0.0, 1.0]).all(), np.unique(actions[epsilon])
  assert not np.array_equal(actions[0.0], actions[1.0])
  with pytest.raises(ValueError, match='epsilon must be in'):
    record.checkpoint_policy(workdir, str(tmp_path / 'bad'), steps=8, epsilon=1.5)
  # Evaluating the checkpoint on more episodes than the run did: one return per eval env, the
  # same for the same seed, as the run's own evaluation gives for that seed.
  builds = []
  real_build = common.build
  monkeypatch.setattr(common, 'build', lambda *a: builds.append(a) or real_build(*a))
  row = evaluation.checkpoint_returns(workdir, episodes=3, seed=7)
  assert len(builds) == 1  # restoring and evaluating share one set of programs
  monkeypatch.setattr(common, 'build', real_build)
  assert row['env_step'] == summary['updates'] and np.shape(row['returns']) == (1, 3)
  assert np.isclose(row['mean'], np.mean(row['returns']))
  assert evaluation.checkpoint_returns(workdir, episodes=3, seed=7)['returns'] == row['returns']
  with pytest.raises(ValueError, match='episodes must be at least 1'):
    evaluation.checkpoint_returns(workdir, episodes=0, seed=7)
  with pytest.raises(FileNotFoundError, match='holds no run .config.json missing'):
    evaluation.checkpoint_returns(str(tmp_path / 'none'), episodes=1, seed=7)
  # A dataset recorded on another task is refused before anything is built.
  config.task = 'Acrobot-v1'
  with pytest.raises(ValueError, match='--config.task=CartPole-v1'):
    train.run(config, str(tmp_path / 'other'))
