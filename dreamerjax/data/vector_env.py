"""The vectorized environment interface every backend implements (envpool, ``gym:``, ``jax:``;
see ``envs.make_env`` and docs/environments.md): :class:`VectorEnv`, its action spaces, and
the conversion of a gymnasium-style batch step into the Dreamer step dict.

Every step returns a dict with the observation keys of ``obs_space`` plus ``reward``,
``is_first``, ``is_last`` and ``is_terminal``. ``reward[i]`` is the reward received on
arriving at that observation and is 0 on an ``is_first`` step. A step that ends an episode
(termination or time-limit truncation) has ``is_last``; ``is_terminal`` only for true
termination. envpool resets an env automatically on the step *after* its episode ended: it
ignores that step's action, reports ``info['elapsed_step'] == 0`` and (for DMC) repeats a
stale reward, which we zero. Verified on envpool 1.2.5 for classic control, Atari and DMC.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """Action space as the agent sees it.

    Continuous actions are always given to :meth:`VectorEnv.step` in [-1, 1], so ``low`` and
    ``high`` are -1 and 1 (the env's own bounds are ``VectorEnv.native_action_low/high``).
    """

    discrete: bool
    shape: tuple
    num_actions: int
    low: np.ndarray | None = None
    high: np.ndarray | None = None


def discrete_actions(num_actions: int) -> ActionSpace:
    """``num_actions`` actions, given to :meth:`VectorEnv.step` as int32 indices."""
    return ActionSpace(discrete=True, shape=(), num_actions=int(num_actions))


def continuous_actions(dim: int) -> ActionSpace:
    """Float vectors of ``dim`` entries in [-1, 1]."""
    low, high = -np.ones(dim, np.float32), np.ones(dim, np.float32)
    low.setflags(write=False)
    high.setflags(write=False)
    return ActionSpace(discrete=False, shape=(dim,), num_actions=dim, low=low, high=high)


class VectorEnv:
    """A batch of ``num_envs`` environments with Dreamer step dicts (see module doc): envpool
    pools, and (through other backends) gymnasium and JAX envs."""

    def __init__(
        self,
        env: Any,
        task: str,
        family: str,
        num_envs: int,
        obs_space: dict[str, tuple[tuple[int, ...], np.dtype]],
        act_space: ActionSpace,
        convert_obs: Callable[[Any], dict[str, np.ndarray]],
        native_action_low: np.ndarray | None = None,
        native_action_high: np.ndarray | None = None,
        native_action_dtype: Any = None,
    ):
        self._env = env
        self.task = task
        self.family = family
        self.num_envs = num_envs
        self.obs_space = obs_space
        self.act_space = act_space
        self.native_action_low = native_action_low
        self.native_action_high = native_action_high
        self._native_dtype = native_action_dtype
        self._convert_obs = convert_obs
        self._returns = np.zeros(num_envs, np.float64)
        self._lengths = np.zeros(num_envs, np.int64)
        self._finished: list[tuple[int, float, int]] = []
        self._needs_reset = True
        # Simulator ground truth of the last reset/step, for diagnostics (state probes): DMC
        # proprio observation parts by name, Atari RAM, the classic-control state vector.
        self.truth: dict[str, np.ndarray] = {}
        # The env's score in [0, 1] of an episode return, where it defines one (`success` of the
        # memory suite's envs); logged as `episode/success` and `eval/success`.
        self.success: Callable[[float], float] | None = None

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env; all entries of the result have ``is_first``."""
        out = self._reset()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._needs_reset = False
        return out

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Step every env. ``action``: int32 [N] (discrete) or float32 [N, dim] in [-1, 1]."""
        if self._needs_reset:
            raise RuntimeError("call reset() before the first step()")
        out = self._step(self._convert_action(action))
        is_first, is_last = out["is_first"], out["is_last"]
        self._returns[is_first] = 0.0
        self._lengths[is_first] = 0
        self._returns += out["reward"]
        self._lengths += ~is_first
        for i in np.flatnonzero(is_last):
            self._finished.append((int(i), float(self._returns[i]), int(self._lengths[i])))
        return out

    # The backend: envpool's gymnasium batch interface (the gym: backend speaks it too). Other
    # backends override _reset and _step, which return step dicts and set `truth`.

    def _reset(self) -> dict[str, np.ndarray]:
        obs, info = self._env.reset()
        self.truth = _ground_truth(self.family, obs, info, self.num_envs)
        out = self._convert_obs(obs)
        n = self.num_envs
        out["reward"] = np.zeros(n, np.float32)
        out["is_first"] = np.ones(n, bool)
        out["is_last"] = np.zeros(n, bool)
        out["is_terminal"] = np.zeros(n, bool)
        return out

    def _step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        obs, reward, terminated, truncated, info = self._env.step(action)
        self.truth = _ground_truth(self.family, obs, info, self.num_envs)
        return envpool_step(self._convert_obs(obs), reward, terminated, truncated,
                            info["elapsed_step"])

    def native_action(self, action: Any, xp: Any = np) -> Any:
        """Continuous actions in [-1, 1] (clipped) -> the env's own bounds and dtype; ``xp`` is
        numpy or jax.numpy."""
        low, high = self.native_action_low, self.native_action_high
        action = xp.clip(xp.asarray(action, xp.float32), -1.0, 1.0)
        return (low + (action + 1.0) * 0.5 * (high - low)).astype(self._native_dtype)

    def _convert_action(self, action: np.ndarray) -> np.ndarray:
        n = self.num_envs
        if self.act_space.discrete:
            action = np.asarray(action)
            if action.shape != (n,) or action.dtype.kind not in "iu":
                raise ValueError(
                    f"expected integer actions of shape ({n},), got {action.dtype} {action.shape}"
                )
            if action.min() < 0 or action.max() >= self.act_space.num_actions:
                raise ValueError(
                    f"actions must be in [0, {self.act_space.num_actions}), got {action}"
                )
            return action.astype(np.int32, copy=False)
        action = np.asarray(action, np.float32)
        if action.shape != (n, *self.act_space.shape):
            raise ValueError(
                f"expected actions of shape {(n, *self.act_space.shape)}, got {action.shape}"
            )
        return self.native_action(action)

    def pop_finished_episodes(self) -> list[tuple[int, float, int]]:
        """(env_index, return, length) of episodes ended since the last call; clears them."""
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorEnv({self.task!r}, num_envs={self.num_envs}, family={self.family!r})"


def load_attribute(kind: str, spec: str) -> Any:
    """The object ``attribute`` of ``module`` for a task ``<kind>:<module>:<attribute>``
    (``spec`` is ``<module>:<attribute>``), or None if the module imports but lacks it."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure (a missing dependency too) is the task's
        raise ValueError(
            f"{kind}:{spec} names module {module_name!r}, which cannot be imported "
            f"({one_line(exc)}); make it importable (installed, or on PYTHONPATH)"
        ) from exc
    return getattr(module, attribute, None)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def native_bounds(space: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float64 of a Box action space; a ValueError if any bound is infinite."""
    low = np.asarray(space.low, np.float64).reshape(space.shape)
    high = np.asarray(space.high, np.float64).reshape(space.shape)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"{task!r} has unbounded actions; cannot rescale from [-1, 1]")
    return low, high


def _ground_truth(family: str, obs: Any, info: dict, n: int) -> dict[str, np.ndarray]:
    if family == "atari":
        return {"ram": np.asarray(info["ram"], np.float32).reshape(n, -1)}
    if family == "gym":  # the backend gives step dicts; the vector part is the env's own obs
        return {"state": obs["vector"]} if "vector" in obs else {}
    if isinstance(obs, dict):  # DMC proprio (pixel DMC has no state in obs or info)
        return {k: np.asarray(v, np.float32).reshape(n, -1) for k, v in obs.items()
                if k != "pixels"}
    if family == "classic":
        return {"state": np.asarray(obs, np.float32).reshape(n, -1)}
    return {}


def envpool_step(obs: dict, reward: Any, terminated: Any, truncated: Any, elapsed_step: Any,
                 xp: Any = np) -> dict:
    """The step dict (module doc) of an envpool step whose observation ``obs`` is converted
    already; ``xp`` is numpy or jax.numpy (envpool's XLA interface inside jit)."""
    is_first = xp.asarray(elapsed_step) == 0
    # envpool repeats the last reward on the auto-reset step (DMC): zeroed.
    reward = xp.where(is_first, 0.0, xp.asarray(reward, xp.float32)).astype(xp.float32)
    terminated = xp.asarray(terminated, bool) & ~is_first
    is_last = (terminated | xp.asarray(truncated, bool)) & ~is_first
    return {**obs, "reward": reward, "is_first": is_first, "is_last": is_last,
            "is_terminal": terminated}
