"""PlaNet's planner, open-loop prediction, and both ancestors end to end on envpool CartPole."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dreamerjax.agents import planner
from dreamerjax.analysis import probes
from dreamerjax.models import openloop
from dreamerjax.run import configs, logger, validation
from tests.test_train import train_script
from tests.toy_models import ToyDynamics, ToyWorldModel, toy_batch

PARAMS = {'dynamics': {}}


def test_sequence_return_hand_computed():
  rewards, conts = jnp.ones((1, 3)), jnp.full((1, 3), 0.5)
  # 1 + 0.9 * 0.5 + 0.81 * 0.25: a reward counts if the episode continued through earlier steps.
  np.testing.assert_allclose(planner.sequence_return(rewards, conts, 0.9), [1.6525], rtol=1e-6)


def _plan_config(**values):
  return ml_collections.ConfigDict(dict(dict(horizon=6, candidates=200, elites=20, iterations=5,
                                             explore=0.0, discount=1.0), **values))


@pytest.mark.parametrize('discrete', [False, True])
def test_cem_beats_random_action_sequences(discrete):
  # Known dynamics x_t = x_{t-1} + u_t from x = 0 (u = a for continuous actions, -1/0/+1 for the
  # three discrete ones); reward -(x_t - 2.5)^2. Optimum over 10 steps: continuous -2.5 (x = 1, 2,
  # then 2.5), discrete -4.5 (x = 1, 2, then alternating 3 and 2).
  values = jnp.array([-1.0, 0.0, 1.0])

  def score(actions, key):
    del key
    steps = actions @ values if discrete else actions[..., 0]
    return jnp.sum(-jnp.square(jnp.cumsum(steps, 1) - 2.5), 1)

  config = _plan_config(horizon=10)
  size = 3 if discrete else 1
  plan = planner.cem(score, discrete, config.horizon, size, config, jax.random.key(0))
  if discrete:
    random = jax.nn.one_hot(jax.random.randint(jax.random.key(1), (1000, 10), 0, 3), 3)
  else:
    random = jax.random.uniform(jax.random.key(1), (1000, 10, 1), minval=-1, maxval=1)
  planned = float(score(plan[None], None)[0])
  assert planned >= float(jnp.max(score(random, None)))  # as good as the best of 1000
  assert planned > (-5.0 if discrete else -2.8)


def test_planner_acts_on_a_known_world_model():
  # The toy model's reward is x itself: from x = 0 the best first action is +1, from any state.
  config = _plan_config(candidates=64, elites=8, iterations=3)
  toy = planner.Planner(ToyWorldModel(), False, 1, config)
  latent = {'x': jnp.array([[0.0], [-5.0]])}
  action = toy.act(PARAMS, latent, jax.random.key(0), explore=False)
  assert action.shape == (2, 1) and np.all(np.asarray(action) > 0.8)
  exploring = planner.Planner(ToyWorldModel(), True, 2, _plan_config(explore=1.0, candidates=8,
                                                                     elites=2, iterations=1))
  actions = exploring.act(PARAMS, {'x': jnp.zeros((64, 1))}, jax.random.key(1), explore=True)
  assert set(np.asarray(actions).argmax(-1)) == {0, 1}  # epsilon = 1: uniformly random


def test_open_loop_error_is_zero_for_a_perfect_model_and_grows_otherwise(tmp_path):
  batch = jax.tree.map(jnp.asarray, toy_batch(length=12))
  result = openloop.open_loop(ToyWorldModel(), PARAMS, batch, 4, jax.random.key(0))
  assert result['error']['vector'].shape == (8,)
  for key in ('vector', 'reward', 'cont'):
    np.testing.assert_allclose(result['error'][key], 0.0, atol=1e-10)
  wrong = openloop.open_loop(ToyWorldModel(ToyDynamics(shift=1.5)), PARAMS, batch, 4,
                             jax.random.key(0))
  error = np.asarray(wrong['error']['vector'])
  assert error[0] > 0 and error[-1] > 3 * error[0]
  metrics = openloop.error_metrics(wrong)
  assert metrics['openloop/vector_mse_h5'] == pytest.approx(float(error[4]))
  with logger.Logger(str(tmp_path), 1) as log:
    path = openloop.write_video(log, 7, wrong)
  assert path.endswith('openloop_7.gif') and (tmp_path / 'videos' / 'openloop_7.gif').exists()
  assert openloop.video_frames(wrong).shape == (8, 96, 288, 3)


@pytest.mark.parametrize('change,message', [
    (dict(planner=dict(elites=2000)), 'elites=2000 must not exceed'),
    (dict(agent=dict(policy='evolution')), 'agent.policy must be one of'),
    (dict(worldmodels=dict(rnn='transformer')), 'worldmodels.rnn must be one of lstm, gru'),
])
def test_bad_planet_and_worldmodels_values_are_named(change, message):
  variant = 'worldmodels' if 'worldmodels' in change else 'planet'
  config = configs.resolve(configs.experiment(f'variant={variant},debug', {}))
  configs.update(config, change)
  with pytest.raises(ValueError, match=message):
    validation.validate(config)


def test_planet_trains_on_cartpole_end_to_end(tmp_path):
  workdir = tmp_path / 'planet'
  train_script(workdir, 'experiments/classic.py:variant=planet,debug', '--config.run.steps=160',
               '--config.run.eval_every=120', '--config.env.max_episode_steps=40')
  rows = logger.read_metrics(str(workdir))
  assert any('wm/loss' in row for row in rows) and not any('ac/actor_loss' in row for row in rows)
  assert any('eval/episode/return' in row for row in rows)
  assert json.loads((workdir / 'config.json').read_text())['agent']['policy'] == 'cem'
  check_probes(workdir)


def check_probes(workdir):
  """State probes run on the trained run (its own policy collects) and report every quantity."""
  result = probes.run(str(workdir), steps=30, num_envs=2, horizons=(1,), probe_steps=100)
  assert set(result['table']) == {'state', 'reward'}
  for scores in result['table'].values():
    assert set(scores) == {probes.FILTERED, 1} and all(np.isfinite(list(scores.values())))
  assert (workdir / 'probes' / 'probes.png').stat().st_size > 1000


@pytest.mark.parametrize('policy', ['cmaes', 'actor_critic'])
def test_worldmodels_trains_on_cartpole_end_to_end(tmp_path, policy):
  workdir = tmp_path / policy
  train_script(workdir, 'experiments/classic.py:variant=worldmodels,debug',
               f'--config.agent.policy={policy}', '--config.env.max_episode_steps=40')
  rows = logger.read_metrics(str(workdir))
  for key in ('vae/loss', 'rnn/nll', 'eval/episode/return'):
    assert any(key in row for row in rows), key
  assert any(('cmaes/fitness_mean' if policy == 'cmaes' else 'ac/actor_loss') in row
             for row in rows)
  assert (workdir / 'checkpoints').is_dir()
  check_probes(workdir)
