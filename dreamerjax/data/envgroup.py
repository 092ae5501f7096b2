"""The envs one process steps: its share of the envs of every seed of the run.

A run has `N = config.run.envs` envs per seed, in a global order that `replay.add` maps to replay
shards (env `i` -> shard `i // (N / devices)`). Process `p` of `P` steps envs `[p n, (p+1) n)`
with `n = N / P`, so its envs feed exactly the replay shards of its own devices. envpool seeds
env `i` of a pool with `seed + i`, so global env `i` of seed `k` is seeded `config.seed + k + i`,
exactly as in a one-process run with `config.seed + k`. Random (prefill) actions are drawn for
all `N` envs and sliced, for the same reason.

Arrays are `[n, ...]` for one seed and `[K, n, ...]` for several (`stacked`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dreamerjax.data import vector_env


class EnvGroup:
  """`K` envpool pools (one per seed) of this process's `n` envs each, stepped together."""

  def __init__(self, make_env: Callable[[int, int], vector_env.VectorEnv], num_envs: int,
               seeds: list[int], stacked: bool, process_index: int = 0, process_count: int = 1):
    """
    Args:
      make_env: `(num_envs, seed) -> VectorEnv`.
      num_envs: `N`, envs per seed over all processes (a multiple of `process_count`).
      seeds: the seed of each of the `K` agents.
      stacked: arrays carry a leading seed axis (several seeds; True also allowed for one).
      process_index, process_count: this process and how many share the envs.
    """
    if num_envs % process_count:
      raise ValueError(f'{num_envs} envs cannot be split over {process_count} processes')
    if len(seeds) > 1 and not stacked:
      raise ValueError('several seeds need stacked=True')
    self.num_envs = num_envs
    self.local_envs = num_envs // process_count
    self.offset = process_index * self.local_envs  # global index of this process's first env
    self.seeds = list(seeds)
    self.stacked = stacked
    self.envs: list[vector_env.VectorEnv] = []
    try:
      for seed in seeds:
        self.envs.append(make_env(self.local_envs, seed + self.offset))
    except Exception:
      self.close()
      raise
    self.obs_space = self.envs[0].obs_space
    self.act_space = self.envs[0].act_space
    self.success = self.envs[0].success

  def _stack(self, steps: list[dict]) -> dict:
    if not self.stacked:
      return steps[0]
    return {key: np.stack([step[key] for step in steps]) for key in steps[0]}

  def reset(self) -> dict[str, np.ndarray]:
    """Resets every env; a step dict (see `envs`) of `[K?, n, ...]` arrays."""
    return self._stack([env.reset() for env in self.envs])

  def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
    """Steps every env with env actions `[K?, n, ...]` (int32 indices or float32 vectors)."""
    actions = action if self.stacked else [action]
    return self._stack([env.step(a) for env, a in zip(self.envs, actions, strict=True)])

  def random_actions(self, rngs: list[np.random.Generator]) -> np.ndarray:
    """Uniformly random env actions `[K?, n, ...]`, one generator per seed; drawn for all `N` envs
    and sliced, so they do not depend on the number of processes."""
    space = self.act_space
    actions = []
    for rng in rngs:
      if space.discrete:
        drawn = rng.integers(0, space.num_actions, self.num_envs).astype(np.int32)
      else:
        drawn = rng.uniform(-1.0, 1.0, (self.num_envs, space.num_actions)).astype(np.float32)
      actions.append(drawn[self.offset:self.offset + self.local_envs])
    return np.stack(actions) if self.stacked else actions[0]

  def pop_finished_episodes(self) -> list[tuple[int, int, float, int]]:
    """`(seed index, global env index, return, length)` of episodes ended since the last call."""
    return [(k, self.offset + index, episode_return, length)
            for k, env in enumerate(self.envs)
            for index, episode_return, length in env.pop_finished_episodes()]

  def close(self) -> None:
    for env in self.envs:
      env.close()
