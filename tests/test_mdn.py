"""World Models math: MDN likelihood and sampling, the VAE's ELBO terms, CMA-ES."""

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.agents import cmaes
from dreamerjax.models import mdn, vae


def _stats(logits, means, stds):
  as_array = lambda x: jnp.asarray(x, jnp.float32)[None]  # noqa: E731  one dimension: [1, K]
  return {'logits': as_array(logits), 'mean': as_array(means), 'log_std': jnp.log(as_array(stds))}


def test_mdn_nll_matches_hand_computation():
  # One component: the Gaussian NLL 0.5 ((x - m) / s)^2 + log s + 0.5 log 2 pi.
  single = mdn.nll(_stats([0.0], [0.0], [2.0]), jnp.array([0.5]))
  np.testing.assert_allclose(single, 0.5 * 0.25**2 + np.log(2.0) + 0.5 * np.log(2 * np.pi),
                             rtol=1e-6)
  # Two components with weights 0.25 / 0.75 (logits log 1, log 3).
  stats = _stats([0.0, np.log(3.0)], [-1.0, 2.0], [0.5, 1.0])
  x = 0.3
  density = lambda m, s: np.exp(-0.5 * ((x - m) / s)**2) / (s * np.sqrt(2 * np.pi))  # noqa: E731
  expected = -np.log(0.25 * density(-1.0, 0.5) + 0.75 * density(2.0, 1.0))
  np.testing.assert_allclose(mdn.nll(stats, jnp.array([x])), expected, rtol=1e-5)
  # Dimensions are independent: the NLL of [x, x] under two copies is twice the NLL.
  double = jax.tree.map(lambda v: jnp.concatenate([v, v], 0), stats)
  np.testing.assert_allclose(mdn.nll(double, jnp.array([x, x])), 2 * expected, rtol=1e-5)
  raw = jnp.arange(2 * 3 * 3, dtype=jnp.float32)
  assert {k: v.shape for k, v in mdn.split(raw, 2, 3).items()} == {
      'logits': (2, 3), 'mean': (2, 3), 'log_std': (2, 3)}


def test_mdn_sampling_and_temperature():
  stats = _stats([0.0, 0.0], [-3.0, 3.0], [0.1, 0.1])
  stats = jax.tree.map(lambda v: jnp.broadcast_to(v, (20_000, *v.shape)), stats)
  samples = np.asarray(mdn.sample(jax.random.key(0), stats))[:, 0]
  # An even mixture of N(-3, 0.01) and N(3, 0.01): mean 0, variance 9.01.
  assert abs(samples.mean()) < 0.1 and abs(samples.var() - 9.01) < 0.2
  np.testing.assert_allclose(mdn.mean(stats)[0], [0.0], atol=1e-6)
  # A low temperature picks the likelier component and shrinks its std by sqrt(tau).
  skewed = dict(stats, logits=stats['logits'] + jnp.array([1.0, 0.0]))
  cold = np.asarray(mdn.sample(jax.random.key(1), skewed, temperature=0.01))[:, 0]
  assert np.all(cold < 0) and abs(cold.std() - 0.01) < 0.002
  hot = np.asarray(mdn.sample(jax.random.key(1), skewed, temperature=4.0))[:, 0]
  assert 0.3 < np.mean(hot > 0) < 0.5 and abs(hot[hot < 0].std() - 0.2) < 0.02


def test_vae_elbo_terms_match_hand_computation():
  stats = {'mean': jnp.array([[0.0, 1.0]]), 'std': jnp.array([[1.0, 0.5]])}
  recon, kl = vae.elbo_terms(jnp.array([[1.0, 2.0]]), jnp.zeros((1, 2)), stats)
  np.testing.assert_allclose(recon, [5.0])
  # 0.5 * sum(m^2 + s^2 - 1 - 2 log s) = 0.5 * (0 + (1 + 0.25 - 1 + 2 log 2)).
  np.testing.assert_allclose(kl, [0.5 * (0.25 + 2 * np.log(2.0))], rtol=1e-6)
  _, floored = vae.elbo_terms(jnp.zeros((1, 2)), jnp.zeros((1, 2)), stats, kl_tolerance=0.5)
  np.testing.assert_allclose(floored, [1.0])  # max(0.818, 0.5 nats x 2 dimensions)
  embed = jnp.concatenate([stats['mean'], stats['std']], -1)
  np.testing.assert_allclose(vae.gaussian_stats_from_embed(embed)['std'], stats['std'])


def test_cmaes_finds_the_optimum_of_an_ill_conditioned_quadratic():
  scales = jnp.arange(1.0, 9.0)
  fitness = lambda x: -jnp.sum(scales * jnp.square(x - 3.0), -1)  # noqa: E731
  state = cmaes.init(jnp.zeros(8), sigma=1.0)
  tell = jax.jit(cmaes.tell)
  for generation in range(120):
    candidates = cmaes.ask(state, jax.random.key(generation), 12)
    state = tell(state, candidates, fitness(candidates))
  np.testing.assert_allclose(state.mean, 3.0, atol=1e-3)
