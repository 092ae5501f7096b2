"""Pure-JAX environments, stepped for all envs in one jitted, vmapped function: the `jax:` prefix.

    jax:CueRecall-30                 an env of the memory suite (`memory.make`)
    jax:my_pkg.envs:MyEnv            an env class or a factory (no required arguments), or an env

An env (`JaxEnv`, gymnax style without params) is one environment as pure functions:

    reset(key) -> (state, obs)
    step(key, state, action) -> (state, obs, reward, terminated, truncated)

plus `obs_space` (`{'vector': ((D,), float32)}` and/or `{'image': ((H, W, C), uint8)}`, as
`vector_env.VectorEnv.obs_space`; `obs` is a dict of those keys, or a bare array for `vector`
only) and `act_space` (`vector_env.discrete_actions(n)`: `action` is an int32 scalar;
`vector_env.continuous_actions(d)`: float32 `[d]` in [-1, 1]). An optional
`truth(state) -> {name: array}` gives the ground truth that state probes read
(`VectorEnv.truth`).

`Vectorized` turns one env into `N` with autoreset inside the jitted function: `reset(keys)` and
`step(state, action)` are pure, return Dreamer step dicts (`envs` module doc) and run under
`jax.jit`, so a loop on the device can call them. As with envpool, an env whose episode ended
resets on the next step (its action is ignored; `is_first`, reward 0). `JaxVectorEnv` is the host
side, one jitted call per step for all envs, for the existing loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dreamerjax.data import memory, vector_env

OBS_KEYS = ('vector', 'image')


class JaxEnv(Protocol):
  """One environment as pure functions (see the module doc)."""

  obs_space: dict
  act_space: vector_env.ActionSpace

  def reset(self, key: jax.Array) -> tuple[Any, Any]: ...

  def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, Any, Any, Any, Any]:
    ...


@struct.dataclass
class VectorState:
  """The state of `N` envs; every leaf has a leading `[N]` axis."""

  env: Any             # the envs' own states
  key: jax.Array       # one key per env
  elapsed: jax.Array   # int32: agent steps since the episode's first step
  done: jax.Array      # bool: the last step ended an episode, so the next step resets


def env_keys(seed: int, num_envs: int) -> jax.Array:
  """Keys `[N]`; env `i` gets `key(seed + i)`, as envpool seeds env `i` (see `envgroup`)."""
  return jax.vmap(jax.random.key)(seed + jnp.arange(num_envs, dtype=jnp.int32))


@dataclasses.dataclass(frozen=True)
class Vectorized:
  """`num_envs` copies of `env` with autoreset; `max_episode_steps` truncates episodes."""

  env: Any
  num_envs: int
  max_episode_steps: int | None = None

  def reset(self, keys: jax.Array) -> tuple[VectorState, dict]:
    """Resets every env from `keys` `[N]`; all entries have `is_first`."""
    split = jax.vmap(jax.random.split)(keys)
    keys, reset_keys = split[:, 0], split[:, 1]
    env_state, obs = jax.vmap(self.env.reset)(reset_keys)
    n = self.num_envs
    out = {**self._obs(obs), 'reward': jnp.zeros(n, jnp.float32), 'is_first': jnp.ones(n, bool),
           'is_last': jnp.zeros(n, bool), 'is_terminal': jnp.zeros(n, bool)}
    return VectorState(env_state, keys, jnp.zeros(n, jnp.int32), jnp.zeros(n, bool)), out

  def step(self, state: VectorState, action: jax.Array) -> tuple[VectorState, dict]:
    """Steps every env with `action` `[N]` (int32) or `[N, d]`; a reset step where `done`."""
    space = self.env.act_space
    expected = (self.num_envs,) if space.discrete else (self.num_envs, *space.shape)
    if tuple(jnp.shape(action)) != expected:
      raise ValueError(f'expected actions of shape {expected}, got {jnp.shape(action)}')
    env_state, key, elapsed, done, out = jax.vmap(self._step_one)(
        state.env, state.key, state.elapsed, state.done, action)
    return VectorState(env_state, key, elapsed, done), out

  def truth(self, state: VectorState) -> dict:
    """The env's `truth` of every env as float32 `[N, D]` (empty if the env has none)."""
    if not hasattr(self.env, 'truth'):
      return {}
    truth = jax.vmap(self.env.truth)(state.env)
    return {k: jnp.asarray(v, jnp.float32).reshape(self.num_envs, -1) for k, v in truth.items()}

  def _step_one(self, env_state, key, elapsed, done, action):
    key, step_key, reset_key = jax.random.split(key, 3)
    stepped, obs, reward, terminated, truncated = self.env.step(step_key, env_state, action)
    fresh, fresh_obs = self.env.reset(reset_key)
    terminated = jnp.asarray(terminated, bool)
    truncated = jnp.asarray(truncated, bool)
    if self.max_episode_steps is not None:
      truncated = truncated | (elapsed + 1 >= self.max_episode_steps)
    is_last = ~done & (terminated | truncated)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)  # noqa: E731
    out = {**pick(self._obs(fresh_obs), self._obs(obs)),
           'reward': jnp.where(done, 0.0, jnp.asarray(reward, jnp.float32)),
           'is_first': done, 'is_last': is_last, 'is_terminal': ~done & terminated}
    elapsed = jnp.where(done, 0, elapsed + 1).astype(jnp.int32)
    return pick(fresh, stepped), key, elapsed, is_last, out

  def _obs(self, obs: Any) -> dict:
    obs = obs if isinstance(obs, dict) else {'vector': obs}
    return {k: jnp.asarray(obs[k], self.env.obs_space[k][1]) for k in self.env.obs_space}


class JaxVectorEnv(vector_env.VectorEnv):
  """A `VectorEnv` over `Vectorized`: one jitted call per reset or step for all envs, on the
  default device; the arrays come back as numpy. `vectorized` is there for on-device loops."""

  def __init__(self, env: Any, task: str, num_envs: int, seed: int,
               max_episode_steps: int | None = None):
    obs_space, act_space = check(env, task)
    self.vectorized = Vectorized(env, num_envs, max_episode_steps)
    native = ((None, None, None) if act_space.discrete else
              (np.asarray(act_space.low, np.float64), np.asarray(act_space.high, np.float64),
               np.float32))
    super().__init__(env, task, 'jax', num_envs, obs_space, act_space, dict, *native)
    self._keys = env_keys(seed, num_envs)
    self.success = getattr(env, 'success', None)
    self._state: VectorState | None = None
    try:
      self._programs = _cached_programs(self.vectorized)
    except TypeError:  # an unhashable env: compiled for this instance only
      self._programs = _programs(self.vectorized)

  def _reset(self) -> dict[str, np.ndarray]:
    keys = self._keys if self._state is None else self._state.key
    self._state, out, truth = self._programs[0](keys)
    return self._fetch(out, truth)

  def _step(self, action: np.ndarray) -> dict[str, np.ndarray]:
    self._state, out, truth = self._programs[1](self._state, action)
    return self._fetch(out, truth)

  def _fetch(self, out: dict, truth: dict) -> dict[str, np.ndarray]:
    out, truth = jax.tree.map(np.array, jax.device_get((out, truth)))
    self.truth = truth
    return out

  def close(self) -> None:
    self._state = None


def _programs(vectorized: Vectorized) -> tuple:
  """Jitted `reset(keys)` and `step(state, action)`, each also returning the truth."""
  with_truth = lambda result: (*result, vectorized.truth(result[0]))  # noqa: E731
  return (jax.jit(lambda keys: with_truth(vectorized.reset(keys))),
          jax.jit(lambda state, action: with_truth(vectorized.step(state, action))))


# Cached per `Vectorized` (by value for frozen-dataclass envs, such as the memory suite's), so the
# envs of every seed and of every evaluation share one compilation.
_cached_programs = functools.lru_cache(maxsize=64)(_programs)


def check(env: Any, task: str) -> tuple[dict, vector_env.ActionSpace]:
  """The obs and action spaces of `env`, checked against the `JaxEnv` contract (with shapes from
  `jax.eval_shape`); a one-line ValueError naming what is wrong."""
  missing = [a for a in ('obs_space', 'act_space', 'reset', 'step') if not hasattr(env, a)]
  if missing:
    raise ValueError(f'{task}: a {type(env).__name__} is not a JAX env (it lacks '
                     f'{", ".join(missing)}; see dreamerjax.data.jax_envs.JaxEnv)')
  obs_space = {k: (tuple(int(d) for d in shape), np.dtype(dtype))
               for k, (shape, dtype) in dict(env.obs_space).items()}
  act_space = env.act_space
  if not obs_space or set(obs_space) - set(OBS_KEYS):
    raise ValueError(f'{task}: obs_space keys must be among {OBS_KEYS}, got {sorted(obs_space)}')
  if 'vector' in obs_space and (len(obs_space['vector'][0]) != 1
                                or obs_space['vector'][1] != np.float32):
    raise ValueError(f'{task}: the vector observation must be float32 (D,), got '
                     f'{obs_space["vector"]}')
  if 'image' in obs_space and (len(obs_space['image'][0]) != 3
                               or obs_space['image'][1] != np.uint8):
    raise ValueError(f'{task}: the image observation must be uint8 (H, W, C), got '
                     f'{obs_space["image"]}')
  if not isinstance(act_space, vector_env.ActionSpace):
    raise ValueError(f'{task}: act_space must be vector_env.discrete_actions(n) or '
                     f'vector_env.continuous_actions(d), got {act_space!r}')
  action = (jax.ShapeDtypeStruct((), jnp.int32) if act_space.discrete
            else jax.ShapeDtypeStruct(act_space.shape, jnp.float32))
  key = jax.eval_shape(lambda: jax.random.key(0))
  try:
    state, obs = jax.eval_shape(env.reset, key)
    result = jax.eval_shape(env.step, key, state, action)
  except Exception as exc:
    raise ValueError(f'{task}: reset(key) or step(key, state, action) fails on abstract inputs '
                     f'({vector_env.one_line(exc)})') from exc
  for name, observed in (('reset', obs), ('step', result[1])):
    observed = observed if isinstance(observed, dict) else {'vector': observed}
    shapes = {k: tuple(v.shape) for k, v in observed.items()}
    if any(k not in shapes or shapes[k] != obs_space[k][0] for k in obs_space):
      raise ValueError(f'{task}: {name} returns observations of shapes {shapes}, not those of '
                       f'obs_space {obs_space}')
  if len(result) != 5 or any(tuple(x.shape) != () for x in result[2:]):
    raise ValueError(f'{task}: step must return (state, obs, reward, terminated, truncated) with '
                     'scalar reward and flags')
  return obs_space, act_space


def resolve(name: str) -> Any:
  """The env that `jax:<name>` names: a memory-suite name, or `<module>:<attribute>` (an env, or
  a class or factory called without arguments)."""
  if ':' not in name:
    return memory.make(name)
  found = vector_env.load_attribute('jax', name)
  if found is None:
    module, _, attribute = name.partition(':')
    raise ValueError(f'jax:{name}: module {module!r} has no attribute {attribute!r}')
  if hasattr(found, 'reset') and hasattr(found, 'step') and not isinstance(found, type):
    return found
  if not callable(found):
    raise ValueError(f'jax:{name} is a {type(found).__name__}, not a JAX env, class or factory')
  try:
    return found()
  except Exception as exc:
    raise ValueError(f'jax:{name} cannot be made: calling it raised {vector_env.one_line(exc)}') \
        from exc


def make(name: str, num_envs: int, seed: int, *,
         max_episode_steps: int | None = None) -> JaxVectorEnv:
  """A `JaxVectorEnv` of `num_envs` copies of the env `jax:<name>` names."""
  return JaxVectorEnv(resolve(name), f'jax:{name}', num_envs, seed, max_episode_steps)
