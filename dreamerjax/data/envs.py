"""Host-side vectorized environments in the Dreamer step convention: envpool ids, and (through
the ``gym:`` and ``jax:`` task prefixes) gymnasium environments and pure-JAX environments, see
:func:`make_env` and docs/environments.md.

The step convention and the interface: ``vector_env``.

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
import difflib
import os
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

from dreamerjax.data import gym_envs, jax_envs, vector_env

__all__ = [
    "PREFIXES",
    "benchmark_env",
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
) -> vector_env.VectorEnv:
    """Create a :class:`vector_env.VectorEnv` for ``task``: an envpool id, ``gym:...`` or
    ``jax:...``.

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
            return gym_envs.make(name, int(num_envs), int(seed), size=tuple(size),
                                 max_episode_steps=max_episode_steps)
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
        act_space = vector_env.discrete_actions(int(aspace.n))
        return vector_env.VectorEnv(env, task, family, n, obs_space, act_space, convert_obs)
    try:
        native_low, native_high = vector_env.native_bounds(aspace, task)
    except ValueError:
        env.close()
        raise
    act_space = vector_env.continuous_actions(int(np.prod(aspace.shape)))
    return vector_env.VectorEnv(
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
    """Env steps per second (``num_envs * steps / seconds``) of :class:`vector_env.VectorEnv` with
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
