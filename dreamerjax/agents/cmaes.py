"""A compact CMA-ES (Hansen's tutorial, arXiv:1604.00772) as pure JAX functions, maximizing.

    state = cmaes.init(jnp.zeros(n), sigma=0.5)
    for generation in range(G):
      candidates = cmaes.ask(state, key, population)       # [P, n]
      state = cmaes.tell(state, candidates, fitness)       # fitness [P], higher is better
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class CMAState:
  mean: jax.Array          # [n]
  sigma: jax.Array         # step size
  cov: jax.Array           # [n, n]
  path_c: jax.Array        # evolution path of the covariance [n]
  path_s: jax.Array        # evolution path of the step size [n]
  basis: jax.Array         # eigenvectors of cov [n, n]
  scales: jax.Array        # sqrt of the eigenvalues [n]
  generation: jax.Array


def init(mean: jax.Array, sigma: float) -> CMAState:
  n = mean.shape[0]
  eye = jnp.eye(n)
  return CMAState(mean=mean.astype(jnp.float32), sigma=jnp.float32(sigma), cov=eye,
                  path_c=jnp.zeros(n), path_s=jnp.zeros(n), basis=eye, scales=jnp.ones(n),
                  generation=jnp.int32(0))


def ask(state: CMAState, key: jax.Array, population: int) -> jax.Array:
  """Candidates `[P, n]` ~ N(mean, sigma^2 cov)."""
  noise = jax.random.normal(key, (population, state.mean.shape[0]))
  return state.mean + state.sigma * (noise * state.scales) @ state.basis.T


def _constants(n: int, population: int):
  parents = population // 2
  weights = jnp.log(parents + 0.5) - jnp.log(jnp.arange(1, parents + 1, dtype=jnp.float32))
  weights = weights / jnp.sum(weights)
  mueff = 1.0 / jnp.sum(jnp.square(weights))
  c_c = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
  c_s = (mueff + 2) / (n + mueff + 5)
  c_1 = 2 / ((n + 1.3) ** 2 + mueff)
  c_mu = jnp.minimum(1 - c_1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
  damping = 1 + 2 * jnp.maximum(0.0, jnp.sqrt((mueff - 1) / (n + 1)) - 1) + c_s
  chi_n = jnp.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2))
  return parents, weights, mueff, c_c, c_s, c_1, c_mu, damping, chi_n


def tell(state: CMAState, candidates: jax.Array, fitness: jax.Array) -> CMAState:
  """Updates mean, step size and covariance from candidates `[P, n]` and their fitness `[P]`."""
  population, n = candidates.shape
  parents, weights, mueff, c_c, c_s, c_1, c_mu, damping, chi_n = _constants(n, population)
  best = jnp.argsort(-fitness)[:parents]
  steps = (candidates[best] - state.mean) / state.sigma          # [mu, n]
  step = weights @ steps
  mean = state.mean + state.sigma * step
  inv_sqrt = (state.basis / state.scales) @ state.basis.T
  path_s = (1 - c_s) * state.path_s + jnp.sqrt(c_s * (2 - c_s) * mueff) * inv_sqrt @ step
  generation = state.generation + 1
  norm_s = jnp.linalg.norm(path_s)
  hsig = (norm_s / jnp.sqrt(1 - (1 - c_s) ** (2 * generation)) / chi_n
          < 1.4 + 2 / (n + 1)).astype(jnp.float32)
  path_c = (1 - c_c) * state.path_c + hsig * jnp.sqrt(c_c * (2 - c_c) * mueff) * step
  rank_mu = (steps * weights[:, None]).T @ steps
  cov = ((1 - c_1 - c_mu) * state.cov
         + c_1 * (jnp.outer(path_c, path_c) + (1 - hsig) * c_c * (2 - c_c) * state.cov)
         + c_mu * rank_mu)
  cov = 0.5 * (cov + cov.T)
  sigma = state.sigma * jnp.exp((c_s / damping) * (norm_s / chi_n - 1))
  eigenvalues, basis = jnp.linalg.eigh(cov)
  return CMAState(mean=mean, sigma=sigma, cov=cov, path_c=path_c, path_s=path_s, basis=basis,
                  scales=jnp.sqrt(jnp.maximum(eigenvalues, 1e-12)), generation=generation)
