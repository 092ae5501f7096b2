"""Envs stepped inside jit: the pure `step(state, action)` that an on-device loop scans over.

Two backends, each over the host env the run made already (`envs.make_env`), so that names,
spaces, seeds and the step convention (`envs` module doc) are those of the host loop:

- envpool tasks through envpool's XLA interface (`env.xla()`): the step is a custom call into the
  same pool, usable inside `jax.lax.scan`. The state is envpool's handle. envpool checks the
  action dtype, and tasks whose actions are float64 (DMC) cannot be fed from jax without x64, so
  they are refused with a message.
- pure-JAX envs (`jax:` tasks): `jax_envs.Vectorized`, vmapped; the state is its `VectorState`.

`DeviceEnv.step` takes the model's action (`[N, A]`: one-hot for discrete actions, [-1, 1] for
continuous ones) and returns the next state and the step dict; the envs are reset on the host
(`host.reset()`), and `state()` is the device state that reset left.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.data import jax_envs, vector_env


class DeviceEnv:
  """`num_envs` envs with a pure, jittable `step` (see the module doc)."""

  def __init__(self, host: vector_env.VectorEnv):
    self.host = host
    self.num_envs, self.obs_space, self.act_space = host.num_envs, host.obs_space, host.act_space
    if isinstance(host, jax_envs.JaxVectorEnv):
      self._vectorized = host.vectorized
      self._xla = None
    elif type(host) is vector_env.VectorEnv and host.family in ('classic', 'atari', 'dmc'):
      dtype = host._native_dtype
      if not host.act_space.discrete and np.dtype(dtype) == np.float64:
        raise ValueError(
            f'{host.task} takes float64 actions, which envpool\'s XLA interface cannot get from '
            f'jax without x64; use --config.run.loop=host for this task')
      self._xla = host._env.xla()
      self._env_ids = np.arange(self.num_envs, dtype=np.int32)
    else:
      raise ValueError(f'{host.task} ({host.family}) has no on-device step; the on-device loop '
                       f'takes envpool tasks and jax: tasks (use --config.run.loop=host)')

  def state(self) -> Any:
    """The device state of the envs as the host env's last reset or step left them."""
    return self.host._state if self._xla is None else self._xla[0]

  def env_action(self, model_action: jax.Array) -> jax.Array:
    """The model's action -> what the env takes (indices, or values in the env's bounds)."""
    if self.act_space.discrete:
      return jnp.argmax(model_action, -1).astype(jnp.int32)
    return self.host.native_action(model_action, xp=jnp)

  def step(self, state: Any, model_action: jax.Array) -> tuple[Any, dict]:
    """One step of every env (jittable): `(state, step dict of [N, ...] arrays)`."""
    action = self.env_action(model_action)
    if self._xla is None:
      return self._vectorized.step(state, action)
    handle, (obs, reward, terminated, truncated, info) = self._xla[3](
        state, action, jnp.asarray(self._env_ids))
    return handle, vector_env.envpool_step(self.host._convert_obs(obs, xp=jnp), reward,
                                           terminated, truncated, info['elapsed_step'], xp=jnp)
