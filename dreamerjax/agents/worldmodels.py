"""World Models (Ha & Schmidhuber 2018): VAE, MDN-RNN and a controller trained in the dream.

The parts fit the shared interfaces, so the diagnostics (open loop, probes) and the latent
actor-critic work on them unchanged:

* `MDNRNN` is a dynamics model with the RSSM's API (it reuses `RSSM.observe`/`imagine`): the
  deterministic state is an LSTM (or GRU) over `[z_{t-1}, a_t]`; the prior over `z_t` is a mixture
  of Gaussians per dimension (`mdn`), sampled with a temperature in the dream; the "posterior" is
  the VAE's `q(z_t | x_t)`. Features are `[h (, c), z]`.
* `WorldModelsModel` holds the VAE encoder/decoder, the MDN-RNN and reward/continue heads, with
  the `WorldModel` methods the agent, planner and diagnostics use.

`run(config, workdir)` runs the paper's stages: record random-policy rollouts (into the replay
buffer of `dreamerjax.data.replay`), train the VAE with the ELBO, train the MDN-RNN on the frozen
VAE's latents, then train a linear controller `a = W [z, h] + b` with CMA-ES inside the dream
(or, with `agent.policy=actor_critic`, the latent actor-critic of `behavior.py`), and evaluate it
on the real env. Metrics go to `metrics.jsonl` with `step` counting updates over all stages.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from dreamerjax.agents import cmaes
from dreamerjax.agents.planner import sequence_return
from dreamerjax.data import replay
from dreamerjax.models import heads, mdn, nets, ops, vae
from dreamerjax.models.rssm import RSSM
from dreamerjax.run.logger import EVAL_RETURN_KEY, eval_metrics

IMAGE, VECTOR = 'image', 'vector'


class MDNRNNCell(nn.Module):
  units: int
  stoch: int
  mixtures: int
  hidden: int
  rnn: str = 'lstm'
  norm: str = 'layer'
  act: str = 'silu'

  def setup(self):
    self.inputs = nets.Dense(self.hidden, self.norm, self.act)
    self.cell = (nn.OptimizedLSTMCell(self.units) if self.rnn == 'lstm'
                 else nn.GRUCell(self.units))
    self.mixture = nn.Dense(3 * self.stoch * self.mixtures)

  def core(self, deter, cell, stoch, action):
    x = self.inputs(jnp.concatenate([stoch, action], -1))
    if self.rnn == 'lstm':
      (cell, deter), _ = self.cell((cell, deter), x)
    else:
      deter, _ = self.cell(deter, x)
    return deter, cell

  def prior(self, deter):
    return mdn.split(self.mixture(deter), self.stoch, self.mixtures)

  def __call__(self, deter, cell, stoch, action):
    deter, cell = self.core(deter, cell, stoch, action)
    return self.prior(deter)


@dataclasses.dataclass(frozen=True)
class MDNRNN(RSSM):
  """MDN-RNN behind the dynamics API. Carry: `{'deter': h, 'cell': c, 'stoch': z}` (`cell` stays
  zero for a GRU). `embed` is the VAE's `[mean, std]` of `q(z | x)`."""

  cell: MDNRNNCell
  temperature: float = 1.0

  @property
  def lstm(self) -> bool:
    return self.cell.rnn == 'lstm'

  @property
  def feature_size(self) -> int:
    return self.cell.units * (2 if self.lstm else 1) + self.cell.stoch

  def init_params(self, key, embed_size: int, action_size: int):
    del embed_size
    carry = self.initial(1)
    return self.cell.init(key, carry['deter'], carry['cell'], carry['stoch'],
                          jnp.zeros((1, action_size)))

  def initial(self, batch_size: int) -> dict:
    zeros = lambda size: jnp.zeros((batch_size, size), jnp.float32)  # noqa: E731
    return {'deter': zeros(self.cell.units), 'cell': zeros(self.cell.units),
            'stoch': zeros(self.cell.stoch)}

  def features(self, carry: dict) -> jax.Array:
    parts = [carry['deter'], carry['cell']] if self.lstm else [carry['deter']]
    return jnp.concatenate([*parts, carry['stoch']], -1)

  def state_from_features(self, features: jax.Array) -> dict:
    units = self.cell.units
    deter = features[..., :units]
    cell = features[..., units:2 * units] if self.lstm else jnp.zeros_like(deter)
    return {'deter': deter, 'cell': cell, 'stoch': features[..., -self.cell.stoch:]}

  def prior_from_features(self, params, features: jax.Array) -> dict:
    return self.cell.apply(params, features[..., :self.cell.units], method=MDNRNNCell.prior)

  def _core(self, params, carry, action):
    """`(h, c)` after one recurrent step on `[z, action]`."""
    return self.cell.apply(params, carry['deter'], carry['cell'], carry['stoch'], action,
                           method=MDNRNNCell.core)

  def _posterior_step(self, params, carry, action, embed, is_first, key, mode=False):
    carry, action = self._reset(carry, action, is_first)
    deter, cell = self._core(params, carry, action)
    post = vae.gaussian_stats_from_embed(embed)
    stoch = post['mean'] if mode else post['mean'] + post['std'] * jax.random.normal(
        key, post['mean'].shape)
    return {'deter': deter, 'cell': cell, 'stoch': stoch}, post

  def img_step(self, params, carry, action, key):
    deter, cell = self._core(params, carry, action)
    prior = self.cell.apply(params, deter, method=MDNRNNCell.prior)
    stoch = mdn.sample(key, prior, self.temperature)
    return {'deter': deter, 'cell': cell, 'stoch': stoch}, prior

  @staticmethod
  def loss(post: dict, prior: dict, free_nats: float = 0.0):
    """`(nll [B, T], zeros)`: the MDN's negative log-likelihood of the VAE mean of z_t."""
    nll = mdn.nll(prior, jax.lax.stop_gradient(post['mean']))
    return jnp.maximum(free_nats, nll), jnp.zeros_like(nll)


@dataclasses.dataclass(frozen=True)
class WorldModelsModel:
  """VAE + MDN-RNN + reward/continue heads, with the `WorldModel` methods other parts call."""

  obs_space: dict
  action_size: int
  config: ml_collections.ConfigDict          # the whole (resolved) config

  def __post_init__(self):
    m, w = self.config.model, self.config.worldmodels
    common = dict(norm=m.norm, act=m.act)
    object.__setattr__(self, 'dynamics', MDNRNN(
        MDNRNNCell(units=m.deter, stoch=m.stoch, mixtures=w.mixtures, hidden=m.hidden, rnn=w.rnn,
                   **common), temperature=w.temperature))
    modules = {}
    if IMAGE in self.obs_space:
      shape = tuple(self.obs_space[IMAGE][0])
      modules['encoder'] = nn.Sequential([nets.ImageEncoder(m.depth, kernel=m.kernel, **common),
                                          nn.Dense(2 * m.stoch)])
      modules['decoder'] = nets.ImageDecoder(shape, m.depth, **common)
    else:
      size = self.obs_space[VECTOR][0][0]
      modules['encoder'] = nn.Sequential([nets.VectorEncoder(m.encoder_layers, m.units, **common),
                                          nn.Dense(2 * m.stoch)])
      modules['decoder'] = nets.Head(size, m.decoder_layers, m.units, **common)
    modules['reward'] = nets.Head(1, m.head_layers, m.units, **common)
    modules['cont'] = nets.Head(1, m.head_layers, m.units, **common)
    object.__setattr__(self, 'modules', modules)
    object.__setattr__(self, 'bins', ops.symexp_bins(m.bins))
    object.__setattr__(self, 'obs_key', IMAGE if IMAGE in self.obs_space else VECTOR)

  def init(self, key: jax.Array):
    keys = jax.random.split(key, 5)
    shape, dtype = self.obs_space[self.obs_key]
    stoch = jnp.zeros((1, self.config.model.stoch))
    features = jnp.zeros((1, self.dynamics.feature_size))
    return {'encoder': self.modules['encoder'].init(keys[0], jnp.zeros((1, *shape), dtype)),
            'decoder': self.modules['decoder'].init(keys[1], stoch),
            'dynamics': self.dynamics.init_params(keys[2], 0, self.action_size),
            'reward': self.modules['reward'].init(keys[3], features),
            'cont': self.modules['cont'].init(keys[4], features)}

  def encode(self, params, obs) -> jax.Array:
    """`[mean, std]` of q(z | x): `[..., 2 * stoch]`."""
    stats = vae.gaussian_stats(self.modules['encoder'].apply(params['encoder'], obs[self.obs_key]))
    return jnp.concatenate([stats['mean'], stats['std']], -1)

  def _decode_z(self, params, z):
    return self.modules['decoder'].apply(params['decoder'], z)

  def decode(self, params, features) -> dict[str, jax.Array]:
    out = self._decode_z(params, features[..., -self.config.model.stoch:])
    return {self.obs_key: out if self.obs_key == IMAGE else ops.symexp(out)}

  def reward(self, params, features) -> jax.Array:
    return self.modules['reward'].apply(params['reward'], features)[..., 0]

  def cont_logits(self, params, features) -> jax.Array:
    return self.modules['cont'].apply(params['cont'], features)[..., 0]

  def _target(self, obs):
    x = obs[self.obs_key]
    return x.astype(jnp.float32) / 255.0 if self.obs_key == IMAGE else ops.symlog(x)

  def vae_loss(self, params, batch, key):
    """Negative ELBO on the observations of a batch `[B, T, ...]` (frames are independent)."""
    stats = vae.gaussian_stats_from_embed(self.encode(params, batch))
    z = stats['mean'] + stats['std'] * jax.random.normal(key, stats['mean'].shape)
    recon, kl = vae.elbo_terms(self._target(batch), self._decode_z(params, z), stats,
                               self.config.worldmodels.kl_tolerance,
                               event_dims=3 if self.obs_key == IMAGE else 1)
    loss = jnp.mean(recon + kl)
    return loss, {'vae/loss': loss, 'vae/recon': jnp.mean(recon), 'vae/kl': jnp.mean(kl)}

  def rnn_loss(self, params, batch, key):
    """MDN negative log-likelihood of the next latent, reward and continue losses, on a batch
    `[B, T, ...]` with the VAE frozen."""
    embeds = jax.lax.stop_gradient(self.encode(params, batch))
    is_first = batch['is_first'].at[:, 0].set(True)
    _, features, post, prior = self.dynamics.observe(
        params['dynamics'], self.dynamics.initial(embeds.shape[0]), embeds, batch['action'],
        is_first, key)
    nll, _ = self.dynamics.loss(post, prior)
    # The first step of a sequence has no history to predict it from.
    valid = 1.0 - is_first.astype(jnp.float32)
    nll = jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    reward = jnp.mean(heads.scalar_loss('mse', self.modules['reward'].apply(
        params['reward'], features), batch['reward'], self.bins))
    cont = jnp.mean(optax.sigmoid_binary_cross_entropy(
        self.cont_logits(params, features), 1.0 - batch['is_terminal'].astype(jnp.float32)))
    loss = nll + reward + cont
    return loss, {'rnn/loss': loss, 'rnn/nll': nll, 'rnn/reward': reward, 'rnn/cont': cont}


# ----------------------------------------------------------------------------- controller


def controller_size(feature_size: int, action_size: int) -> int:
  return (feature_size + 1) * action_size


def controller_action(theta: jax.Array, features: jax.Array, discrete: bool) -> jax.Array:
  """The linear controller `W [z, h] + b`: one-hot argmax (discrete) or tanh (continuous)."""
  action_size = theta.shape[0] // (features.shape[-1] + 1)
  weights = theta.reshape(features.shape[-1] + 1, action_size)
  out = features @ weights[:-1] + weights[-1]
  return jax.nn.one_hot(jnp.argmax(out, -1), action_size) if discrete else jnp.tanh(out)


def dream_return(model: WorldModelsModel, params, theta, starts: jax.Array, horizon: int,
                 discrete: bool, key: jax.Array) -> jax.Array:
  """Mean return of the controller `theta` in the dream from features `starts` `[N, F]`: the
  predicted rewards weighted by the probability that the episode is still running."""
  dynamics = model.dynamics
  policy = lambda features, _: controller_action(theta, features, discrete)  # noqa: E731
  _, features, _ = dynamics.imagine(params['dynamics'], dynamics.state_from_features(starts),
                                    policy, horizon, key)
  features = features[:, 1:]
  rewards = model.reward(params, features)
  conts = jax.nn.sigmoid(model.cont_logits(params, features))
  return jnp.mean(sequence_return(rewards, conts, 1.0))


# ----------------------------------------------------------------------------- stages


def record(env, num_envs: int, episodes: int, max_steps: int, discrete: bool, seed: int):
  """Random-policy rollouts into a replay buffer: `(replay_state, env steps, finished returns)`."""
  from dreamerjax.run import train  # the loop's helpers; train imports this module lazily too

  spec = train.replay_spec(env)
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


def acting(model: WorldModelsModel, params, policy):
  """`act(carry, obs, key) -> (carry, action)`: filters the observation with the MDN-RNN (the
  posterior mean of z) and acts with `policy(features, key)`; jitted."""
  @jax.jit
  def act(carry, obs, key):
    latent, _, _ = model.dynamics.obs_step(params['dynamics'], carry['latent'], carry['action'],
                                           model.encode(params, obs), obs['is_first'], key,
                                           mode=True)
    action = policy(model.dynamics.features(latent), key)
    return {'latent': latent, 'action': action}, action
  return act


def initial_carry(model: WorldModelsModel, count: int) -> dict:
  return {'latent': model.dynamics.initial(count),
          'action': jnp.zeros((count, model.action_size), jnp.float32)}


def _latent_actor_critic(config: ml_collections.ConfigDict, model: WorldModelsModel,
                         discrete: bool):
  """The `agent.policy=actor_critic` controller: the latent actor-critic on [z, h]."""
  from dreamerjax.agents.behavior import ActorCritic
  return ActorCritic(model, discrete, model.action_size, config.agent, config.model)


def controller_policy(config: ml_collections.ConfigDict, model: WorldModelsModel, discrete: bool,
                      controller: dict):
  """`policy(features, key) -> action` of a trained controller (as `run` saves it)."""
  if config.agent.policy == 'actor_critic':
    behavior = _latent_actor_critic(config, model, discrete)
    return lambda features, _: behavior.action_dist(controller['actor'], features).mode()
  return lambda features, _: controller_action(controller['theta'], features, discrete)


def restore(workdir: str, config: ml_collections.ConfigDict, obs_space: dict, discrete: bool,
            action_size: int) -> tuple[int, WorldModelsModel, dict, dict]:
  """The newest checkpoint of a World Models run: `(step, model, params, controller)`."""
  from dreamerjax.run.checkpoint import Checkpointer

  model = WorldModelsModel(obs_space, action_size, config)
  params = jax.eval_shape(model.init, jax.random.key(0))
  feature_size, key = model.dynamics.feature_size, jax.random.key(0)
  if config.agent.policy == 'actor_critic':
    actor, critic = jax.eval_shape(_latent_actor_critic(config, model, discrete).init, key)
    controller = {'actor': actor, 'critic': critic}
  else:
    controller = {'theta': jax.ShapeDtypeStruct((controller_size(feature_size, action_size),),
                                                jnp.float32)}
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    restored = checkpointer.restore_latest({'world_model': params, 'controller': controller})
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
  step, tree, _ = restored
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
  from dreamerjax.run import train
  from dreamerjax.run.checkpoint import Checkpointer
  from dreamerjax.run.logger import Logger, plot_curve

  start_time = time.monotonic()
  w, optim = config.worldmodels, config.optim
  make_env = functools.partial(train.make_env, config)
  env = make_env(config.run.envs, config.seed)
  discrete, action_size = env.act_space.discrete, env.act_space.num_actions
  model = WorldModelsModel(env.obs_space, action_size, config)
  train.prepare_workdir(config, workdir)
  logger = Logger(workdir, w.vae_steps + w.rnn_steps)
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
  checkpointer = Checkpointer(f'{workdir}/checkpoints')
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
  from dreamerjax.agents.agent import Agent

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
