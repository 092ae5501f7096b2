"""The World Models run (Ha & Schmidhuber 2018), trained in stages rather than online.

`run(config, workdir)` records random-policy rollouts (into a replay buffer of
`dreamerjax.data.replay`), trains the VAE with the ELBO, trains the MDN-RNN on the frozen VAE's
latents, then trains the controller inside the dream (a linear one with CMA-ES, or with
`agent.policy=actor_critic` the latent actor-critic), and evaluates it on the real env. Metrics go
to `metrics.jsonl` with `step` counting updates over all stages. The parts are in
`dreamerjax.agents.worldmodels`.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from dreamerjax.agents import cmaes
from dreamerjax.agents.agent import Agent
from dreamerjax.agents.worldmodels import (
  WorldModelsModel,
  acting,
  controller_action,
  controller_policy,
  controller_size,
  dream_return,
  initial_carry,
  latent_actor_critic,
)
from dreamerjax.data import replay
from dreamerjax.run import common
from dreamerjax.run.logger import EVAL_RETURN_KEY, eval_metrics, plot_curve


def record(env, num_envs: int, episodes: int, max_steps: int, discrete: bool, seed: int):
  """Random-policy rollouts into a replay buffer: `(replay_state, env steps, finished returns)`."""
  spec = common.replay_spec(env)
  action_size = env.act_space.num_actions
  per_env = max(2, max_steps // num_envs)
  state = replay.init(spec, num_envs, per_env * num_envs)
  add = jax.jit(replay.add, donate_argnums=0)
  rng = np.random.default_rng(seed)
  obs = env.reset()
  state = add(state, {**obs, 'action': np.zeros((num_envs, action_size), np.float32)})
  returns, steps = [], 0
  for _ in range(per_env - 1):
    if discrete:
      env_action = rng.integers(0, action_size, num_envs).astype(np.int32)
      model_action = np.eye(action_size, dtype=np.float32)[env_action]
    else:
      env_action = model_action = rng.uniform(-1, 1, (num_envs, action_size)).astype(np.float32)
    obs = env.step(env_action)
    state = add(state, {**obs, 'action': model_action * ~obs['is_first'][:, None]})
    steps += num_envs
    returns.extend(r for _, r, _ in env.pop_finished_episodes())
    if len(returns) >= episodes:
      break
  return state, steps, returns


def _fit(loss_fn, params, replay_state, steps: int, batch_size: int, length: int, lr: float,
         key, log, every: int = 100):
  """Adam on `loss_fn(params, batch, key) -> (loss, metrics)` over replayed batches."""
  tx = optax.chain(optax.clip_by_global_norm(100.0), optax.adam(lr))

  @jax.jit
  def update(params, opt_state, key):
    sample_key, loss_key = jax.random.split(key)
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, loss_key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = tx.init(params)
  for step in range(steps):
    params, opt_state, metrics = update(params, opt_state, jax.random.fold_in(key, step))
    if (step + 1) % every == 0 or step + 1 == steps:
      log(jax.device_get(metrics), step % every + 1)
  return params


def restore(workdir: str, config: ml_collections.ConfigDict, obs_space: dict, discrete: bool,
            action_size: int) -> tuple[int, WorldModelsModel, dict, dict]:
  """The newest checkpoint of a World Models run: `(step, model, params, controller)`."""
  model = WorldModelsModel(obs_space, action_size, config)
  params = jax.eval_shape(model.init, jax.random.key(0))
  feature_size, key = model.dynamics.feature_size, jax.random.key(0)
  if config.agent.policy == 'actor_critic':
    actor, critic = jax.eval_shape(latent_actor_critic(config, model, discrete).init, key)
    controller = {'actor': actor, 'critic': critic}
  else:
    controller = {'theta': jax.ShapeDtypeStruct((controller_size(feature_size, action_size),),
                                                jnp.float32)}
  step, tree, _ = common.restore_checkpoint(workdir, {'world_model': params,
                                                      'controller': controller})
  return step, model, tree['world_model'], tree['controller']


def evaluate(make_env, act, make_carry, episodes: int, seed: int,
             max_steps: int = 100_000) -> np.ndarray:
  """Returns of the first episode of each of `episodes` envs under `act(carry, obs, key)`."""
  env = make_env(episodes, seed)
  try:
    obs = env.reset()
    carry, returns = make_carry(episodes), {}
    for step in range(max_steps):
      carry, action = act(carry, {k: obs[k] for k in (*env.obs_space, 'is_first')},
                          jax.random.key(step))
      action = np.asarray(action)
      obs = env.step(action.argmax(-1).astype(np.int32) if env.act_space.discrete
                     else action.astype(np.float32))
      for index, episode_return, _ in env.pop_finished_episodes():
        returns.setdefault(index, episode_return)
      if len(returns) == episodes:
        break
    return np.array([returns.get(i, np.nan) for i in range(episodes)])
  finally:
    env.close()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The World Models stages on `config.task` (config resolved and validated); see module doc."""
  start_time = time.monotonic()
  w, optim = config.worldmodels, config.optim
  make_env = functools.partial(common.make_env, config)
  env = make_env(config.run.envs, config.seed)
  discrete, action_size = env.act_space.discrete, env.act_space.num_actions
  model = WorldModelsModel(env.obs_space, action_size, config)
  common.prepare_workdir(config, workdir)
  # The stages start over: the history of an earlier run on this workdir is cut whole.
  logger = common.open_logger(workdir, w.vae_steps + w.rnn_steps, resume_step=-1)
  counter = {'step': 0}

  def log(metrics, advance=1):
    counter['step'] += advance
    logger.write(counter['step'], metrics)

  key = jax.random.key(config.seed)
  init_key, vae_key, rnn_key, ctrl_key = jax.random.split(key, 4)
  try:
    data, env_steps, random_returns = record(env, config.run.envs, w.episodes, w.max_steps,
                                             discrete, config.seed)
  finally:
    env.close()
  logging.info('Recorded %d random-policy env steps (%d episodes, mean return %.1f).', env_steps,
               len(random_returns), np.mean(random_returns) if random_returns else np.nan)
  logger.write(0, {'random/episode_return': float(np.mean(random_returns or [0.0])),
                   'random/env_steps': env_steps})
  params = model.init(init_key)
  length = min(w.batch_length, int(data.capacity_per_env))
  params = _fit(model.vae_loss, params, data, w.vae_steps, w.batch_size, length, optim.model_lr,
                vae_key, log)
  params = _fit(model.rnn_loss, params, data, w.rnn_steps, w.batch_size, length, optim.model_lr,
                rnn_key, log)

  def replayed(key, count):
    """Dream starts: `count` replayed sequences `[B, T]` and their posterior features."""
    sample_key, observe_key = jax.random.split(key)
    batch = replay.sample(data, sample_key, count, length)
    _, features, _, _ = model.dynamics.observe(
        params['dynamics'], model.dynamics.initial(count), model.encode(params, batch),
        batch['action'], batch['is_first'].at[:, 0].set(True), observe_key)
    return batch, features

  def evaluate_policy(policy, seed):
    returns = evaluate(make_env, acting(model, params, policy),
                       lambda count: initial_carry(model, count), w.eval_episodes, seed)
    return eval_metrics(returns)

  if config.agent.policy == 'actor_critic':
    controller = _train_actor_critic(config, model, params, replayed, discrete, action_size,
                                     ctrl_key, log, evaluate_policy)
  else:
    controller = {'theta': _train_cmaes(config, model, params, replayed, discrete, action_size,
                                        ctrl_key, log, evaluate_policy)}
  policy = controller_policy(config, model, discrete, controller)
  evaluation = evaluate_policy(policy, config.seed + 10_000)
  log(evaluation, 0)
  checkpointer = common.open_checkpointer(workdir)
  checkpointer.save(counter['step'], {'world_model': params, 'controller': controller},
                    {'config': config.to_dict(), 'env_steps': env_steps})
  checkpointer.close()
  logger.close()
  plot_curve(workdir, EVAL_RETURN_KEY)
  return {'env_step': env_steps, 'updates': counter['step'],
          'eval_return': evaluation[EVAL_RETURN_KEY],
          'eval_return_std': evaluation[f'{EVAL_RETURN_KEY}_std'],
          'seconds': time.monotonic() - start_time}


def _train_cmaes(config, model, params, replayed, discrete, action_size, key, log,
                 evaluate_policy) -> jax.Array:
  """CMA-ES over the linear controller; fitness = mean dream return over `rollouts` starts."""
  w = config.worldmodels
  size = controller_size(model.dynamics.feature_size, action_size)

  @jax.jit
  def generation(state, key):
    ask_key, start_key, dream_key = jax.random.split(key, 3)
    candidates = cmaes.ask(state, ask_key, w.population)
    begin = replayed(start_key, w.rollouts)[1][:, -1]
    fitness = jax.vmap(lambda theta: dream_return(model, params, theta, begin, w.dream_horizon,
                                                  discrete, dream_key))(candidates)
    return cmaes.tell(state, candidates, fitness), fitness

  state = cmaes.init(jnp.zeros(size), w.sigma)
  for index in range(w.generations):
    state, fitness = generation(state, jax.random.fold_in(key, index))
    metrics = {'cmaes/fitness_mean': float(jnp.mean(fitness)),
               'cmaes/fitness_best': float(jnp.max(fitness)), 'cmaes/sigma': float(state.sigma)}
    if (index + 1) % 10 == 0 or index + 1 == w.generations:
      theta = state.mean
      metrics.update(evaluate_policy(
          lambda f, _, theta=theta: controller_action(theta, f, discrete), config.seed + index))
      logging.info('CMA-ES generation %d: dream fitness %.1f, real return %.1f', index + 1,
                   metrics['cmaes/fitness_mean'], metrics[EVAL_RETURN_KEY])
    log(metrics)
  return state.mean


def _train_actor_critic(config, model, params, replayed, discrete, action_size, key, log,
                        evaluate_policy) -> dict:
  """The latent actor-critic (`behavior.py`) trained in the dream of the frozen MDN-RNN."""
  agent = Agent(config, model.obs_space, discrete, action_size, model=model)
  state = agent.init(key)
  state = state.replace(params={**state.params, 'world_model': params})
  rollouts = config.worldmodels.batch_size

  @jax.jit
  def update(state, key):
    start_key, img_key = jax.random.split(key)
    batch, features = replayed(start_key, rollouts)
    starts = agent.behavior.starts(params, features, batch)
    start_cont = 1.0 - batch['is_terminal'].reshape(-1).astype(jnp.float32)
    fields, _, metrics = agent.behavior_update(state, params, starts, start_cont, img_key)
    return state.replace(**fields), metrics

  steps, every = config.worldmodels.ac_steps, 100
  for index in range(steps):
    state, metrics = update(state, jax.random.fold_in(key, index))
    if (index + 1) % every == 0 or index + 1 == steps:  # short runs log their last update too
      log(jax.device_get(metrics), index % every + 1)
  return {'actor': state.params['actor'], 'critic': state.params['critic']}
