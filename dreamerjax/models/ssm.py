"""State-space dynamics: a stack of diagonal linear recurrences (LRU / S5 style, as R2I uses)
behind the same API as `rssm.RSSM`.

As in the Transformer, step t reads a token of the previous latent and action, `u_t = in(z_{t-1},
a_{t-1})` (zeros on `is_first`), the prior over z_t comes from the sequence model's output `h_t`,
the posterior from the observation embedding alone (`sequence_core`), and the heads see
`features = concat(h_t, flatten(z_t))`. Each of `layers` residual blocks runs the recurrence

  m_t = a_t * lambda ⊙ m_{t-1} + gamma ⊙ (B x_t),   y_t = Re(C m_t) + D ⊙ x_t

over a complex state m of `state` entries per layer, with `lambda = exp(-exp(nu) + i exp(theta))`
inside the unit circle (|lambda| initialized in [R_MIN, R_MAX]), `gamma = sqrt(1 - |lambda|^2)`
and `a_t = 0` on `is_first` (the memory resets with the episode). The recurrence is linear in m,
so training (`observe`) computes all T steps of each layer in one `lax.associative_scan` (depth
log T); stepping (`obs_step`, `img_step`) runs the same blocks on one step from the carried
memory and gives the same outputs as the scan (tests/test_ssm.py).

  carry = {'deter': h [B, W], 'stoch': z [B, G, K], 'memory': [B, layers, 2 * state]}

(`memory` holds the real parts, then the imaginary parts, so the carry stays real.)
`start_states` recomputes the memory after every step of a replayed batch for imagination to
start from, as the Transformer recomputes its caches.
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

# Range of the initial magnitudes |lambda|: 0.999 keeps 89% of an input after 120 steps.
R_MIN, R_MAX = 0.9, 0.999
MAX_PHASE = 2 * jnp.pi


def _combine(earlier, later):
  """Composition of the affine maps `m -> a m + b` (earlier first): associative, for the scan."""
  decay_earlier, input_earlier = earlier
  decay_later, input_later = later
  return decay_later * decay_earlier, decay_later * input_earlier + input_later


def linear_scan(decay: jax.Array, inputs: jax.Array, initial: jax.Array) -> jax.Array:
  """All states of `m_t = decay_t * m_{t-1} + inputs_t` from `m_{-1} = initial`, in one parallel
  scan over time. `decay`, `inputs` `[B, T, N]`, `initial` `[B, N]` -> `[B, T, N]`."""
  inputs = inputs.at[:, 0].add(decay[:, 0] * initial)
  return jax.lax.associative_scan(_combine, (decay, inputs), axis=1)[1]


class LinearRecurrence(nn.Module):
  """One diagonal complex linear recurrence, `[B, T, W] -> [B, T, W]` (see the module docstring)."""

  state: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, keep):
    """x `[B, T, W]`, memory `[B, 2 * state]` (the state before step 0), keep `[B, T]` (0 where
    the step starts an episode) -> (y `[B, T, W]`, memories `[B, T, 2 * state]`)."""
    width = x.shape[-1]
    uniform = lambda low, high: lambda key, shape: jax.random.uniform(  # noqa: E731
        key, shape, minval=low, maxval=high)
    # -log|lambda| = exp(nu) with |lambda|^2 uniform in [R_MIN^2, R_MAX^2] (ring initialization).
    nu = self.param('nu', lambda key, shape: jnp.log(-0.5 * jnp.log(
        uniform(R_MIN ** 2, R_MAX ** 2)(key, shape))), (self.state,))
    theta = self.param('theta', lambda key, shape: jnp.log(
        uniform(1e-3, MAX_PHASE)(key, shape)), (self.state,))
    normal = lambda scale: nn.initializers.normal(scale)  # noqa: E731
    b_real, b_imag = (self.param(name, normal((2 * width) ** -0.5), (width, self.state))
                      for name in ('b_real', 'b_imag'))
    c_real, c_imag = (self.param(name, normal(self.state ** -0.5), (self.state, width))
                      for name in ('c_real', 'c_imag'))
    skip = self.param('d', normal(1.0), (width,))
    magnitude = jnp.exp(-jnp.exp(nu))
    eigen = magnitude * jnp.exp(1j * jnp.exp(theta))                       # [N] complex
    gamma = jnp.sqrt(1.0 - jnp.square(magnitude))
    x32 = x.astype(jnp.float32)
    inputs = (x32 @ (b_real + 1j * b_imag)) * gamma                          # [B, T, N]
    decay = eigen * keep.astype(jnp.float32)[..., None]
    real, imag = jnp.split(memory, 2, -1)
    states = linear_scan(decay, inputs, real + 1j * imag)
    y = jnp.real(states @ (c_real + 1j * c_imag)) + skip * x32
    return y.astype(x.dtype), jnp.concatenate([jnp.real(states), jnp.imag(states)], -1)


class RecurrentBlock(nn.Module):
  """Pre-norm residual block: linear recurrence, activation, gated linear output."""

  state: int
  norm: str = 'layer'
  act: str = 'silu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, keep):
    width = x.shape[-1]
    y, memories = LinearRecurrence(self.state, self.dtype)(nets.Norm(self.norm)(x), memory, keep)
    y = nets.activation(self.act)(y)
    gated = nn.Dense(width, dtype=self.dtype)(y) * jax.nn.sigmoid(
        nn.Dense(width, dtype=self.dtype)(y))
    return x + gated.astype(x.dtype), memories


class SSMCore(SequenceCore, kw_only=True):
  state: int            # complex state entries per layer

  def setup(self):
    super().setup()
    self.blocks = [RecurrentBlock(self.state, self.norm, self.act, self.dtype)
                   for _ in range(self.layers)]

  def sequence(self, stoch, action, keep, memory):
    """Tokens from `stoch [B,T,G,K]` (z_{t-1}), `action [B,T,A]` (a_{t-1}), both already zero
    where `keep` `[B, T]` is 0; memory `[B, layers, 2N]` before step 0 -> (h `[B, T, W]`,
    memories `[B, T, layers, 2N]` after each step)."""
    x = self.tokens(stoch, action)
    memories = []
    for index, block in enumerate(self.blocks):
      x, layer_memory = block(x, memory[:, index], keep)
      memories.append(layer_memory)
    return self.out_norm(x).astype(jnp.float32), jnp.stack(memories, 2)

  def __call__(self, stoch, action, keep, memory, embed):
    """Used only to create all parameters at init."""
    deter, _ = self.sequence(stoch, action, keep, memory)
    return self.prior(deter), self.posterior(embed)


@dataclasses.dataclass(frozen=True)
class SSM:
  """Pure-functional state-space dynamics over an `SSMCore`'s parameters."""

  core: SSMCore

  @property
  def feature_size(self) -> int:
    return self.core.width + self.core.stoch * self.core.classes

  def initial(self, batch_size: int) -> dict:
    c = self.core
    return {'deter': jnp.zeros((batch_size, c.width), jnp.float32),
            'stoch': jnp.zeros((batch_size, c.stoch, c.classes), jnp.float32),
            'memory': jnp.zeros((batch_size, c.layers, 2 * c.state), jnp.float32)}

  def init_params(self, key: jax.Array, embed_size: int, action_size: int):
    carry = self.initial(1)
    return self.core.init(key, carry['stoch'][:, None], jnp.zeros((1, 1, action_size)),
                          jnp.ones((1, 1)), carry['memory'], jnp.zeros((1, embed_size)))

  features = staticmethod(RSSM.features)

  def state_from_features(self, features: jax.Array) -> dict:
    """A carry holding `features` and an empty memory. Use `start_states` to start with the
    memory of a replayed sequence."""
    carry = self.initial(features.shape[0])
    stoch = features[..., self.core.width:].reshape(carry['stoch'].shape)
    return {**carry, 'deter': features[..., :self.core.width], 'stoch': stoch}

  def _advance(self, params, carry, stoch_before, actions, is_first):
    """Runs `T` steps from the carry's memory: `stoch_before [B,T,G,K]` is z_{t-1} of every step
    (`carry['stoch']` first). Returns `(h [B,T,W], memories [B,T,layers,2N])`."""
    keep = 1.0 - is_first.astype(jnp.float32)
    return self.core.apply(params, stoch_before * keep[..., None, None], actions * keep[..., None],
                           keep, carry['memory'], method=SSMCore.sequence)

  def observe(self, params, carry, embeds, actions, is_first, key):
    post = self.core.apply(params, embeds, method=SSMCore.posterior)
    stoch = dists.latent_sample(key, post)                                  # [B, T, G, K]
    before = jnp.concatenate([carry['stoch'][:, None], stoch[:, :-1]], 1)
    deter, memories = self._advance(params, carry, before, actions, is_first)
    prior = self.core.apply(params, deter, method=SSMCore.prior)
    feats = jnp.concatenate([deter, stoch.reshape(*stoch.shape[:2], -1)], -1)
    carry = {'deter': deter[:, -1], 'stoch': stoch[:, -1], 'memory': memories[:, -1]}
    return carry, feats, post, prior

  def start_states(self, params, features, actions, is_first) -> dict:
    """Carries `[B*T, ...]` to imagine from, one per step of a sequence observed from a fresh
    state (`is_first[:, 0]` set): that step's features and the memory after it."""
    batch, length = is_first.shape
    stoch = features[..., self.core.width:].reshape(batch, length, self.core.stoch, -1)
    carry = self.initial(batch)
    before = jnp.concatenate([carry['stoch'][:, None], stoch[:, :-1]], 1)
    _, memories = self._advance(params, carry, before, actions, is_first)
    states = {'deter': features[..., :self.core.width], 'stoch': stoch, 'memory': memories}
    return jax.tree.map(lambda x: x.reshape(batch * length, *x.shape[2:]), states)

  def _step(self, params, carry, action, is_first, stats_of, key, mode=False):
    """One step: the new carry with z sampled from `stats(h)` (the prior, or the posterior of an
    observation), and `(h [B, W], stats)`."""
    deter, memories = self._advance(params, carry, carry['stoch'][:, None], action[:, None],
                                    is_first[:, None])
    deter = deter[:, 0]
    stats = stats_of(deter)
    stoch = dists.latent_sample(key, stats, mode)
    return {'deter': deter, 'stoch': stoch, 'memory': memories[:, 0]}, stats

  def obs_step(self, params, carry, action, embed, is_first, key, mode=False):
    post = self.core.apply(params, embed, method=SSMCore.posterior)
    carry, _ = self._step(params, carry, action, is_first, lambda deter: post, key, mode)
    return carry, post, self.core.apply(params, carry['deter'], method=SSMCore.prior)

  def img_step(self, params, carry, action, key):
    prior = lambda deter: self.core.apply(params, deter, method=SSMCore.prior)  # noqa: E731
    return self._step(params, carry, action, jnp.zeros(action.shape[:1], bool), prior, key)

  def imagine(self, params, carry, policy: Callable[[jax.Array, jax.Array], jax.Array],
              horizon: int, key, policy_aux: bool = False):
    return RSSM.imagine(self, params, carry, policy, horizon, key, policy_aux)

  loss = staticmethod(RSSM.loss)
