"""deferred_grads.scan: the values and gradients of lax.scan, weight gradients after the loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.models import deferred_grads
from dreamerjax.models.rssm import RSSM, RSSMCell


def plain_scan(step, params, carry, xs):
  return jax.lax.scan(lambda c, x: step(params, c, x), carry, xs)


def rssm_case(latent='categorical', bias=True, dtype=jnp.float32, batch=5, length=7):
  cell = RSSMCell(deter=64, hidden=32, stoch=4, classes=4, blocks=2, latent=latent, bias=bias,
                  dtype=dtype)
  rssm = RSSM(cell)
  params = rssm.init_params(jax.random.key(0), 16, 3)
  keys = jax.random.split(jax.random.key(1), 4)
  xs = (jax.random.normal(keys[0], (length, batch, 16)),
        jax.random.normal(keys[1], (length, batch, 3)),
        jax.random.bernoulli(keys[2], 0.3, (length, batch)),
        jax.random.split(keys[3], length))

  def step(params, carry, inputs):
    embed, action, first, key = inputs
    carry, post = rssm._posterior_step(params, carry, action, embed, first, key)
    return carry, (rssm.features(carry), post)

  return step, params, rssm.initial(batch), xs


def loss(scan, step, params, carry, xs):
  """A loss that reaches every output: the last carry, the features and the statistics."""
  last, (features, post) = scan(step, params, carry, xs)
  stats = sum(jnp.sum(jnp.square(value)) for value in jax.tree.leaves(post))
  return (jnp.sum(jnp.sin(features.astype(jnp.float32))) + 0.01 * stats +
          jnp.sum(last['deter'].astype(jnp.float32)))


def gradients(scan, step, params, carry, xs):
  return jax.jit(jax.grad(lambda p, c, e: loss(scan, step, p, c, (e, *xs[1:])), (0, 1, 2)))(
      params, carry, xs[0])


@pytest.mark.parametrize('latent,bias', [('categorical', True), ('gaussian', False)])
def test_values_and_gradients_equal_those_of_lax_scan(latent, bias):
  step, params, carry, xs = rssm_case(latent, bias)
  # Every linear layer of the cell's step is deferred (the prior's are not called in it).
  assert {'/'.join(path) for path in deferred_grads._layers(step, params, carry, xs)} == {
      'deter_in/Dense_0', 'stoch_in/Dense_0', 'action_in/Dense_0', 'gru_hidden', 'gru_gates',
      'posterior_hidden/Dense_0', 'posterior_out'}
  out = deferred_grads.scan(step, params, carry, xs)
  jax.tree.map(np.testing.assert_array_equal, out, plain_scan(step, params, carry, xs))
  expected = gradients(plain_scan, step, params, carry, xs)
  got = gradients(deferred_grads.scan, step, params, carry, xs)
  # Every weight has a gradient, and the sums differ only in their order of addition.
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(got[0]['params']['gru_gates']))
  jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6), expected, got)


def test_gradients_under_vmap():
  step, params, carry, xs = rssm_case()
  params2 = jax.tree.map(lambda x: jnp.stack([x, 1.5 * x]), params)

  def batched(scan):
    return jax.vmap(lambda p: gradients(scan, step, p, carry, xs)[0])(params2)

  expected, got = batched(plain_scan), batched(deferred_grads.scan)
  jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6), expected, got)


def test_gradients_in_bfloat16_agree_as_a_whole():
  """In bfloat16 each product rounds its output, so a sum over all rows at once and a sum of
  per-step products differ in single elements; as a whole they agree."""
  step, params, carry, xs = rssm_case(dtype=jnp.bfloat16)
  expected = gradients(plain_scan, step, params, carry, xs)[0]
  got = gradients(deferred_grads.scan, step, params, carry, xs)[0]
  for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
    e, g = np.asarray(e, np.float32), np.asarray(g, np.float32)
    assert np.linalg.norm(g - e) <= 0.02 * np.linalg.norm(e) + 1e-3


def test_a_layer_called_twice_in_a_step_is_refused():
  layer = nn.Dense(3)
  params = layer.init(jax.random.key(0), jnp.zeros((2, 3)))

  def step(params, carry, x):
    carry = layer.apply(params, layer.apply(params, carry) + x)
    return carry, carry

  xs = jnp.ones((4, 2, 3))
  with pytest.raises(ValueError, match='called more than once'):
    jax.grad(lambda p: jnp.sum(deferred_grads.scan(step, p, jnp.zeros((2, 3)), xs)[1]))(params)


def test_a_module_applied_with_other_parameters_is_left_as_it_is():
  """A layer whose parameters are not those given to `scan` (here a constant readout closed
  over by the step) is not tapped: the gradients still equal lax.scan's."""
  step, params, carry, xs = rssm_case()
  readout = nn.Dense(5)
  readout_params = readout.init(jax.random.key(3), jnp.zeros((1, 64 + 16)))

  def with_readout(params, carry, inputs):
    carry, (features, post) = step(params, carry, inputs)
    return carry, (readout.apply(readout_params, features), post)

  expected = gradients(plain_scan, with_readout, params, carry, xs)
  got = gradients(deferred_grads.scan, with_readout, params, carry, xs)
  jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6), expected, got)
