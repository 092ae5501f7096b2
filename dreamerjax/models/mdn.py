"""Mixture density outputs (World Models' MDN-RNN): a mixture of K Gaussians per latent dimension.

Shapes: `logits`, `mean`, `log_std` are `[..., D, K]`, targets `[..., D]`. The density of a target
is the product over dimensions of `sum_k softmax(logits)_k N(x_d; mean_dk, exp(log_std_dk))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def split(raw: jax.Array, dims: int, mixtures: int) -> dict:
  """Raw head outputs `[..., 3 * D * K]` -> `{'logits', 'mean', 'log_std'}` each `[..., D, K]`."""
  raw = raw.reshape(*raw.shape[:-1], dims, 3 * mixtures).astype(jnp.float32)
  logits, mean, log_std = jnp.split(raw, 3, -1)
  return {'logits': logits, 'mean': mean, 'log_std': jnp.clip(log_std, -7.0, 3.0)}


def nll(stats: dict, target: jax.Array) -> jax.Array:
  """Negative log-likelihood `[...]` of `target` `[..., D]`, summed over the D dimensions."""
  target = target[..., None]
  log_normal = (-0.5 * jnp.square((target - stats['mean']) * jnp.exp(-stats['log_std']))
                - stats['log_std'] - LOG_SQRT_2PI)
  log_mix = jax.nn.log_softmax(stats['logits'], -1)
  return -jnp.sum(jax.nn.logsumexp(log_mix + log_normal, -1), -1)


def sample(key: jax.Array, stats: dict, temperature: float = 1.0) -> jax.Array:
  """A sample `[..., D]`. Temperature tau divides the mixture logits and scales the variances
  (std by sqrt(tau)), as in World Models: tau > 1 makes the dream more uncertain."""
  component_key, noise_key = jax.random.split(key)
  component = jax.random.categorical(component_key, stats['logits'] / temperature, -1)
  pick = lambda x: jnp.take_along_axis(x, component[..., None], -1)[..., 0]  # noqa: E731
  mean, std = pick(stats['mean']), jnp.exp(pick(stats['log_std'])) * jnp.sqrt(temperature)
  return mean + std * jax.random.normal(noise_key, mean.shape)


def mean(stats: dict) -> jax.Array:
  """The mixture mean `[..., D]`."""
  return jnp.sum(jax.nn.softmax(stats['logits'], -1) * stats['mean'], -1)
