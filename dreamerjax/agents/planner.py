"""CEM planning over a learned world model (PlaNet, Hafner et al. 2019).

For every env, `iterations` rounds of: sample `candidates` action sequences `[C, H, A]` from the
current belief, roll them out open loop from the env's posterior state (`openloop.rollout_actions`,
the action-sequence form of `dynamics.imagine`), score them by the predicted discounted return
`sum_t discount^t * prod_{s<t} cont_s * reward_t`, and refit the belief to the `elites` best.
Continuous actions: a diagonal Gaussian clipped to [-1, 1] (as in PlaNet). Discrete actions: a
categorical per step, refit to the elites' action frequencies. The first action of the final
belief's mean (or mode) is executed. Everything runs inside jit with fixed shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from dreamerjax.models.openloop import rollout_actions


def sequence_return(rewards: jax.Array, conts: jax.Array, discount: float) -> jax.Array:
  """Discounted return `[C]` of predicted rewards and continue probabilities `[C, H]`: the reward
  of step t counts if the episode continued through steps 1 .. t-1."""
  alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(conts[:, :1]), conts[:, :-1]], 1), 1)
  discounts = discount ** jnp.arange(rewards.shape[1], dtype=jnp.float32)
  return jnp.sum(rewards * alive * discounts, 1)


def cem(score: Callable[[jax.Array, jax.Array], jax.Array], discrete: bool, horizon: int,
        action_size: int, config: ml_collections.ConfigDict, key: jax.Array) -> jax.Array:
  """Cross-entropy method over action sequences; `score(actions [C, H, A], key) -> [C]`.

  Returns the final belief's action sequence `[H, A]`: its mean (continuous) or its most likely
  action per step, one-hot (discrete).
  """
  candidates, elites = config.candidates, config.elites

  def sample(belief, key):
    if discrete:
      index = jax.random.categorical(key, jnp.log(belief[0] + 1e-8), -1,
                                     shape=(candidates, horizon))
      return jax.nn.one_hot(index, action_size)
    mean, std = belief
    noise = jax.random.normal(key, (candidates, horizon, action_size))
    return jnp.clip(mean + std * noise, -1.0, 1.0)

  def iteration(belief, key):
    sample_key, score_key = jax.random.split(key)
    actions = sample(belief, sample_key)
    _, best = jax.lax.top_k(score(actions, score_key), elites)
    chosen = actions[best]
    if discrete:
      return (jnp.mean(chosen, 0),), None
    return (jnp.mean(chosen, 0), jnp.std(chosen, 0)), None

  if discrete:
    belief = (jnp.full((horizon, action_size), 1.0 / action_size),)
  else:
    belief = (jnp.zeros((horizon, action_size)), jnp.ones((horizon, action_size)))
  belief, _ = jax.lax.scan(iteration, belief, jax.random.split(key, config.iterations))
  if discrete:
    return jax.nn.one_hot(jnp.argmax(belief[0], -1), action_size)
  return belief[0]


@dataclasses.dataclass(frozen=True)
class Planner:
  """Acts by CEM over `world_model` (any dynamics with `img_step` and `features`)."""

  world_model: object                        # WorldModel: dynamics, reward, cont_logits
  discrete: bool
  action_size: int
  config: ml_collections.ConfigDict          # the `planner` section

  def score(self, params, start: dict, actions: jax.Array, key: jax.Array) -> jax.Array:
    """Predicted returns `[C]` of action sequences `[C, H, A]` from one state (leaves
    `[1, ...]`)."""
    count = actions.shape[0]
    carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *x.shape[1:])), start)
    _, feats = rollout_actions(self.world_model.dynamics, params['dynamics'], carry, actions, key)
    feats = feats[:, 1:]
    rewards = self.world_model.reward(params, feats)
    conts = jax.nn.sigmoid(self.world_model.cont_logits(params, feats))
    return sequence_return(rewards, conts, self.config.discount)

  def plan(self, params, latent: dict, key: jax.Array) -> jax.Array:
    """Planned actions `[N, A]` for the posterior states `latent` (leaves `[N, ...]`)."""

    def one(state, key):
      state = jax.tree.map(lambda x: x[None], state)
      return cem(lambda actions, k: self.score(params, state, actions, k), self.discrete,
                 self.config.horizon, self.action_size, self.config, key)[0]

    count = jax.tree.leaves(latent)[0].shape[0]
    return jax.vmap(one)(latent, jax.random.split(key, count))

  def act(self, params, latent: dict, key: jax.Array, explore: bool) -> jax.Array:
    """Planned actions with exploration noise when `explore` (training): Gaussian noise of std
    `explore` for continuous actions, a uniformly random action with probability `explore` for
    discrete ones."""
    plan_key, noise_key, choice_key = jax.random.split(key, 3)
    action = self.plan(params, latent, plan_key)
    if not explore or self.config.explore == 0:
      return action
    amount = self.config.explore
    if self.discrete:
      random = jax.nn.one_hot(jax.random.randint(noise_key, action.shape[:1], 0, self.action_size),
                              self.action_size)
      pick = jax.random.uniform(choice_key, action.shape[:1]) < amount
      return jnp.where(pick[:, None], random, action)
    return jnp.clip(action + amount * jax.random.normal(noise_key, action.shape), -1.0, 1.0)
