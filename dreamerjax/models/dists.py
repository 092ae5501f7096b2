"""Distributions over latents and actions, as small pure functions on arrays.

Latent statistics travel through scans as plain dicts of arrays (`{'logits': [..., G, K]}` for
categorical latents, `{'mean': [..., S], 'std': [..., S]}` for Gaussian ones), so that one code path
serves both and pytrees stay simple.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from dreamerjax.models import ops

tfd = tfp.distributions


def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
  """Mixes `unimix` of a uniform distribution into softmax(logits); returns log-probabilities."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
  if unimix > 0:
    probs = (1.0 - unimix) * probs + unimix / probs.shape[-1]
  return jnp.log(probs)


# ----------------------------------------------------------------------------- latent: categorical


def categorical_probs(logits: jax.Array) -> jax.Array:
  """The probabilities of normalized log-probabilities (`unimix_logits`, which every categorical
  here comes from): `exp(logits)`, equal to their softmax without its two reductions over K (the
  1m update, K = 4, is 1-2.5% faster for it: docs/benchmarks.md). The gradient differs from the
  softmax's only by a multiple of the probabilities, which the `log` and softmax of
  `unimix_logits` map to zero: gradients with respect to the raw logits are the softmax's."""
  return jnp.exp(logits)


def categorical_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
  """One-hot sample `[..., G, K]` of the normalized log-probabilities `logits` (`unimix_logits`),
  with straight-through gradients to the probabilities.

  Drawn by inverting the cumulative distribution: one uniform number `u` per group, and the class
  is the number of cumulative probabilities at or below `u` (times their total, so rounding in the
  sum cannot push `u` past the last class). That takes one random number per group where an
  exponential race or the Gumbel-max draw of `jax.random.categorical` take one per class: at 12m
  (1024 x 32 x 16 per imagination step) a draw takes 0.75 ms instead of 2.7 (docs/benchmarks.md).
  """
  probs = categorical_probs(logits)
  cdf = jnp.cumsum(probs, -1)
  u = jax.random.uniform(key, logits.shape[:-1] + (1,)) * cdf[..., -1:]
  index = jnp.minimum(jnp.sum(cdf <= u, -1), logits.shape[-1] - 1)
  onehot = jax.nn.one_hot(index, logits.shape[-1], dtype=jnp.float32)
  return ops.straight_through(onehot, probs)


def categorical_mode(logits: jax.Array) -> jax.Array:
  onehot = jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.float32)
  return ops.straight_through(onehot, categorical_probs(logits))


def categorical_kl(lhs_logits: jax.Array, rhs_logits: jax.Array) -> jax.Array:
  """KL(lhs || rhs) summed over groups: `[..., G, K] -> [...]`."""
  lhs_logp = jax.nn.log_softmax(lhs_logits, -1)
  rhs_logp = jax.nn.log_softmax(rhs_logits, -1)
  return jnp.sum(jnp.exp(lhs_logp) * (lhs_logp - rhs_logp), (-2, -1))


def categorical_entropy(logits: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits, -1)
  return -jnp.sum(jnp.exp(logp) * logp, -1)


# ----------------------------------------------------------------------------- latent: Gaussian


def gaussian_sample(key: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Reparameterized sample, differentiable in mean and std."""
  return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_kl(lhs_mean, lhs_std, rhs_mean, rhs_std) -> jax.Array:
  """KL between diagonal Gaussians summed over the last axis `[..., S] -> [...]`."""
  kl = tfd.kl_divergence(tfd.Normal(lhs_mean, lhs_std), tfd.Normal(rhs_mean, rhs_std))
  return jnp.sum(kl, -1)


# ----------------------------------------------------------------------------- latent: either kind


def latent_sample(key: jax.Array, stats: dict, mode: bool = False) -> jax.Array:
  if 'logits' in stats:
    return categorical_mode(stats['logits']) if mode else categorical_sample(key, stats['logits'])
  return stats['mean'] if mode else gaussian_sample(key, stats['mean'], stats['std'])


def latent_kl(lhs: dict, rhs: dict) -> jax.Array:
  if 'logits' in lhs:
    return categorical_kl(lhs['logits'], rhs['logits'])
  return gaussian_kl(lhs['mean'], lhs['std'], rhs['mean'], rhs['std'])


def latent_entropy(stats: dict) -> jax.Array:
  if 'logits' in stats:
    return jnp.sum(categorical_entropy(stats['logits']), -1)
  return jnp.sum(tfd.Normal(stats['mean'], stats['std']).entropy(), -1)


# ----------------------------------------------------------------------------- actions


class ActionDist:
  """The actor's output distribution: categorical (discrete) or bounded normal (continuous).

  Discrete samples are one-hot vectors `[..., A]` with straight-through gradients, so that the same
  rollout code feeds actions to the dynamics for both kinds. Continuous samples lie in [-1, 1].
  """

  def __init__(self, discrete: bool, params: jax.Array, unimix: float = 0.01,
               min_std: float = 0.1, max_std: float = 1.0):
    self.discrete = discrete
    params = params.astype(jnp.float32)
    if discrete:
      self.logits = unimix_logits(params, unimix)
    else:
      mean, std = jnp.split(params, 2, -1)
      self.mean = jnp.tanh(mean)
      self.std = (max_std - min_std) * jax.nn.sigmoid(std + 2.0) + min_std

  def sample(self, key: jax.Array) -> jax.Array:
    if self.discrete:
      return categorical_sample(key, self.logits)
    # Clipping keeps a gradient of one inside the box, which dynamics backprop relies on.
    return jnp.clip(gaussian_sample(key, self.mean, self.std), -1.0, 1.0)

  def mode(self) -> jax.Array:
    return categorical_mode(self.logits) if self.discrete else self.mean

  def log_prob(self, action: jax.Array) -> jax.Array:
    action = jax.lax.stop_gradient(action)
    if self.discrete:
      return jnp.sum(action * jax.nn.log_softmax(self.logits, -1), -1)
    return jnp.sum(tfd.Normal(self.mean, self.std).log_prob(action), -1)

  def entropy(self) -> jax.Array:
    if self.discrete:
      return categorical_entropy(self.logits)
    return jnp.sum(tfd.Normal(self.mean, self.std).entropy(), -1)
