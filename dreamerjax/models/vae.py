"""The VAE of World Models: q(z|x) diagonal Gaussian, p(z) = N(0, I), p(x|z) unit-variance Gaussian.

`elbo_terms` gives the two terms of the negative ELBO per example (reconstruction and KL), with the
KL floored at `kl_tolerance` nats per latent dimension as in the paper's implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_stats(raw: jax.Array, min_std: float = 1e-3) -> dict:
  """Encoder outputs `[..., 2 * D]` -> `{'mean', 'std'}` `[..., D]`."""
  mean, raw_std = jnp.split(raw.astype(jnp.float32), 2, -1)
  return {'mean': mean, 'std': jax.nn.softplus(raw_std) + min_std}


def gaussian_stats_from_embed(embed: jax.Array) -> dict:
  """`[mean, std]` concatenated `[..., 2 * D]` (as `WorldModelsModel.encode` returns) -> stats."""
  mean, std = jnp.split(embed, 2, -1)
  return {'mean': mean, 'std': std}


def kl_standard_normal(mean: jax.Array, std: jax.Array) -> jax.Array:
  """KL(N(mean, std^2) || N(0, 1)) summed over the last axis: 0.5 sum(m^2 + s^2 - 1 - 2 log s)."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.square(std) - 1.0 - 2.0 * jnp.log(std), -1)


def elbo_terms(target: jax.Array, reconstruction: jax.Array, stats: dict,
               kl_tolerance: float = 0.0, event_dims: int = 1) -> tuple[jax.Array, jax.Array]:
  """`(reconstruction, kl)` per example: the squared error summed over the last `event_dims`
  axes, and `max(KL(q(z|x) || N(0, I)), kl_tolerance * D)`. The negative ELBO is their sum (up to
  the Gaussian's constant)."""
  axes = tuple(range(-event_dims, 0))
  recon = jnp.sum(jnp.square(reconstruction - target), axes)
  kl = kl_standard_normal(stats['mean'], stats['std'])
  return recon, jnp.maximum(kl, kl_tolerance * stats['mean'].shape[-1])
