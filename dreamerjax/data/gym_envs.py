"""gymnasium environments as `vector_env.VectorEnv`s: the `gym:` task prefix.

    gym:CartPole-v1                  a registered id, made with `gymnasium.make`
    gym:my_pkg.envs:MyEnv            an env class or a factory (no required arguments) in a module
    gym:my_pkg.envs:MyEnv-v0         gymnasium's own form: importing the module registers the id

`N` envs are stepped in a loop on the host; env `i` is seeded `seed + i` at its first reset (as
envpool seeds its pools, see `envgroup`). An env whose episode ended resets on the *next* step, as
envpool does: that step ignores its action and returns the reset observation with `is_first` and
reward 0. `terminated` gives `is_terminal` (and `is_last`); `truncated` (a time limit) gives
`is_last` only.

Observation spaces map to the obs dict:

* a `Box` of dtype uint8 and shape `(H, W, C)`, `C` in {1, 3}: `image`, resized (bilinear) to
  `size` where it differs;
* any other `Box` (flattened), `Discrete` and `MultiDiscrete` (one-hot), `MultiBinary`: entries of
  the float32 `vector`;
* `Dict` (keys in sorted order) and `Tuple` of these, nested: at most one image, all the rest
  concatenated into `vector`.

Action spaces: `Discrete(n, start)` (the agent's index `a` is the env's `start + a`) and `Box` with
finite bounds (the agent acts in [-1, 1], rescaled to the bounds and reshaped to the box's shape).
Anything else is refused with a one-line ValueError.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable

import numpy as np

from dreamerjax.data import vector_env

IMAGE_CHANNELS = (1, 3)


def make(name: str, num_envs: int, seed: int, *, size: tuple[int, int] = (64, 64),
         max_episode_steps: int | None = None) -> vector_env.VectorEnv:
  """A `VectorEnv` of `num_envs` gymnasium envs named `name` (the task without `gym:`).
  `max_episode_steps` replaces a registered id's time limit, and adds one to a factory's env."""
  task = f'gym:{name}'
  made = []
  try:
    for _ in range(num_envs):
      made.append(_make_one(name, max_episode_steps))
    obs_space, convert = _observation_converter(made[0].observation_space, size, task)
    act_space, native, to_env = _action_converter(made[0].action_space, task)
  except Exception:
    for env in made:
      env.close()
    raise
  batch = GymBatch(made, seed, convert, to_env)
  low, high, dtype = native
  return vector_env.VectorEnv(batch, task, 'gym', num_envs, obs_space, act_space, dict, low, high,
                              dtype)


class GymBatch:
  """`N` gymnasium envs behind envpool's gymnasium batch interface, which `VectorEnv` reads:
  `reset() -> (obs, info)`, `step(actions) -> (obs, reward, terminated, truncated, info)`, with
  `info['elapsed_step'] == 0` on the auto-reset step. `obs` is already the obs dict `[N, ...]`."""

  def __init__(self, env_list: list, seed: int, convert: Callable[[Any], dict],
               to_env: Callable[[np.ndarray], Any]):
    self.envs, self._seed, self._convert, self._to_env = env_list, seed, convert, to_env
    self._seeded = False
    self._done = np.zeros(len(env_list), bool)
    self._elapsed = np.zeros(len(env_list), np.int64)

  def reset(self) -> tuple[dict, dict]:
    seeds = [self._seed + i if not self._seeded else None for i in range(len(self.envs))]
    self._seeded = True
    obs = [env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds, strict=True)]
    self._done[:] = False
    self._elapsed[:] = 0
    return self._stack(obs), {'elapsed_step': self._elapsed.copy()}

  def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
    n = len(self.envs)
    obs, reward = [], np.zeros(n, np.float32)
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    for i, env in enumerate(self.envs):
      if self._done[i]:  # the step after is_last: reset, the action is ignored
        obs.append(env.reset()[0])
        self._elapsed[i], self._done[i] = 0, False
        continue
      observation, r, terminated[i], truncated[i], _ = env.step(self._to_env(actions[i]))
      obs.append(observation)
      reward[i] = r
      self._elapsed[i] += 1
      self._done[i] = terminated[i] or truncated[i]
    return self._stack(obs), reward, terminated, truncated, {'elapsed_step': self._elapsed.copy()}

  def _stack(self, obs: list) -> dict:
    converted = [self._convert(o) for o in obs]
    return {key: np.stack([c[key] for c in converted]) for key in converted[0]}

  def close(self) -> None:
    for env in self.envs:
      env.close()


def _make_one(name: str, max_episode_steps: int | None) -> Any:
  import gymnasium

  task = f'gym:{name}'
  if ':' in name:
    factory = vector_env.load_attribute('gym', name)
    if factory is not None:
      if not callable(factory):
        raise ValueError(f'{task}: {name.partition(":")[2]!r} is a {type(factory).__name__}, '
                         'not an env class or factory; name a class or a function that returns '
                         'a gymnasium.Env')
      try:
        env = factory()
      except Exception as exc:
        raise ValueError(f'{task} cannot be made: calling it raised {vector_env.one_line(exc)}') \
            from exc
      if not all(hasattr(env, a) for a in ('reset', 'step', 'observation_space', 'action_space')):
        raise ValueError(f'{task} returned a {type(env).__name__}, not a gymnasium.Env (it needs '
                         'reset, step, observation_space and action_space)')
      if max_episode_steps is not None:
        env = gymnasium.wrappers.TimeLimit(env, max_episode_steps)
      return env
  kwargs = {} if max_episode_steps is None else {'max_episode_steps': max_episode_steps}
  try:
    return gymnasium.make(name, **kwargs)
  except Exception as exc:
    close = difflib.get_close_matches(name, list(gymnasium.registry), n=3, cutoff=0.6)
    hint = f'; did you mean {", ".join(f"gym:{c}" for c in close)}?' if close else ''
    raise ValueError(
        f'{task} cannot be made ({vector_env.one_line(exc)}){hint} Name a registered gymnasium id '
        '(gym:CartPole-v1) or an env class or factory (gym:my_pkg.envs:MyEnv)') from exc


# ----------------------------------------------------------------------------- spaces


def _leaves(space: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
  from gymnasium import spaces

  if isinstance(space, spaces.Dict):
    return [leaf for key in sorted(space.spaces) for leaf in _leaves(space[key], (*path, key))]
  if isinstance(space, spaces.Tuple):
    return [leaf for i, sub in enumerate(space.spaces) for leaf in _leaves(sub, (*path, i))]
  return [(path, space)]


def _is_image(space: Any) -> bool:
  from gymnasium import spaces

  return (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
          and space.shape[-1] in IMAGE_CHANNELS)


def _vector_part(space: Any, task: str) -> tuple[int, Callable[[Any], np.ndarray]]:
  """(size, encode) of a non-image leaf: its entries in the float32 vector."""
  from gymnasium import spaces

  if isinstance(space, spaces.Discrete):
    n, start = int(space.n), int(space.start)
    return n, lambda x: np.eye(n, dtype=np.float32)[int(x) - start]
  if isinstance(space, spaces.MultiDiscrete):
    nvec, start = space.nvec.reshape(-1), np.asarray(space.start).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])

    def one_hot(x):
      out = np.zeros(int(nvec.sum()), np.float32)
      out[offsets + np.asarray(x).reshape(-1) - start] = 1.0
      return out

    return int(nvec.sum()), one_hot
  if isinstance(space, (spaces.Box, spaces.MultiBinary)):
    return math.prod(space.shape), lambda x: np.asarray(x, np.float32).reshape(-1)
  raise ValueError(f'{task} has an observation space dreamerjax cannot read: {space} (supported: '
                   'Box, Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of these); wrap the '
                   'env (e.g. gymnasium.wrappers.FlattenObservation)')


def _observation_converter(space: Any, size: tuple[int, int],
                           task: str) -> tuple[dict, Callable[[Any], dict]]:
  """The obs space (`{'image': ...}` and/or `{'vector': ...}`) and `raw obs -> obs dict`."""
  leaves = _leaves(space)
  images = [(path, leaf) for path, leaf in leaves if _is_image(leaf)]
  if len(images) > 1:
    raise ValueError(f'{task} has {len(images)} image observations ({[p for p, _ in images]}); '
                     'dreamerjax reads one: drop or merge the others with a wrapper')
  parts = [(path, *_vector_part(leaf, task)) for path, leaf in leaves if not _is_image(leaf)]
  obs_space, height, width = {}, int(size[0]), int(size[1])
  if images:
    channels = images[0][1].shape[-1]
    obs_space['image'] = ((height, width, channels), np.dtype(np.uint8))
  dim = sum(part[1] for part in parts)
  if dim:
    obs_space['vector'] = ((dim,), np.dtype(np.float32))
  if not obs_space:
    raise ValueError(f'{task} has an empty observation space: {space}')

  def convert(obs: Any) -> dict:
    out = {}
    if images:
      out['image'] = _resize(np.asarray(_get(obs, images[0][0]), np.uint8), height, width)
    if dim:
      out['vector'] = np.concatenate([encode(_get(obs, path)) for path, _, encode in parts])
    return out

  return obs_space, convert


def _get(obs: Any, path: tuple) -> Any:
  for key in path:
    obs = obs[key]
  return obs


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  if image.shape[:2] == (height, width):
    return image
  from PIL import Image  # pillow: a dependency of matplotlib

  resized = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize(
      (width, height), Image.BILINEAR)
  return np.asarray(resized, np.uint8).reshape(height, width, image.shape[-1])


def _action_converter(space: Any, task: str) -> tuple[vector_env.ActionSpace, tuple, Callable]:
  """(agent's action space, (native low, high, dtype) for `VectorEnv`, `action -> env action`)."""
  from gymnasium import spaces

  if isinstance(space, spaces.Discrete):
    start = int(space.start)
    return vector_env.discrete_actions(int(space.n)), (None, None, None), lambda a: int(a) + start
  if isinstance(space, spaces.Box):
    low, high = vector_env.native_bounds(space, task)
    shape, dtype = space.shape, space.dtype
    return (vector_env.continuous_actions(math.prod(shape)),
            (low.reshape(-1), high.reshape(-1), dtype),
            lambda a: np.asarray(a, dtype).reshape(shape))
  raise ValueError(f'{task} has an action space dreamerjax cannot act in: {space} (supported: '
                   'Discrete and Box with finite bounds); wrap the env')
