"""Host-side vectorized environments in the Dreamer step convention: envpool ids, and (through
the ``gym:`` and ``jax:`` task prefixes) gymnasium environments and pure-JAX environments, see
:func:`make_env` and docs/environments.md.

Every step returns a dict with the observation keys of ``obs_space`` plus ``reward``,
``is_first``, ``is_last`` and ``is_terminal``. ``reward[i]`` is the reward received on
arriving at that observation and is 0 on an ``is_first`` step. A step that ends an episode
(termination or time-limit truncation) has ``is_last``; ``is_terminal`` only for true
termination. envpool resets an env automatically on the step *after* its episode ended: it
ignores that step's action, reports ``info['elapsed_step'] == 0`` and (for DMC) repeats a
stale reward, which we zero. Verified on envpool 1.2.5 for classic control, Atari and DMC.

DMC pixels (``from_pixels=True``): envpool bundles its own ``libEGL`` and loads it
RTLD_LOCAL, so MuJoCo cannot find a GL platform and kills the process. A system EGL (or
OSMesa) library must be loaded RTLD_GLOBAL *before ``import envpool``* (loading it later
does not help: the render fails with ``gladLoadGL error`` and the process exits). This
module imports envpool lazily and calls :func:`preload_gl` first (best effort), so pixel
DMC works whenever this module does the first ``import envpool`` of the process. If other
code imports envpool earlier, call :func:`preload_gl` before that import, or start Python
with ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libEGL.so.1``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import difflib
import importlib
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

__all__ = [
    "ActionSpace",
    "PREFIXES",
    "VectorEnv",
    "benchmark_env",
    "continuous_actions",
    "discrete_actions",
    "envpool_step",
    "known_tasks",
    "make_env",
    "preload_gl",
]

# Task prefixes of the environments that are not envpool ids (see make_env).
PREFIXES = ("gym:", "jax:")

# envpool registry module name -> our family name.
_FAMILIES = {
    "envpool.atari": "atari",
    "envpool.mujoco.dmc": "dmc",
    "envpool.classic_control": "classic",
}
# (MUJOCO_GL value, library, a symbol it exports, Debian package).
_GL_LIBS = (
    ("egl", "libEGL.so.1", "eglGetProcAddress", "libegl1"),
    ("osmesa", "libOSMesa.so.8", "OSMesaGetProcAddress", "libosmesa6"),
)

_envpool: Any = None
_gl_ready_for_envpool = False  # a GL library was globally visible when envpool was imported
_gl_backend: str | None = None
_gl_loaded_after_envpool = False  # preload_gl() ran too late to help


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


def _gl_visible() -> bool:
    process = ctypes.CDLL(None)
    return any(hasattr(process, symbol) for _, _, symbol, _ in _GL_LIBS)


def preload_gl() -> str:
    """Load EGL (else OSMesa) RTLD_GLOBAL and set ``MUJOCO_GL``; returns the backend name.

    Must run before the process first imports envpool (see the module docstring).
    ``MUJOCO_GL=osmesa`` in the environment makes OSMesa the first choice. Idempotent.
    """
    global _gl_backend, _gl_loaded_after_envpool
    if _gl_backend is not None:
        return _gl_backend
    too_late = "envpool" in sys.modules and not _gl_visible()
    libs = sorted(_GL_LIBS, key=lambda entry: entry[0] != os.environ.get("MUJOCO_GL"))
    errors = []
    for backend, lib, _, _ in libs:
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            errors.append(f"{lib}: {exc}")
            continue
        os.environ["MUJOCO_GL"] = backend
        _gl_backend = backend
        _gl_loaded_after_envpool = too_late
        return backend
    raise RuntimeError(
        "DMC pixel rendering needs a system OpenGL library, but none could be loaded ("
        + "; ".join(errors)
        + "). Install one, e.g. `apt-get install libegl1` (EGL, preferred) or "
        "`apt-get install libosmesa6` (OSMesa, software)."
    )


def _import_envpool(need_gl: bool = False) -> Any:
    global _envpool, _gl_ready_for_envpool
    if _envpool is None:
        if "envpool" not in sys.modules:
            try:
                preload_gl()
            except RuntimeError:
                pass  # only fatal if pixels are requested (checked below)
        _gl_ready_for_envpool = _gl_visible() and not _gl_loaded_after_envpool
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import envpool
        _envpool = envpool
    if need_gl and not _gl_ready_for_envpool:
        preload_gl()  # raises the missing-library error if there is no GL library at all
        raise RuntimeError(
            "envpool was imported before an OpenGL library was loaded globally, so DMC "
            "rendering would kill the process. Call dreamerjax.data.envs.preload_gl() (or create "
            "the pixel env) before anything imports envpool, or run with "
            "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libEGL.so.1."
        )
    return _envpool


def _task_families() -> dict[str, str]:
    envpool = _import_envpool()
    specs = envpool.registration.registry.specs
    return {
        task: _FAMILIES[entry[0]]
        for task, entry in specs.items()
        if entry[0] in _FAMILIES and "/" not in task  # skip namespaced aliases
    }


def known_tasks() -> list[str]:
    """envpool ids this module supports (Atari v5, DMC v1, classic control), sorted."""
    return sorted(_task_families())


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


# Observation converters: envpool's batch -> the obs dict; ``xp`` is numpy or jax.numpy.


def _image_obs(obs: Any, xp: Any = np) -> dict:
    return {"image": xp.asarray(obs).transpose(0, 2, 3, 1).copy()}


def _vector_obs(obs: Any, xp: Any = np) -> dict:
    return {"vector": xp.array(obs, xp.float32)}


def _dict_vector_obs(keys: list[str], n: int) -> Callable[..., dict]:
    def convert(obs: Any, xp: Any = np) -> dict:
        parts = [xp.asarray(obs[k]).reshape(n, -1) for k in keys]
        return {"vector": xp.concatenate(parts, axis=1).astype(xp.float32)}

    return convert


def _unknown_task_error(task: str, families: dict[str, str]) -> ValueError:
    envpool = _import_envpool()
    if task in envpool.list_all_envs():
        return ValueError(
            f"envpool task {task!r} is not supported by dreamerjax.data.envs; supported families "
            "are Atari (*-v5, e.g. Pong-v5), DMC (*-v1, e.g. CheetahRun-v1) and classic "
            "control (e.g. CartPole-v1). See dreamerjax.data.envs.known_tasks()."
        )
    close = difflib.get_close_matches(task, list(families), n=5, cutoff=0.5)
    hint = f"Did you mean one of: {', '.join(close)}? " if close else ""
    return ValueError(
        f"unknown task {task!r}. {hint}Pass an envpool id such as 'Pong-v5', "
        "'CheetahRun-v1' or 'CartPole-v1' (dreamerjax.data.envs.known_tasks() lists all "
        f"{len(families)} supported ids), a gymnasium env as 'gym:<id>' or "
        "'gym:<module>:<class or factory>', or a JAX env as 'jax:CueRecall-30' or "
        "'jax:<module>:<class or factory>' (docs/environments.md)."
    )


def make_env(
    task: str,
    num_envs: int,
    seed: int,
    *,
    size: tuple[int, int] = (64, 64),
    from_pixels: bool = False,
    sticky: bool = False,
    noop_max: int = 30,
    max_episode_steps: int | None = None,
) -> VectorEnv:
    """Create a :class:`VectorEnv` for ``task``: an envpool id, ``gym:...`` or ``jax:...``.

    Atari: RGB ``image`` of ``size`` (H, W), frame skip 4, up to ``noop_max`` no-op actions
    after each reset (0 disables), sticky actions with probability 0.25 if ``sticky``, no
    reward clipping, no life-loss episodes, minimal action set. DMC: ``vector`` of the
    proprio observations (keys in sorted order), or an RGB ``image`` of ``size`` if
    ``from_pixels`` (see the module docstring about GL). Classic control: ``vector``.
    ``max_episode_steps`` overrides the env's time limit (agent steps).

    ``gym:<id>`` or ``gym:<module>:<attribute>``: a gymnasium env, made with ``gymnasium.make``
    or by calling an env class or factory (:mod:`dreamerjax.data.gym_envs`); images are resized
    to ``size``. ``jax:<name>`` (the memory suite, :mod:`dreamerjax.data.memory`) or
    ``jax:<module>:<attribute>``: a pure-JAX env stepped in one jitted, vmapped function
    (:mod:`dreamerjax.data.jax_envs`). ``noop_max`` applies to Atari only; ``sticky`` and
    ``from_pixels`` must be False for these.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if not -(2**31) <= int(seed) < 2**31:
        raise ValueError(f"seed must fit in int32, got {seed!r}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps!r}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (height, width) with positive ints, got {size!r}")
    if task.startswith(PREFIXES):
        kind, name = task[:3], task[4:]
        for option, value in (("sticky", sticky), ("from_pixels", from_pixels)):
            if value:
                raise ValueError(f"{option}=True is for envpool Atari/DMC tasks only; set "
                                 f"{option}=False for {task!r}")
        if kind == "gym":
            from dreamerjax.data import gym_envs

            return gym_envs.make(name, int(num_envs), int(seed), size=tuple(size),
                                 max_episode_steps=max_episode_steps)
        from dreamerjax.data import jax_envs

        return jax_envs.make(name, int(num_envs), int(seed), max_episode_steps=max_episode_steps)
    families = _task_families()
    if task not in families:
        raise _unknown_task_error(task, families)
    family = families[task]
    if sticky and family != "atari":
        raise ValueError(f"sticky=True is for Atari tasks only; set sticky=False for {task!r}")
    if from_pixels and family != "dmc":
        what = "Atari observations are always pixels" if family == "atari" else "no pixels"
        raise ValueError(
            f"from_pixels=True is for DMC tasks only ({what}); set from_pixels=False for {task!r}"
        )
    if family == "atari" and noop_max < 0:
        raise ValueError(f"noop_max must be >= 0, got {noop_max!r}")

    height, width = int(size[0]), int(size[1])
    n = int(num_envs)
    kwargs: dict[str, Any] = {"num_envs": n, "batch_size": n, "seed": int(seed)}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if family == "atari":
        # envpool draws the number of no-ops from [0, noop_max - 1] and crashes (SIGSEGV)
        # on noop_max=0, so "at most k no-ops" is envpool's noop_max=k+1.
        kwargs.update(
            img_height=height,
            img_width=width,
            gray_scale=False,
            stack_num=1,
            frame_skip=4,
            noop_max=int(noop_max) + 1,
            repeat_action_probability=0.25 if sticky else 0.0,
            reward_clip=False,
            episodic_life=False,
            full_action_space=False,
        )
    elif family == "dmc" and from_pixels:
        kwargs.update(from_pixels=True, render_height=height, render_width=width)

    envpool = _import_envpool(need_gl=from_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium Box float64->float32 precision warnings
        env = envpool.make_gymnasium(task, **kwargs)
        space, aspace = env.observation_space, env.action_space

    if family == "atari" or from_pixels:
        obs_space = {"image": ((height, width, 3), np.dtype(np.uint8))}
        convert_obs: Callable[..., dict] = _image_obs
    elif family == "dmc":
        keys = sorted(space.spaces)
        dim = sum(int(np.prod(space.spaces[k].shape)) for k in keys)
        obs_space = {"vector": ((dim,), np.dtype(np.float32))}
        convert_obs = _dict_vector_obs(keys, n)
    else:
        obs_space = {"vector": ((int(np.prod(space.shape)),), np.dtype(np.float32))}
        convert_obs = _vector_obs

    if hasattr(aspace, "n"):
        act_space = discrete_actions(int(aspace.n))
        return VectorEnv(env, task, family, n, obs_space, act_space, convert_obs)
    try:
        native_low, native_high = native_bounds(aspace, task)
    except ValueError:
        env.close()
        raise
    act_space = continuous_actions(int(np.prod(aspace.shape)))
    return VectorEnv(
        env,
        task,
        family,
        n,
        obs_space,
        act_space,
        convert_obs,
        native_low,
        native_high,
        aspace.dtype,
    )


def benchmark_env(
    task: str, num_envs: int, steps: int, *, seed: int = 0, **make_kwargs: Any
) -> float:
    """Env steps per second (``num_envs * steps / seconds``) of :class:`VectorEnv` with
    uniformly random actions; creation and the first reset are not timed."""
    env = make_env(task, num_envs, seed, **make_kwargs)
    try:
        rng = np.random.default_rng(seed)
        space = env.act_space
        if space.discrete:
            actions = rng.integers(0, space.num_actions, (steps, num_envs), dtype=np.int32)
        else:
            actions = rng.uniform(-1, 1, (steps, num_envs, *space.shape)).astype(np.float32)
        env.reset()
        start = time.perf_counter()
        for t in range(steps):
            env.step(actions[t])
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return num_envs * steps / elapsed
