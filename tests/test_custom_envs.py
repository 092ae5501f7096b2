"""Environments users bring: gymnasium envs (`gym:`) and pure-JAX envs (`jax:`), with envs this file
defines, through `envs.make_env` and one tiny training run."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnasium import spaces

from dreamerjax.data import envs, jax_envs, vector_env
from dreamerjax.run import configs, train

HERE = __name__  # this module, importable by name while the tests run
STEP_KEYS = ('reward', 'is_first', 'is_last', 'is_terminal')
GOAL, LIMIT = 3, 6  # the walker terminates at position GOAL and truncates itself after LIMIT steps


class Walker(gymnasium.Env):
  """Walks on a line: action -1, 0 or +1 (Discrete(3, start=-1)); reward = the step taken;
  terminates at position GOAL; truncates itself after LIMIT steps. Observes its position and the
  step count modulo 3 (one-hot), the latter first in the vector (sorted keys)."""

  observation_space = spaces.Dict({'position': spaces.Box(-10, 10, (1,), np.float32),
                                   'phase': spaces.Discrete(3)})
  action_space = spaces.Discrete(3, start=-1)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    self.position = self._start()
    self.time = 0
    return self._obs(), {}

  def _start(self):
    return float(self.np_random.integers(-2, 0))  # -2 or -1, from the seed

  def step(self, action):
    self.position += int(action)
    self.time += 1
    return self._obs(), float(action), self.position >= GOAL, self.time >= LIMIT, {}

  def _obs(self):
    return {'position': np.array([self.position], np.float32), 'phase': self.time % 3}


class Painter(gymnasium.Env):
  """16 x 16 RGB frames of one colour; a Box action in [0, 2]^2 whose sum is the reward."""

  observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
  action_space = spaces.Box(0.0, 2.0, (2,), np.float32)

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    return np.full((16, 16, 3), 100, np.uint8), {}

  def step(self, action):
    self.last_action = action
    return np.full((16, 16, 3), 200, np.uint8), float(np.sum(action)), False, False, {}


class FixedWalker(Walker):
  def _start(self):
    return -2.0


def make_walker():
  return Walker()


def broken_factory():
  raise RuntimeError('no licence for this simulator')


class TextWorld(gymnasium.Env):
  observation_space = spaces.Text(5)
  action_space = spaces.Discrete(2)


class KeyBoard(gymnasium.Env):
  observation_space = spaces.Box(0, 1, (2,))
  action_space = spaces.MultiDiscrete([2, 2])


@struct.dataclass
class WalkerState:
  position: jax.Array
  time: jax.Array


class JaxWalker:
  """`Walker` as a pure-JAX env (actions 0, 1, 2 mean -1, 0, +1; starts at -2 or -1)."""

  obs_space = {'vector': ((4,), np.float32)}
  act_space = vector_env.discrete_actions(3)

  def reset(self, key):
    state = WalkerState(self._start(key), jnp.int32(0))
    return state, self._obs(state)

  def _start(self, key):
    return jax.random.randint(key, (), -2, 0).astype(jnp.float32)

  def step(self, key, state, action):
    state = WalkerState(state.position + action - 1, state.time + 1)
    return (state, self._obs(state), (action - 1).astype(jnp.float32), state.position >= GOAL,
            state.time >= LIMIT)

  def truth(self, state):
    return {'position': state.position}

  def _obs(self, state):
    return jnp.concatenate([jax.nn.one_hot(state.time % 3, 3), state.position[None]])


class FixedJaxWalker(JaxWalker):
  def _start(self, key):
    return jnp.float32(-2.0)


class WrongShapes(JaxWalker):
  obs_space = {'vector': ((5,), np.float32)}


def _check_step(out, env):
  assert set(out) == set(env.obs_space) | set(STEP_KEYS)
  for key, (shape, dtype) in env.obs_space.items():
    assert out[key].shape == (env.num_envs, *shape) and out[key].dtype == dtype, key
  assert out['reward'].dtype == np.float32
  assert all(out[key].dtype == bool for key in STEP_KEYS[1:])


def _walk(env, actions):
  """Step dicts of `actions` (one per step, the same for every env), after a reset."""
  outs = [env.reset()]
  for action in actions:
    outs.append(env.step(np.full(env.num_envs, action, np.int32)))
    _check_step(outs[-1], env)
  return outs


@pytest.mark.parametrize('task', [f'gym:{HERE}:Walker', f'gym:{HERE}:make_walker',
                                  f'jax:{HERE}:JaxWalker'])
def test_termination_truncation_and_autoreset(task):
  env = envs.make_env(task, 2, seed=0)
  assert env.obs_space == {'vector': ((4,), np.dtype(np.float32))}
  assert env.act_space.discrete and env.act_space.num_actions == 3
  # Walking right (+1) from -2 or -1 reaches GOAL = 3 after 5 or 4 steps: terminal. The next step
  # is the reset step: is_first, reward 0, the action ignored, phase 0 again.
  outs = _walk(env, [2] * 7)
  start = outs[0]['vector'][:, 3]
  assert set(start) <= {-2.0, -1.0}
  for i in range(2):
    steps = int(GOAL - start[i])
    last = outs[steps]
    assert last['is_last'][i] and last['is_terminal'][i]
    assert [o['reward'][i] for o in outs[1:steps + 1]] == [1.0] * steps
    restart = outs[steps + 1]
    assert restart['is_first'][i] and restart['reward'][i] == 0 and not restart['is_last'][i]
    np.testing.assert_array_equal(restart['vector'][i, :3], [1, 0, 0])
    assert not any(o['is_last'][i] for o in outs[1:steps])
  # Standing still (action 0): the env's own limit truncates after LIMIT steps, not terminal.
  outs = _walk(env, [1] * (LIMIT + 1))
  assert outs[LIMIT]['is_last'].all() and not outs[LIMIT]['is_terminal'].any()
  assert outs[LIMIT + 1]['is_first'].all()
  assert [length for _, _, length in env.pop_finished_episodes()][-2:] == [LIMIT, LIMIT]
  env.close()


@pytest.mark.parametrize('task', [f'gym:{HERE}:Walker', f'jax:{HERE}:JaxWalker'])
def test_max_episode_steps_truncates(task):
  env = envs.make_env(task, 3, seed=1, max_episode_steps=2)
  outs = _walk(env, [1, 1, 1])
  assert [o['is_last'].all() for o in outs] == [False, False, True, False]
  assert not any(o['is_terminal'].any() for o in outs)
  assert outs[3]['is_first'].all()
  env.close()


def test_gym_and_jax_backends_agree_on_the_same_dynamics():
  gym_env = envs.make_env(f'gym:{HERE}:FixedWalker', 4, seed=3)
  jax_env = envs.make_env(f'jax:{HERE}:FixedJaxWalker', 4, seed=3)
  actions = np.random.default_rng(0).integers(0, 3, (30, 4)).astype(np.int32)
  gym_outs = [gym_env.reset()] + [gym_env.step(a) for a in actions]
  jax_outs = [jax_env.reset()] + [jax_env.step(a) for a in actions]
  for t, (g, j) in enumerate(zip(gym_outs, jax_outs, strict=True)):
    for key in ('vector', *STEP_KEYS):
      np.testing.assert_array_equal(g[key], j[key], err_msg=f'{key} at {t}')
  finished = gym_env.pop_finished_episodes()
  assert finished and finished == jax_env.pop_finished_episodes()
  # The ground truth of a JAX env (for state probes) is its `truth`; a gym env's, its vector obs.
  np.testing.assert_array_equal(jax_env.truth['position'][:, 0], jax_outs[-1]['vector'][:, 3])
  np.testing.assert_array_equal(gym_env.truth['state'], gym_outs[-1]['vector'])


def test_seeds_per_env_and_repeatability():
  for task in (f'gym:{HERE}:Walker', f'jax:{HERE}:JaxWalker'):
    a = envs.make_env(task, 8, seed=5).reset()['vector'][:, 3]
    b = envs.make_env(task, 8, seed=5).reset()['vector'][:, 3]
    np.testing.assert_array_equal(a, b)
    # env i of seed s is env i - 1 of seed s + 1 (as envpool, so processes can split the envs)
    shifted = envs.make_env(task, 7, seed=6).reset()['vector'][:, 3]
    np.testing.assert_array_equal(a[1:], shifted)
    assert len(set(a)) == 2, task  # the 8 envs do not all start alike


def test_image_resize_and_box_actions():
  env = envs.make_env(f'gym:{HERE}:Painter', 2, seed=0, size=(32, 32))
  assert env.obs_space == {'image': ((32, 32, 3), np.dtype(np.uint8))}
  assert not env.act_space.discrete and env.act_space.shape == (2,)
  out = env.reset()
  _check_step(out, env)
  assert (out['image'] == 100).all()
  out = env.step(np.array([[-1.0, 1.0], [0.0, 0.5]], np.float32))  # [-1, 1] -> [0, 2]
  _check_step(out, env)
  np.testing.assert_allclose(out['reward'], [2.0, 2.5])
  assert (out['image'] == 200).all()
  painter = env._env.envs[1]
  assert painter.last_action.dtype == np.float32 and painter.last_action.shape == (2,)


def test_gym_registered_id():
  env = envs.make_env('gym:CartPole-v1', 2, seed=0, max_episode_steps=3)
  outs = _walk(env, [0, 0, 0, 0])
  assert outs[3]['is_last'].all() and outs[4]['is_first'].all()


def test_vectorized_jax_env_is_pure_under_jit_and_scan():
  """The jitted, vmapped step runs in a scan on the device and gives what the host wrapper gives."""
  vectorized = jax_envs.Vectorized(JaxWalker(), num_envs=4)
  actions = jnp.asarray(np.random.default_rng(1).integers(0, 3, (12, 4)), jnp.int32)

  @jax.jit
  def rollout(keys):
    state, first = vectorized.reset(keys)
    _, outs = jax.lax.scan(lambda s, a: vectorized.step(s, a), state, actions)
    return first, outs

  first, outs = rollout(jax_envs.env_keys(9, 4))
  host = envs.make_env(f'jax:{HERE}:JaxWalker', 4, seed=9)
  np.testing.assert_array_equal(host.reset()['vector'], first['vector'])
  for t in range(len(actions)):
    out = host.step(np.asarray(actions[t]))
    for key in ('vector', *STEP_KEYS):
      np.testing.assert_array_equal(out[key], outs[key][t], err_msg=f'{key} at {t}')


@pytest.mark.parametrize('task, match', [
    ('gym:NoSuchEnv-v0', 'gym:NoSuchEnv-v0 cannot be made'),
    ('gym:CartPol-v1', 'did you mean gym:CartPole-v1'),
    ('gym:no_such_module_xyz:Env', 'cannot be imported'),
    (f'gym:{HERE}:broken_factory', 'no licence'),
    (f'gym:{HERE}:HERE', 'not an env class or factory'),
    (f'gym:{HERE}:JaxWalker', 'not a gymnasium.Env'),
    (f'gym:{HERE}:TextWorld', 'observation space dreamerjax cannot read'),
    (f'gym:{HERE}:KeyBoard', 'action space dreamerjax cannot act in'),
    ('jax:CueRecal-5', 'Did you mean jax:CueRecall-N'),
    (f'jax:{HERE}:Nothing', 'has no attribute'),
    (f'jax:{HERE}:Walker', 'is not a JAX env'),
    (f'jax:{HERE}:WrongShapes', 'not those of obs_space'),
    ('gym:CartPole-v1', 'sticky=False'),
])
def test_bad_tasks_fail_in_one_line(task, match):
  kwargs = {'sticky': True} if match == 'sticky=False' else {}
  with pytest.raises(ValueError, match=match) as info:
    envs.make_env(task, 2, seed=0, **kwargs)
  assert '\n' not in str(info.value)


def test_config_error_names_the_flag(tmp_path):
  config = configs.experiment('task=gym:NoSuchEnv-v0,debug', {})
  with pytest.raises(ValueError, match=r"--config.task='gym:NoSuchEnv-v0'"):
    train.run(config, str(tmp_path / 'run'))


def test_debug_training_run(tmp_path):
  """A JAX env this file defines, trained through the online loop (a gym env reaches the loop as
  the same VectorEnv)."""
  config = configs.experiment(f'task=jax:{HERE}:JaxWalker,debug', {})
  configs.update(config, {'run': dict(steps=64, prefill=32, eval_every=0, envs=2)})
  summary = train.run(config, str(tmp_path / 'run'))
  assert summary['env_step'] == 64 and summary['updates'] > 0
