"""World Models (Ha & Schmidhuber 2018): the VAE, the MDN-RNN and the controller.

The parts fit the shared interfaces, so the diagnostics (open loop, probes) and the latent
actor-critic work on them unchanged:

* `MDNRNN` is a dynamics model with the RSSM's API (it reuses `RSSM.observe`/`imagine`): the
  deterministic state is an LSTM (or GRU) over `[z_{t-1}, a_t]`; the prior over `z_t` is a mixture
  of Gaussians per dimension (`mdn`), sampled with a temperature in the dream; the "posterior" is
  the VAE's `q(z_t | x_t)`. Features are `[h (, c), z]`.
* `WorldModelsModel` holds the VAE encoder/decoder, the MDN-RNN and reward/continue heads, with
  the `WorldModel` methods the agent, planner and diagnostics use.
* The controller is linear, `a = W [z, h] + b` (`controller_action`), scored by its return in the
  dream (`dream_return`); with `agent.policy=actor_critic` it is the latent actor-critic of
  `behavior.py` instead (`latent_actor_critic`).

The paper's stages that train them run in `dreamerjax.run.worldmodels`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dreamerjax.agents.behavior import ActorCritic
from dreamerjax.agents.planner import sequence_return
from dreamerjax.models import heads, mdn, nets, ops, vae
from dreamerjax.models.rssm import RSSM

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


# ----------------------------------------------------------------------------- acting


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


def latent_actor_critic(config: ml_collections.ConfigDict, model: WorldModelsModel,
                        discrete: bool) -> ActorCritic:
  """The `agent.policy=actor_critic` controller: the latent actor-critic on [z, h]."""
  return ActorCritic(model, discrete, model.action_size, config.agent, config.model)


def controller_policy(config: ml_collections.ConfigDict, model: WorldModelsModel, discrete: bool,
                      controller: dict):
  """`policy(features, key) -> action` of a trained controller (as the World Models run saves
  it, `dreamerjax.run.worldmodels`)."""
  if config.agent.policy == 'actor_critic':
    behavior = latent_actor_critic(config, model, discrete)
    return lambda features, _: behavior.action_dist(controller['actor'], features).mode()
  return lambda features, _: controller_action(controller['theta'], features, discrete)
