"""Math against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.models import dists, ops


def test_symlog_symexp_values():
  x = jnp.array([-10.0, -1.0, 0.0, 1.0, np.e - 1])
  np.testing.assert_allclose(ops.symlog(x), [-np.log(11), -np.log(2), 0, np.log(2), 1.0],
                             rtol=1e-6)
  np.testing.assert_allclose(ops.symexp(ops.symlog(x)), x, rtol=1e-5)
  np.testing.assert_allclose(ops.symexp(jnp.array([-1.0, 2.0])), [-(np.e - 1), np.e**2 - 1],
                             rtol=1e-6)


def test_symexp_bins():
  bins = ops.symexp_bins(5, -2.0, 2.0)
  expected = [-(np.e**2 - 1), -(np.e - 1), 0.0, np.e - 1, np.e**2 - 1]
  np.testing.assert_allclose(bins, expected, rtol=1e-6, atol=1e-7)
  assert ops.symexp_bins().shape == (255,)
  np.testing.assert_allclose(ops.symexp_bins()[jnp.array([0, 127, 254])],
                             [-np.expm1(20), 0, np.expm1(20)], rtol=1e-5)


def test_twohot_hand_values():
  bins = jnp.array([-1.0, 0.0, 1.0, 3.0])
  weights = ops.twohot(jnp.array([0.25, 2.5, 1.0, -5.0, 7.0]), bins)
  np.testing.assert_allclose(weights, [
      [0, 0.75, 0.25, 0],     # 0.25 between 0 and 1
      [0, 0, 0.25, 0.75],     # 2.5 between 1 and 3: 0.5/2 from 1, 1.5/2 from 3
      [0, 0, 1, 0],           # exactly on a bin
      [1, 0, 0, 0],           # below the range: the first bin
      [0, 0, 0, 1],           # above the range: the last bin
  ], atol=1e-6)
  # Inside the range the expectation recovers the value.
  np.testing.assert_allclose(jnp.sum(weights[:3] * bins, -1), [0.25, 2.5, 1.0], atol=1e-6)


def test_twohot_mean_and_loss():
  bins = jnp.array([0.0, 1.0, 2.0])
  logits = jnp.log(jnp.array([0.2, 0.3, 0.5]))
  np.testing.assert_allclose(ops.twohot_mean(logits, bins), 0.3 + 1.0, rtol=1e-6)
  # Target 1.5 -> weights (0, .5, .5); loss = -(.5 log .3 + .5 log .5).
  np.testing.assert_allclose(ops.twohot_loss(logits, jnp.array(1.5), bins),
                             -(0.5 * np.log(0.3) + 0.5 * np.log(0.5)), rtol=1e-6)


def test_twohot_mean_is_accurate_over_symexp_bins():
  # The outer symexp bins are about +-5e8: a plain float32 sum over them gives -0.66 (jit) or -1
  # instead of 0 for uniform logits, and a different error for every reduction order.
  bins = ops.symexp_bins(31)
  mean = jax.jit(ops.twohot_mean)
  np.testing.assert_array_equal(mean(jnp.zeros((2, 31)), bins), 0.0)
  for scale in (1e-3, 1.0, 30.0):
    logits = scale * jax.random.normal(jax.random.key(0), (4, 31))
    logits64 = np.asarray(logits, np.float64)
    probs = np.exp(logits64 - logits64.max(-1, keepdims=True))
    exact = (probs / probs.sum(-1, keepdims=True) * np.asarray(bins, np.float64)).sum(-1)
    np.testing.assert_allclose(mean(logits, bins), exact, rtol=1e-4, atol=1e-2)
  # Gradient at uniform logits: d mean / d logit_i = p_i (b_i - mean) = b_i / 31.
  grad = jax.grad(lambda logits: ops.twohot_mean(logits, bins))(jnp.zeros(31))
  np.testing.assert_allclose(grad, bins / 31, rtol=1e-5, atol=1e-6)


def test_lambda_returns_hand_computed():
  reward = jnp.array([1.0, 2.0])
  cont = jnp.array([0.5, 1.0])
  value = jnp.array([10.0, 20.0, 30.0])
  lam = 0.5
  # R_1 = 2 + 1 * (0.5 * 30 + 0.5 * 30) = 32; R_0 = 1 + 0.5 * (0.5 * 20 + 0.5 * 32) = 14.
  np.testing.assert_allclose(ops.lambda_returns(reward, cont, value, lam), [14.0, 32.0])
  # lam = 0: one-step TD targets; lam = 1: discounted Monte Carlo with bootstrap at the end.
  np.testing.assert_allclose(ops.lambda_returns(reward, cont, value, 0.0), [11.0, 32.0])
  np.testing.assert_allclose(ops.lambda_returns(reward, cont, value, 1.0), [1 + 0.5 * 32, 32.0])
  # Batched over trailing axes.
  batched = ops.lambda_returns(jnp.stack([reward] * 3, -1), jnp.stack([cont] * 3, -1),
                               jnp.stack([value] * 3, -1), lam)
  np.testing.assert_allclose(batched, np.stack([[14.0, 32.0]] * 3, -1))
  with pytest.raises(ValueError, match='one more step'):
    ops.lambda_returns(reward, cont, value[:2], lam)


def test_percentile_return_normalization():
  returns = jnp.arange(101.0)  # percentiles 5 and 95 are 5 and 95
  low, high, scale = ops.percentile_range_update(jnp.float32(0.0), jnp.float32(0.0), returns, 0.9)
  np.testing.assert_allclose([low, high, scale], [0.5, 9.5, 9.0], rtol=1e-6)
  # Small ranges are not scaled up: the divisor is max(1, range).
  _, _, scale = ops.percentile_range_update(jnp.float32(0.0), jnp.float32(0.0),
                                            returns * 0.01, 0.0)
  assert float(scale) == 1.0


def test_straight_through_gradient_is_identity():
  """The sample's gradient with respect to the raw logits is that of the softmax of its
  log-probabilities (`categorical_probs` takes their `exp` instead, which changes the gradient
  with respect to the log-probabilities, not the raw logits), with and without unimix."""
  raw = jnp.array([[0.3, -0.2, 1.0], [2.0, -1.0, 0.5]])
  weights = jnp.array([1.0, 2.0, 3.0])
  for unimix in (0.01, 0.0):
    sampled = lambda lg, unimix=unimix: jnp.sum(dists.categorical_sample(  # noqa: E731
        jax.random.key(0), dists.unimix_logits(lg, unimix)) * weights)
    relaxed = lambda lg, unimix=unimix: jnp.sum(jax.nn.softmax(  # noqa: E731
        dists.unimix_logits(lg, unimix), -1) * weights)
    moded = lambda lg, unimix=unimix: jnp.sum(dists.categorical_mode(  # noqa: E731
        dists.unimix_logits(lg, unimix)) * weights)
    np.testing.assert_allclose(jax.grad(sampled)(raw), jax.grad(relaxed)(raw), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(jax.grad(moded)(raw), jax.grad(relaxed)(raw), rtol=1e-5,
                               atol=1e-7)
  sample = dists.categorical_sample(jax.random.key(0), dists.unimix_logits(raw, 0.01))
  assert set(np.unique(np.asarray(sample)).round(6)) <= {0.0, 1.0}
  # The backward pass of straight_through w.r.t. probs is exactly the identity.
  probs = jnp.array([0.2, 0.8])
  jacobian = jax.jacobian(lambda p: ops.straight_through(jnp.array([0.0, 1.0]), p))(probs)
  np.testing.assert_allclose(jacobian, np.eye(2))
  # The forward value is the one-hot sample exactly, also under jit (not (1 + p) - p rounded).
  probs = jax.nn.softmax(jnp.linspace(-3.0, 3.0, 64).reshape(32, 2), -1)
  onehot = jax.nn.one_hot(jnp.arange(32) % 2, 2)
  np.testing.assert_array_equal(jax.jit(ops.straight_through)(onehot, probs), onehot)


def test_unimix_and_categorical_kl():
  logits = jnp.log(jnp.array([1.0, 0.0 + 1e-30]))
  mixed = jnp.exp(dists.unimix_logits(logits, 0.01))
  np.testing.assert_allclose(mixed, [0.995, 0.005], rtol=1e-5)
  p = jnp.log(jnp.array([[[0.5, 0.5]]]))
  q = jnp.log(jnp.array([[[0.25, 0.75]]]))
  expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
  np.testing.assert_allclose(dists.categorical_kl(p, q), [expected], rtol=1e-6)


def test_gaussian_kl():
  kl = dists.gaussian_kl(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]), jnp.zeros(2), jnp.ones(2))
  # KL(N(m, s) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2.
  expected = 0.0 + (np.log(0.5) + (4 + 1) / 2 - 0.5)
  np.testing.assert_allclose(kl, expected, rtol=1e-6)


def test_categorical_sample_frequencies_match_probabilities():
  """Exactly one class per group, drawn with the softmax's probabilities (a class of probability
  0 never)."""
  probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0], [0.97, 0.01, 0.01, 0.01]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  samples = jax.jit(jax.vmap(dists.categorical_sample, (0, None)))(
      jax.random.split(jax.random.key(3), 40000), logits)
  samples = np.asarray(samples)
  np.testing.assert_array_equal(samples.sum(-1), 1.0)
  frequencies = samples.mean(0)
  np.testing.assert_allclose(frequencies, probs, atol=0.01)
  assert frequencies[1, 0] == frequencies[1, 3] == 0.0
