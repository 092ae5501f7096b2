"""Transformer dynamics (STORM / DreamerV4 style) behind the same API as `rssm.RSSM`.

Step t has a token built from the previous latent and action, `token_t = in(z_{t-1}, a_{t-1})`
(zeros on `is_first`, as the RSSM resets its state), so the transformer output `h_t` summarizes
the history before z_t exactly like the RSSM's `deter`: the prior over z_t is read from h_t, the
posterior over z_t from the observation embedding alone (time-parallel), and the heads see
`features = concat(h_t, flatten(z_t))`.

Attention is causal, pre-norm, with rotary positions, over a sliding window of `context` steps
that never reaches back across an `is_first`. Training (`observe`) runs the whole `[B, T]`
sequence in one pass. Stepping (`obs_step`, `img_step`, `imagine`) uses a fixed-size key/value
ring buffer held in the carry, so acting and imagination inside `lax.scan` keep one shape:

  carry = {'deter': h [B, W], 'stoch': z [B, G, K], 'position': [B] (step index within the
           episode of the last token), 'keys'/'values': [B, L, C, heads, W/heads] (keys stored
           rotated), 'slot_position': [B, C], 'slot_valid': [B, C]}

`start_states` rebuilds, for every step of a replayed batch, the carry that imagination starts
from (the last `context` tokens' keys and values); it recomputes one forward pass rather than
widening `observe`'s outputs, so the world model and the RSSM keep one interface.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamerjax.models import dists, nets
from dreamerjax.models.rssm import RSSM
from dreamerjax.models.sequence_core import SequenceCore

NEG_INF = -1e9


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary position embedding of `x` `[B, T, heads, D]` (D even) at `positions` `[B, T]`."""
  half = x.shape[-1] // 2
  frequencies = 1.0 / (10_000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None, None] * frequencies      # [B, T, 1, D/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  first, second = jnp.split(x.astype(jnp.float32), 2, -1)
  return jnp.concatenate([first * cos - second * sin, first * sin + second * cos],
                         -1).astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block; attends over `[cached keys, this sequence's keys]`."""

  width: int
  heads: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, cache_keys, cache_values, mask):
    """x `[B, T, W]`, cache `[B, C, heads, D]`, mask `[B, T, C + T]` -> (x, keys, values)."""
    batch, length, _ = x.shape
    head_size = self.width // self.heads
    qkv = nn.Dense(3 * self.width, use_bias=False, dtype=self.dtype)(nets.Norm(self.norm)(x))
    query, key, value = jnp.split(qkv.reshape(batch, length, 3 * self.heads, head_size), 3, 2)
    query, key = rotate(query, positions), rotate(key, positions)
    all_keys = jnp.concatenate([cache_keys.astype(key.dtype), key], 1)
    all_values = jnp.concatenate([cache_values.astype(value.dtype), value], 1)
    logits = jnp.einsum('bthd,bshd->bhts', query, all_keys).astype(jnp.float32)
    logits = jnp.where(mask[:, None], logits / jnp.sqrt(head_size), NEG_INF)
    weights = jax.nn.softmax(logits, -1).astype(self.dtype)
    attended = jnp.einsum('bhts,bshd->bthd', weights, all_values).reshape(batch, length, -1)
    x = x + nn.Dense(self.width, dtype=self.dtype)(attended).astype(x.dtype)
    hidden = nets.Dense(4 * self.width, self.norm, self.act, self.dtype)(nets.Norm(self.norm)(x))
    x = x + nn.Dense(self.width, dtype=self.dtype)(hidden).astype(x.dtype)
    return x, key.astype(jnp.float32), value.astype(jnp.float32)


class TransformerCore(SequenceCore, kw_only=True):
  heads: int

  def setup(self):
    super().setup()
    self.blocks = [Block(self.width, self.heads, self.norm, self.act, self.dtype)
                   for _ in range(self.layers)]

  def sequence(self, stoch, action, positions, cache_keys, cache_values, mask):
    """Tokens from `stoch [B,T,G,K]`, `action [B,T,A]` -> (h [B,T,W], keys, values
    `[B, T, L, heads, D]`); `cache_*` `[B, L, C, heads, D]`."""
    x = self.tokens(stoch, action)
    keys, values = [], []
    for index, block in enumerate(self.blocks):
      x, key, value = block(x, positions, cache_keys[:, index], cache_values[:, index], mask)
      keys.append(key)
      values.append(value)
    return (self.out_norm(x).astype(jnp.float32), jnp.stack(keys, 2), jnp.stack(values, 2))

  def __call__(self, stoch, action, positions, cache_keys, cache_values, mask, embed):
    """Used only to create all parameters at init."""
    deter, _, _ = self.sequence(stoch, action, positions, cache_keys, cache_values, mask)
    return self.prior(deter), self.posterior(embed)


@dataclasses.dataclass(frozen=True)
class Transformer:
  """Pure-functional Transformer dynamics over a `TransformerCore`'s parameters."""

  core: TransformerCore
  context: int

  @property
  def feature_size(self) -> int:
    return self.core.width + self.core.stoch * self.core.classes

  def initial(self, batch_size: int) -> dict:
    c = self.core
    cache = (batch_size, c.layers, self.context, c.heads, c.width // c.heads)
    return {'deter': jnp.zeros((batch_size, c.width), jnp.float32),
            'stoch': jnp.zeros((batch_size, c.stoch, c.classes), jnp.float32),
            'position': jnp.full((batch_size,), -1, jnp.int32),
            'keys': jnp.zeros(cache, jnp.float32), 'values': jnp.zeros(cache, jnp.float32),
            'slot_position': jnp.zeros((batch_size, self.context), jnp.int32),
            'slot_valid': jnp.zeros((batch_size, self.context), bool)}

  def init_params(self, key: jax.Array, embed_size: int, action_size: int):
    carry = self.initial(1)
    mask = jnp.ones((1, 1, self.context + 1), bool)
    return self.core.init(key, carry['stoch'][:, None], jnp.zeros((1, 1, action_size)),
                          jnp.zeros((1, 1), jnp.int32), carry['keys'], carry['values'], mask,
                          jnp.zeros((1, embed_size)))

  features = staticmethod(RSSM.features)

  def state_from_features(self, features: jax.Array) -> dict:
    """A carry holding `features` and an empty key/value cache (imagination then attends only
    to the steps it imagines). Use `start_states` to start with the replayed context."""
    carry = self.initial(features.shape[0])
    stoch = features[..., self.core.width:].reshape(carry['stoch'].shape)
    return {**carry, 'deter': features[..., :self.core.width], 'stoch': stoch}

  # --------------------------------------------------------------------------- one pass

  def _advance(self, params, carry, stoch_before, actions, is_first):
    """Runs the tokens of `T` steps on top of the carry's cache in one pass.

    `stoch_before [B,T,G,K]`: z_{t-1} of every step (`carry['stoch']` first). Returns
    `(h [B,T,W], positions [B,T], keys, values [B,T,L,heads,D], last_first [B,T])`, where
    `last_first[t]` is the index of the latest `is_first` at or before t (-1 if none).
    """
    batch, length = is_first.shape
    keep = 1.0 - is_first.astype(jnp.float32)
    stoch_before = stoch_before * keep[..., None, None]
    actions = actions * keep[..., None]
    steps = jnp.arange(length)
    last_first = jax.lax.cummax(jnp.where(is_first, steps, -1), axis=1)
    positions = jnp.where(last_first >= 0, steps - last_first,
                          carry['position'][:, None] + 1 + steps)
    # Sequence keys s for query t: causal, same episode, within the window of `context` steps.
    offset = steps[:, None] - steps[None, :]
    sequence_mask = ((offset >= 0) & (offset < self.context))[None] & (
        steps[None, None, :] >= last_first[:, :, None])
    cache_mask = (carry['slot_valid'][:, None, :] & (last_first < 0)[:, :, None] &
                  (positions[:, :, None] - carry['slot_position'][:, None, :] < self.context))
    mask = jnp.concatenate([cache_mask, sequence_mask], -1)
    deter, keys, values = self.core.apply(
        params, stoch_before, actions, positions, carry['keys'], carry['values'], mask,
        method=TransformerCore.sequence)
    return deter, positions, keys, values, last_first

  def _caches(self, carry, positions, keys, values, last_first):
    """The ring-buffer cache after each step t: leaves `[B, T, ...]` (slot j holds the latest
    token whose position is j mod `context`)."""
    batch, length = positions.shape
    steps = jnp.arange(length)
    slots = jax.nn.one_hot(positions % self.context, self.context, dtype=jnp.int32)  # [B,T,C]
    written = jax.lax.cummax(slots * (steps + 1)[None, :, None], axis=1) - 1          # [B,T,C]
    from_sequence = written >= 0
    index = jnp.maximum(written, 0)
    take = jax.vmap(lambda x, i: x[i])                       # per batch: [T, ...][T, C] -> [T, C]
    choose = lambda new, old: jnp.where(  # noqa: E731
        from_sequence.reshape(*from_sequence.shape, *([1] * (new.ndim - 3))), new,
        old[:, None])
    layout = lambda x: jnp.moveaxis(x, 2, 3)  # [B,T,C,L,...] -> [B,T,L,C,...]  # noqa: E731
    old_keys, old_values = (jnp.moveaxis(carry[k], 1, 2) for k in ('keys', 'values'))
    return {
        'keys': layout(choose(take(keys, index), old_keys)),
        'values': layout(choose(take(values, index), old_values)),
        'slot_position': choose(take(positions, index), carry['slot_position']),
        'slot_valid': jnp.where(from_sequence, written >= last_first[:, :, None],
                                carry['slot_valid'][:, None] & (last_first < 0)[:, :, None]),
    }

  def _last_carry(self, carry, deter, stoch, positions, keys, values, last_first):
    caches = self._caches(carry, positions, keys, values, last_first)
    caches = jax.tree.map(lambda x: x[:, -1], caches)
    return {**caches, 'deter': deter[:, -1], 'stoch': stoch[:, -1], 'position': positions[:, -1]}

  # --------------------------------------------------------------------------- API

  def observe(self, params, carry, embeds, actions, is_first, key):
    post = self.core.apply(params, embeds, method=TransformerCore.posterior)
    stoch = dists.latent_sample(key, post)                                  # [B, T, G, K]
    before = jnp.concatenate([carry['stoch'][:, None], stoch[:, :-1]], 1)
    deter, positions, keys, values, last_first = self._advance(params, carry, before, actions,
                                                               is_first)
    prior = self.core.apply(params, deter, method=TransformerCore.prior)
    feats = jnp.concatenate([deter, stoch.reshape(*stoch.shape[:2], -1)], -1)
    carry = self._last_carry(carry, deter, stoch, positions, keys, values, last_first)
    return carry, feats, post, prior

  def start_states(self, params, features, actions, is_first) -> dict:
    """Carries `[B*T, ...]` to imagine from, one per step of a sequence observed from a fresh
    state (`is_first[:, 0]` set): each holds that step's features and its `context` window."""
    batch, length = is_first.shape
    stoch = features[..., self.core.width:].reshape(batch, length, self.core.stoch, -1)
    carry = self.initial(batch)
    before = jnp.concatenate([carry['stoch'][:, None], stoch[:, :-1]], 1)
    _, positions, keys, values, last_first = self._advance(params, carry, before, actions,
                                                           is_first)
    caches = self._caches(carry, positions, keys, values, last_first)
    states = {**caches, 'deter': features[..., :self.core.width], 'stoch': stoch,
              'position': positions}
    return jax.tree.map(lambda x: x.reshape(batch * length, *x.shape[2:]), states)

  def _step(self, params, carry, action, is_first):
    deter, positions, keys, values, last_first = self._advance(
        params, carry, carry['stoch'][:, None], action[:, None], is_first[:, None])
    return deter, (positions, keys, values, last_first)

  def obs_step(self, params, carry, action, embed, is_first, key, mode=False):
    deter, rest = self._step(params, carry, action, is_first)
    prior = self.core.apply(params, deter[:, 0], method=TransformerCore.prior)
    post = self.core.apply(params, embed, method=TransformerCore.posterior)
    stoch = dists.latent_sample(key, post, mode)
    return self._last_carry(carry, deter, stoch[:, None], *rest), post, prior

  def img_step(self, params, carry, action, key):
    deter, rest = self._step(params, carry, action, jnp.zeros(action.shape[:1], bool))
    prior = self.core.apply(params, deter[:, 0], method=TransformerCore.prior)
    stoch = dists.latent_sample(key, prior)
    return self._last_carry(carry, deter, stoch[:, None], *rest), prior

  def imagine(self, params, carry, policy: Callable[[jax.Array, jax.Array], jax.Array],
              horizon: int, key, policy_aux: bool = False):
    return RSSM.imagine(self, params, carry, policy, horizon, key, policy_aux)

  loss = staticmethod(RSSM.loss)
