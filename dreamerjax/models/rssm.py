"""Recurrent state-space model (RSSM) behind the shared dynamics API.

State (`carry`): `{'deter': [B, D], 'stoch': [B, G, K] or [B, S]}`. Features fed to heads are
`concat(deter, flatten(stoch))`. The latent is categorical (`groups x classes`, unimix, straight-
through; DreamerV2/V3) or diagonal Gaussian (PlaNet/DreamerV1), chosen by `latent`.

The cell (`RSSMCell`, a linen module) holds one step; `RSSM` (plain Python) scans it over time with
explicit parameters, so every method is a pure function usable under jit/vmap/grad:

  initial(batch_size) -> carry
  observe(params, carry, embeds [B,T,E], actions [B,T,A], is_first [B,T], key)
      -> (carry, feats [B,T,F], post, prior)   # post/prior: stats dicts, [B, T, ...] leaves
  imagine(params, carry, policy, horizon, key[, policy_aux=True])
      -> (carry, feats [B,H+1,F], actions [B,H,A][, aux [B,H,...]])
  start_states(params, feats [B,T,F], actions, is_first) -> carry [B*T, ...]  # imagination starts
  loss(post, prior, free_nats) -> (dyn [B,T], rep [B,T])
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax.models import deferred_grads, dists, nets


class RSSMCell(nn.Module):
  deter: int
  hidden: int
  stoch: int                 # categorical groups, or Gaussian dimensions
  classes: int               # categorical classes per group (ignored for Gaussian)
  latent: str = 'categorical'
  blocks: int = 8
  unimix: float = 0.01
  min_std: float = 0.1
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32
  bias: bool = False         # a bias before every norm (the 2024 public code)
  prior_layers: int = 1      # hidden layers of the prior (2 in the 2024 public code)

  def setup(self):
    dense = lambda: nets.Dense(self.hidden, self.norm, self.act, self.dtype,  # noqa: E731
                               self.bias)
    self.deter_in, self.stoch_in, self.action_in = dense(), dense(), dense()
    self.gru_hidden = nets.BlockLinear(self.deter, self.blocks, self.dtype)
    self.gru_hidden_norm = nets.Norm(self.norm, self.act)
    self.gru_gates = nets.BlockLinear(3 * self.deter, self.blocks, self.dtype)
    self.prior_hidden = dense()
    self.prior_more = [dense() for _ in range(self.prior_layers - 1)]
    self.posterior_hidden = dense()
    size = self.stoch * self.classes if self.latent == 'categorical' else 2 * self.stoch
    self.prior_out = nn.Dense(size, dtype=jnp.float32)
    self.posterior_out = nn.Dense(size, dtype=jnp.float32)

  def _stats(self, raw: jax.Array) -> dict:
    raw = raw.astype(jnp.float32)
    if self.latent == 'categorical':
      logits = raw.reshape(*raw.shape[:-1], self.stoch, self.classes)
      return {'logits': dists.unimix_logits(logits, self.unimix)}
    mean, std = jnp.split(raw, 2, -1)
    return {'mean': mean, 'std': 2.0 * jax.nn.sigmoid(std / 2.0) + self.min_std}

  def core(self, deter, stoch, action):
    """Block-GRU update of the deterministic state from (deter, stoch, action)."""
    stoch = stoch.reshape(*stoch.shape[:-2], -1) if self.latent == 'categorical' else stoch
    # Scale large continuous actions down without changing their direction.
    action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
    inputs = jnp.concatenate(
        [self.deter_in(deter), self.stoch_in(stoch), self.action_in(action)], -1)
    x = self.gru_hidden(deter.astype(self.dtype), shared=inputs)
    x = self.gru_hidden_norm(x)
    # The gates stay in the block product's [blocks, N, 3 * deter / blocks] layout and the new
    # state is put back together as a concatenation of the blocks: with the gates reshaped to
    # [N, 3 * deter] instead, XLA:CPU's fused elementwise kernel ran 6x slower (its fusion
    # emitter handles a reshaping fusion root poorly).
    gates = self.gru_gates(x, blocks_major=True).astype(jnp.float32)
    reset, candidate, update = jnp.split(gates, 3, -1)
    candidate = jnp.tanh(jax.nn.sigmoid(reset) * candidate)
    update = jax.nn.sigmoid(update - 1.0)
    old = deter.reshape(-1, self.blocks, self.deter // self.blocks).transpose(1, 0, 2)
    new = update * candidate + (1.0 - update) * old
    return jnp.concatenate(list(new), -1).reshape(deter.shape)

  def prior(self, deter):
    x = self.prior_hidden(deter)
    for layer in self.prior_more:
      x = layer(x)
    return self._stats(self.prior_out(x))

  def posterior(self, deter, embed):
    return self._stats(self.posterior_out(self.posterior_hidden(
        jnp.concatenate([deter.astype(self.dtype), embed.astype(self.dtype)], -1))))

  def __call__(self, deter, stoch, action, embed):
    """Used only to create all parameters at init."""
    deter = self.core(deter, stoch, action)
    return self.prior(deter), self.posterior(deter, embed)


@dataclasses.dataclass(frozen=True)
class RSSM:
  """Pure-functional RSSM dynamics over an `RSSMCell`'s parameters."""

  cell: RSSMCell

  @property
  def feature_size(self) -> int:
    return self.cell.deter + self.cell.stoch * (
        self.cell.classes if self.cell.latent == 'categorical' else 1)

  def init_params(self, key: jax.Array, embed_size: int, action_size: int):
    carry = self.initial(1)
    return self.cell.init(key, carry['deter'], carry['stoch'], jnp.zeros((1, action_size)),
                          jnp.zeros((1, embed_size)))

  def initial(self, batch_size: int) -> dict:
    stoch_shape = ((self.cell.stoch, self.cell.classes) if self.cell.latent == 'categorical'
                   else (self.cell.stoch,))
    return {'deter': jnp.zeros((batch_size, self.cell.deter), jnp.float32),
            'stoch': jnp.zeros((batch_size, *stoch_shape), jnp.float32)}

  @staticmethod
  def features(carry: dict) -> jax.Array:
    stoch = carry['stoch']
    return jnp.concatenate([carry['deter'], stoch.reshape(stoch.shape[0], -1)], -1)

  def state_from_features(self, features: jax.Array) -> dict:
    """Inverse of `features`: `[N, F]` -> carry (imagination starts from posterior features)."""
    deter = features[..., :self.cell.deter]
    stoch = features[..., self.cell.deter:]
    if self.cell.latent == 'categorical':
      stoch = stoch.reshape(*stoch.shape[:-1], self.cell.stoch, self.cell.classes)
    return {'deter': deter, 'stoch': stoch}

  def start_states(self, params, features, actions, is_first) -> dict:
    """Carries `[B*T, ...]` to imagine from, one per observed step (`features [B, T, F]`); the
    RSSM state is its features (the Transformer also needs the context window)."""
    del params, actions, is_first
    return self.state_from_features(features.reshape(-1, features.shape[-1]))

  def _reset(self, carry, action, is_first):
    """Zeroes the state and previous action of sequences that start a new episode."""
    keep = 1.0 - is_first.astype(jnp.float32)
    carry = jax.tree.map(lambda x: x * keep.reshape(-1, *([1] * (x.ndim - 1))), carry)
    return carry, action * keep[:, None]

  def obs_step(self, params, carry, action, embed, is_first, key, mode=False):
    carry, post = self._posterior_step(params, carry, action, embed, is_first, key, mode)
    return carry, post, self.prior_from_features(params, self.features(carry))

  def prior_from_features(self, params, features: jax.Array) -> dict:
    """The prior of the states whose features are `features [..., F]`."""
    return self.cell.apply(params, features[..., :self.cell.deter], method=RSSMCell.prior)

  def _posterior_step(self, params, carry, action, embed, is_first, key, mode=False):
    """`obs_step` without the prior, which the recurrence does not need: `observe` computes the
    priors of all steps after its scan, as one product over `[T*B]` rows instead of T products
    over B rows (and no per-step gradient accumulation for the prior's weights)."""
    carry, action = self._reset(carry, action, is_first)
    deter = self.cell.apply(params, carry['deter'], carry['stoch'], action, method=RSSMCell.core)
    post = self.cell.apply(params, deter, embed, method=RSSMCell.posterior)
    return {'deter': deter, 'stoch': dists.latent_sample(key, post, mode)}, post

  def img_step(self, params, carry, action, key):
    deter = self.cell.apply(params, carry['deter'], carry['stoch'], action, method=RSSMCell.core)
    prior = self.cell.apply(params, deter, method=RSSMCell.prior)
    return {'deter': deter, 'stoch': dists.latent_sample(key, prior)}, prior

  def observe(self, params, carry, embeds, actions, is_first, key):
    length = embeds.shape[1]
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731

    def step(params, carry, inputs):
      embed, action, first, step_key = inputs
      carry, post = self._posterior_step(params, carry, action, embed, first, step_key)
      return carry, (self.features(carry), post)

    # The gradients of the cell's linear layers are computed after the loop (deferred_grads).
    keys = jax.random.split(key, length)
    carry, (feats, post) = deferred_grads.scan(
        step, params, carry,
        (time_major(embeds), time_major(actions), time_major(is_first), keys))
    prior = self.prior_from_features(params, feats)
    batch_major = lambda tree: jax.tree.map(time_major, tree)  # noqa: E731
    return carry, time_major(feats), batch_major(post), batch_major(prior)

  def imagine(self, params, carry, policy: Callable[[jax.Array, jax.Array], jax.Array],
              horizon: int, key, policy_aux: bool = False):
    """Rolls the prior forward `horizon` steps under `policy(features, key) -> action`.

    With `policy_aux`, the policy returns `(action, aux)` and the stacked `aux [B, H, ...]` is
    returned fourth (the actor's outputs, so its loss need not run it again on the same states).
    """

    def step(carry, step_key):
      policy_key, latent_key = jax.random.split(step_key)
      features = self.features(carry)
      action, aux = policy(features, policy_key) if policy_aux else (
          policy(features, policy_key), None)
      carry, _ = self.img_step(params, carry, action, latent_key)
      return carry, (features, action, aux)

    carry, (feats, actions, aux) = jax.lax.scan(step, carry, jax.random.split(key, horizon))
    feats = jnp.concatenate([feats, self.features(carry)[None]], 0)
    out = carry, jnp.swapaxes(feats, 0, 1), jnp.swapaxes(actions, 0, 1)
    return (*out, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), aux)) if policy_aux else out

  @staticmethod
  def loss(post: dict, prior: dict, free_nats: float):
    """Dynamics and representation KL terms with free nats, each `[B, T]`.

    dyn = max(free, KL(sg(post) || prior)) trains the prior; rep = max(free, KL(post || sg(prior)))
    trains the representation. Weighting them 0.5/0.1 gives DreamerV3, 0.8/0.2 KL balancing
    (DreamerV2), 1/1 the plain KL gradient (PlaNet, DreamerV1).
    """
    stop = lambda tree: jax.tree.map(jax.lax.stop_gradient, tree)  # noqa: E731
    dyn = dists.latent_kl(stop(post), prior)
    rep = dists.latent_kl(post, stop(prior))
    return jnp.maximum(free_nats, dyn), jnp.maximum(free_nats, rep)
