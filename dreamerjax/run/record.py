"""Recording datasets (see `dataset`) from a random policy, a trained run's checkpoint, or the
replay of an online run. Behind `scripts/record.py`."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from dreamerjax.data import dataset
from dreamerjax.run import common, parallel


def _writer(out: str, config, env, chunk_steps: int, source: dict) -> dataset.Writer:
  return dataset.Writer(out, config.task, env.obs_space, env.act_space.discrete,
                        env.act_space.num_actions, env.num_envs, chunk_steps, source)


def _env(config, envs: int, seed: int):
  return common.make_env_group(config, envs, seed, parallel.Layout(parallel.make_mesh(1), 1))


def random_policy(config: ml_collections.ConfigDict, out: str, steps: int, envs: int = 4,
                  seed: int = 0, chunk_steps: int = 1000) -> dict:
  """Uniformly random actions on `config`'s task."""
  env = _env(config, envs, seed)
  rngs = [np.random.default_rng(seed)]
  discrete, size = env.act_space.discrete, env.act_space.num_actions

  def act(step):
    del step
    env_action = env.random_actions(rngs)
    return (np.eye(size, dtype=np.float32)[env_action] if discrete else env_action), env_action

  try:
    return dataset.record(_writer(out, config, env, chunk_steps, {'policy': 'random',
                                                                    'seed': seed}),
                          env, steps, act)
  finally:
    env.close()


def checkpoint_policy(workdir: str, out: str, steps: int, envs: int = 4, seed: int = 0,
                      chunk_steps: int = 1000, mode: str = 'train', epsilon: float = 0.0) -> dict:
  """The agent of the run in `workdir` (its newest checkpoint; seed 0 of a several-seed run),
  acting with `agent.policy_step` (`mode`: 'train' samples actions, 'eval' takes the mode). With
  `epsilon > 0` each env takes a uniformly random action instead with that probability (the
  recorded and remembered action is the one taken): data that also shows recoveries from the
  agent's mistakes, and whose actions depend less on the previous ones."""
  if not 0.0 <= epsilon <= 1.0:
    raise ValueError(f'epsilon must be in [0, 1], got {epsilon}')
  config, agent, env_step, state = common.restore_agent(workdir)
  env = _env(config, envs, seed)
  policy = jax.jit(agent.policy_step, static_argnames='mode')
  status = {'carry': agent.initial_policy_carry(envs), 'step': 0}
  key, rng = jax.random.key(seed), np.random.default_rng(seed)

  def act(step):
    obs = {k: step[k] for k in (*env.obs_space, 'is_first')}
    status['carry'], action = policy(state, status['carry'], obs,
                                     jax.random.fold_in(key, status['step']), mode=mode)
    status['step'] += 1
    model_action = np.asarray(action)
    if epsilon > 0:
      explore = rng.random(envs) < epsilon
      random_action = agent.model_action(env.random_actions([rng]))
      model_action = np.where(explore[:, None], random_action, model_action).astype(np.float32)
      status['carry'] = {**status['carry'], 'action': model_action}
    return model_action, agent.env_action(model_action)

  source = {'policy': 'checkpoint', 'workdir': workdir, 'env_step': int(env_step), 'mode': mode,
            'seed': seed, 'epsilon': epsilon}
  try:
    return dataset.record(_writer(out, config, env, chunk_steps, source), env, steps, act)
  finally:
    env.close()


def replay_of_run(workdir: str, out: str, chunk_steps: int = 1000) -> dict:
  """Everything the replay of the run in `workdir` holds (seed 0 of a several-seed run)."""
  loaded = common.load_run(workdir)
  config, agent, _ = loaded
  env_step, _, replay_state, _ = common.restore(workdir, loaded)
  if replay_state is None:
    raise ValueError(f'{workdir} is an offline run: it keeps no replay (its data is the dataset '
                     f'{config.run.dataset}); record from its checkpoint with --source=checkpoint')
  if config.num_seeds > 1:
    replay_state = jax.tree.map(lambda x: x[0], replay_state)
  steps = dataset.replay_steps(replay_state)
  writer = dataset.Writer(out, config.task, agent.obs_space, agent.discrete, agent.action_size,
                          steps['is_first'].shape[1], chunk_steps,
                          {'policy': 'replay', 'workdir': workdir, 'env_step': int(env_step)})
  for t in range(len(steps['is_first'])):
    writer.add({k: v[t] for k, v in steps.items()})
  return writer.close()
