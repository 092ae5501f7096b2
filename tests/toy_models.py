"""A world model with known, deterministic dynamics for the diagnostics' and planner's tests.

The state is the observation itself: `x_t = x_{t-1} + shift * a_t` (the action that led into step
t), reward `x_t[0]`, never terminating. With `shift=1` it is the exact model of `toy_batch`'s data.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyDynamics:
  shift: float = 1.0

  def initial(self, batch_size):
    return {'x': jnp.zeros((batch_size, 1))}

  @staticmethod
  def features(carry):
    return carry['x']

  @staticmethod
  def state_from_features(features):
    return {'x': features}

  def img_step(self, params, carry, action, key):
    return {'x': carry['x'] + self.shift * action[..., :1]}, None

  def observe(self, params, carry, embeds, actions, is_first, key):
    return {'x': embeds[:, -1]}, embeds, None, None


@dataclasses.dataclass(frozen=True)
class ToyWorldModel:
  dynamics: ToyDynamics = ToyDynamics()

  def encode(self, params, obs):
    return obs['vector']

  def decode(self, params, features):
    return {'vector': features}

  def reward(self, params, features):
    return features[..., 0]

  def cont_logits(self, params, features):
    return jnp.full(features.shape[:-1], 20.0)


def toy_batch(batch_size=3, length=12, seed=0, episode_length=None):
  """Streams `[B, T]` of the toy system under random actions in [-1, 1]; a new episode (x = 0)
  every `episode_length` steps if given."""
  rng = np.random.default_rng(seed)
  actions = rng.uniform(-1, 1, (batch_size, length, 1)).astype(np.float32)
  is_first = np.zeros((batch_size, length), bool)
  is_first[:, 0] = True
  if episode_length:
    is_first[:, ::episode_length] = True
  actions[is_first] = 0.0
  x = np.zeros((batch_size, length, 1), np.float32)
  for t in range(length):
    previous = 0.0 if t == 0 else x[:, t - 1]
    x[:, t] = np.where(is_first[:, t, None], 0.0, previous + actions[:, t])
  return {'vector': x, 'action': actions, 'reward': x[..., 0].copy(), 'is_first': is_first,
          'is_terminal': np.zeros((batch_size, length), bool)}



