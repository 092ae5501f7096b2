"""The online loop with acting on the device (`run.loop=device`): one jitted loop runs up to
`run.loop_steps` steps of every env, each step acting with the policy (random actions during
prefill), stepping the envs (`data.device_envs`: envpool's XLA interface or a vmapped `jax:` env),
writing the step into the device replay and running the updates the train ratio has earned by
then (a `while_loop` over `train`), so the interleaving of acting and updates is the host
loop's. The host calls the program once per `run.loop_steps` env steps and then fetches the
chunk's ended episodes and counters in one transfer; logging, evaluation and checkpoints happen
between chunks (their periods are rounded up to a chunk).

What differs from the host loop (`online.OnlineLoop`): random prefill actions are drawn with
`jax.random` rather than numpy, so runs are reproducible per seed but not equal to host-loop runs;
one seed, one process and one device only (envpool's handle steps one pool on the host CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.data import device_envs, replay
from dreamerjax.run import errors, online


class DeviceLoop(online.OnlineLoop):
  """`online.OnlineLoop` with `_act` replaced by a chunk of `run.loop_steps` steps on device."""

  def __init__(self, config, workdir, layout):
    if layout.stacked or jax.process_count() > 1 or layout.mesh.size > 1:
      raise errors.ConfigError(
          '--config.run.loop=device runs one seed in one process on one device; got '
          f'num_seeds={config.num_seeds}, {jax.process_count()} processes, {layout.mesh.size} '
          'devices (set --config.run.loop=host, or num_seeds=1 and parallel.devices=1)')
    super().__init__(config, workdir, layout)

  def _start(self) -> None:
    super()._start()
    try:
      self.device_env = device_envs.DeviceEnv(self.env.envs[0])
    except ValueError as error:
      raise errors.ConfigError(str(error)) from error
    self.env_state = self.device_env.state()
    n = self.num_envs
    self.episode = {'returns': jnp.zeros(n, jnp.float32), 'lengths': jnp.zeros(n, jnp.int32)}
    self._program = None
    self._zero_metrics = None

  def _chunk(self):
    """The jitted program of up to `run.loop_steps` steps (the number is an argument, so a short
    last chunk runs the same program instead of compiling one of its own)."""
    if self._program is None:
      self._program = jax.jit(
          functools.partial(chunk, self.agent, self.device_env, self.programs.train_fn,
                            self.config.run, self.updates_per_step, self.config.run.loop_steps),
          donate_argnums=(0, 1, 2))
    return self._program

  def _act(self) -> None:
    counters, run_config = self.counters, self.config.run
    remaining = -(-(run_config.steps - counters['env_step']) // self.num_envs)
    length = max(1, min(run_config.loop_steps, remaining))
    scalars = {'env_step': jnp.int32(counters['env_step']), 'position': jnp.int32(self.position),
               'credit': jnp.float32(counters['train_credit']),
               'updates': jnp.int32(counters['updates'])}
    if self.metrics is None and self._zero_metrics is None:  # traced once, not per chunk
      self._zero_metrics = zero_metrics(self.programs.train_fn, self.state, self.replay_state)
    metrics = self.metrics if self.metrics is not None else self._zero_metrics
    # The chunk returns every loop value replicated on the (one-device) mesh; values from the host
    # loop's setup arrive batch-sharded or uncommitted. Placed as the chunk returns them, the
    # second call finds the program of the first instead of compiling it again (at `tiny`, 18 s
    # each time). On an array already placed so, device_put is a no-op.
    loop = jax.device_put(
        (self.state, self.replay_state, self.carry, self.env_state, self.step_data, self.episode,
         scalars, metrics), self.layout.replicated)
    (self.state, self.replay_state, self.carry, self.env_state, self.step_data, self.episode,
     scalars, metrics), ended = self._chunk()(*loop, self.policy_key, jnp.int32(length))
    scalars, ended = jax.device_get((scalars, ended))
    if int(scalars['updates']) > 0:
      self.metrics = metrics
    self.position = int(scalars['position'])
    counters.update(env_step=int(scalars['env_step']), updates=int(scalars['updates']),
                    train_credit=float(scalars['credit']))
    for t, index in zip(*np.nonzero(ended['is_last']), strict=True):
      self.finished.append((int(ended['env_step'][t]), 0, float(ended['returns'][t, index]),
                            int(ended['lengths'][t, index])))


def run(config, workdir: str) -> dict:
  """`online.run` with the device loop: what `train.mode` runs for `run.loop=device`."""
  return online.run(config, workdir, DeviceLoop)


def zero_metrics(train_fn, state, replay_state) -> dict:
  """Zeros shaped as `train_fn`'s metrics (the loop carries the latest metrics)."""
  shapes = jax.eval_shape(train_fn, state, replay_state)[1]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def random_actions(key: jax.Array, discrete: bool, num_envs: int, size: int) -> jax.Array:
  """Uniformly random model actions `[N, A]`: one-hot indices, or values in [-1, 1]."""
  if discrete:
    return jax.nn.one_hot(jax.random.randint(key, (num_envs,), 0, size), size)
  return jax.random.uniform(key, (num_envs, size), minval=-1.0, maxval=1.0)


def chunk(agent, env: device_envs.DeviceEnv, train_fn, run_config, updates_per_step: float,
          max_length: int, state, replay_state, carry, env_state, step_data, episode, scalars,
          metrics, policy_key, length):
  """`length` (<= `max_length`, traced) steps of every env, as the module doc says
  (`updates_per_step`: per env step, as the host loop's). Returns the new loop values and, per
  step `[max_length, ...]`, the envs' `is_last`, episode returns and lengths and the env step
  counter (rows from `length` on are zeros: no env ended there)."""
  n = env.num_envs
  obs_keys = (*env.obs_space, 'is_first')

  def train_while_earned(values, replay_state):
    def update(loop):
      state, metrics, updates, credit = loop
      state, metrics = train_fn(state, replay_state)
      return state, metrics, updates + 1, credit - 1.0

    return jax.lax.while_loop(lambda loop: loop[3] >= 1.0, update, values)

  def body(loop, _):
    state, replay_state, carry, env_state, step_data, episode, scalars, metrics = loop
    env_step = scalars['env_step']
    key = jax.random.fold_in(policy_key, env_step)
    carry, action = jax.lax.cond(  # random actions during prefill; the carry stays as it was
        env_step < run_config.prefill,
        lambda: (carry, random_actions(jax.random.fold_in(key, 1), agent.discrete, n,
                                       agent.action_size)),
        lambda: agent.policy_step(state, carry, {k: step_data[k] for k in obs_keys}, key))
    env_state, out = env.step(env_state, action)
    step_data = {**out, 'action': action * ~out['is_first'][:, None]}
    # With model.replay_context, the latent state the policy enters this step with (as the host
    # loop's `_add`).
    replay_state = replay.add(replay_state, {
        **step_data, **agent.world_model.context_fields(carry['latent'])})
    env_step = env_step + n
    position = scalars['position'] + 1
    returns = jnp.where(out['is_first'], 0.0, episode['returns']) + out['reward']
    lengths = jnp.where(out['is_first'], 0, episode['lengths']) + (~out['is_first'])
    can_train = (env_step >= run_config.prefill) & (position >= run_config.batch_length)
    credit = scalars['credit'] + jnp.where(can_train, n * updates_per_step, 0.0)
    state, metrics, updates, credit = train_while_earned(
        (state, metrics, scalars['updates'], credit), replay_state)
    scalars = {'env_step': env_step, 'position': position, 'credit': credit, 'updates': updates}
    ended = {'is_last': out['is_last'], 'returns': returns, 'lengths': lengths,
             'env_step': env_step}
    loop = (state, replay_state, carry, env_state, step_data, {'returns': returns,
                                                                'lengths': lengths},
            scalars, metrics)
    return loop, ended

  loop = (state, replay_state, carry, env_state, step_data, episode, scalars, metrics)
  # One row per step of what `body` reports, shaped as the loop values it comes from (no second
  # trace of `body`, whose updates hold the whole train step).
  ended = jax.tree.map(lambda x: jnp.zeros((max_length, *x.shape), x.dtype),
                       {'is_last': step_data['is_last'], 'returns': episode['returns'],
                        'lengths': episode['lengths'], 'env_step': scalars['env_step']})

  def step(values):
    t, loop, ended = values
    loop, out = body(loop, None)
    return t + 1, loop, jax.tree.map(lambda rows, x: rows.at[t].set(x), ended, out)

  _, loop, ended = jax.lax.while_loop(lambda values: values[0] < length, step,
                                      (jnp.int32(0), loop, ended))
  return loop, ended
