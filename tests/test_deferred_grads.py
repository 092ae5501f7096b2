"""deferred_grads: the values and gradients of lax.scan, weight gradients after the loop (`scan`),
and a network recorded inside a loop and differentiated after it (`record`, `replay`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.models import deferred_grads, nets
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


def assert_sums_close(expected, got):
  """Gradients that are the same sums added in another order (the weight gradients after the
  loop, the input gradients from transposed kernels): the rounding error of a sum scales with its
  largest terms, so the absolute tolerance with each array's largest value."""
  def close(e, g):
    np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6 * max(1.0, float(np.max(np.abs(e)))))
  jax.tree.map(close, expected, got)


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
  assert_sums_close(expected, got)


@pytest.mark.parametrize('rows,shared,blocks_major', [(6, True, False), (6, False, False),
                                                      (3, False, True), (6, False, True)])
def test_block_linear_input_grads_equal_autodiff(rows, shared, blocks_major):
  """`BlockLinear.input_grads` from `transposed_kernel` against autodiff of the layer, with 3
  rows as many as the blocks (a layout mix-up of blocks and rows would show there)."""
  layer = nets.BlockLinear(features=12, blocks=3)
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (rows, 9))
  extra = jax.random.normal(keys[1], (rows, 5)) if shared else None
  params = layer.init(keys[2], x, extra, blocks_major)['params']
  apply = lambda *a: layer.apply({'params': params}, *a, blocks_major=blocks_major)  # noqa: E731
  arrays = (x, extra) if shared else (x,)
  out, vjp = jax.vjp(apply, *arrays)
  g = jax.random.normal(keys[3], out.shape)
  transposed = layer.transposed_kernel(params['kernel'], 9)
  got = layer.input_grads(transposed, g, *arrays, blocks_major=blocks_major)
  assert len(got) == len(arrays)
  jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), list(vjp(g)),
               got)


def test_gradients_under_vmap():
  step, params, carry, xs = rssm_case()
  params2 = jax.tree.map(lambda x: jnp.stack([x, 1.5 * x]), params)

  def batched(scan):
    return jax.vmap(lambda p: gradients(scan, step, p, carry, xs)[0])(params2)

  expected, got = batched(plain_scan), batched(deferred_grads.scan)
  assert_sums_close(expected, got)


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
  assert_sums_close(expected, got)


def recorded_in_a_loop(head, params, xs):
  """`head` applied to each step of `xs [T, B, F]` inside `lax.scan` with `record`: the stacked
  outputs and linear layers' outputs."""
  def step(carry, x):
    return carry, deferred_grads.record(head.apply)(params, x)
  return jax.lax.scan(step, 0, xs)[1]


@pytest.mark.parametrize('norm,bias', [('layer', False), ('rms', True), ('none', False)])
def test_replay_gives_the_gradient_of_the_network_on_the_stacked_inputs(norm, bias):
  """The recorded outputs replayed after the loop: the same values and parameter gradients as
  applying the network again to every step's inputs, with the products in the backward pass."""
  head = nets.Head(outputs=3, layers=2, units=8, norm=norm, act='silu', bias=bias)
  xs = jax.random.normal(jax.random.key(0), (5, 4, 6))
  params = head.init(jax.random.key(1), xs[0])
  outputs, linear = recorded_in_a_loop(head, params, xs)
  assert len(linear) == 3  # two hidden layers and the output layer
  weights = jax.random.normal(jax.random.key(2), outputs.shape)
  loss = lambda out: jnp.sum(jnp.sin(out) * weights)  # noqa: E731

  def replayed(params):
    return deferred_grads.replay(head.apply, linear)(params, xs)

  np.testing.assert_allclose(replayed(params), head.apply(params, xs), rtol=1e-6, atol=1e-6)
  want = jax.grad(lambda p: loss(head.apply(p, xs)))(params)
  got = jax.grad(lambda p: loss(replayed(p)))(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), want, got)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got))


def test_replay_gradient_in_bfloat16_agrees_as_a_whole():
  head = nets.Head(outputs=3, layers=2, units=16, dtype=jnp.bfloat16)
  xs = jax.random.normal(jax.random.key(0), (5, 8, 6))
  params = head.init(jax.random.key(1), xs[0])
  _, linear = recorded_in_a_loop(head, params, xs)
  loss = lambda apply: lambda p: jnp.sum(jnp.sin(apply(p, xs)))  # noqa: E731
  want = jax.grad(loss(head.apply))(params)
  got = jax.grad(loss(deferred_grads.replay(head.apply, linear)))(params)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    assert g.dtype == w.dtype
    assert float(jnp.linalg.norm(g - w)) <= 0.02 * float(jnp.linalg.norm(w))


def test_record_refuses_a_layer_called_twice_and_replay_a_mismatch():
  dense = nn.Dense(4)
  params = dense.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match='called more than once'):
    deferred_grads.record(lambda p, x: dense.apply(p, dense.apply(p, x)))(params, jnp.ones((2, 4)))
  _, linear = deferred_grads.record(dense.apply)(params, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match='recorded with rows'):
    deferred_grads.replay(dense.apply, linear)(params, jnp.ones((3, 4)))
  other = nets.Head(outputs=2, layers=1, units=4)
  other_params = other.init(jax.random.key(1), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match='no recorded output'):
    deferred_grads.replay(other.apply, linear)(other_params, jnp.ones((2, 4)))
