"""SSM dynamics: the parallel scan against a hand-rolled loop, stepping equal to one pass,
the RSSM's contract and shapes, is_first resets, presets matched to the RSSM, and a world model
that learns a fixed batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dreamerjax.models import ssm
from dreamerjax.run import configs, validation
from tests.test_agent import B, T, make_agent, make_batch, train_and_act
from tests.test_transformer import observe_ones, observed

A = 3


def ssm_agent(obs_kind='vector', discrete=True, **model):
  return make_agent(obs_kind, discrete, actions=A, dynamics='ssm', **model)


def test_linear_scan_matches_a_loop():
  """m_t = a_t m_{t-1} + b_t by hand, complex and with a reset (a_t = 0) in the middle."""
  rng = np.random.default_rng(0)
  decay = (rng.uniform(0.5, 1.0, (2, 7, 3)) * np.exp(1j * rng.uniform(0, 6, (2, 7, 3))))
  decay[:, 4] = 0.0
  inputs = rng.normal(size=(2, 7, 3)) + 1j * rng.normal(size=(2, 7, 3))
  initial = rng.normal(size=(2, 3)) + 1j * rng.normal(size=(2, 3))
  expected, state = [], initial
  for t in range(7):
    state = decay[:, t] * state + inputs[:, t]
    expected.append(state)
  got = ssm.linear_scan(jnp.asarray(decay, jnp.complex64), jnp.asarray(inputs, jnp.complex64),
                        jnp.asarray(initial, jnp.complex64))
  np.testing.assert_allclose(got, np.stack(expected, 1), rtol=1e-5, atol=1e-5)
  # With two steps: m_1 = a_1 (a_0 m + b_0) + b_1.
  two = ssm.linear_scan(jnp.array([[2.0, 3.0]]), jnp.array([[1.0, 5.0]]), jnp.array([4.0]))
  np.testing.assert_allclose(two, [[9.0, 32.0]])


def test_observe_imagine_shapes_and_presets():
  agent = ssm_agent()
  dynamics = agent.world_model.dynamics
  assert type(dynamics).__name__ == 'SSM'
  m = agent.config.model
  assert (m.width, m.layers, m.state) == tuple(configs.SSM_SIZES['debug'][k]
                                               for k in ('width', 'layers', 'state'))
  params, carry, feats, post, prior = observe_ones(agent)
  assert feats.shape == (B, T, dynamics.feature_size) == (B, T, m.width + 16)
  assert carry['memory'].shape == (B, m.layers, 2 * m.state)
  assert post['logits'].shape == prior['logits'].shape == (B, T, 4, 4)
  dyn, rep = dynamics.loss(post, prior, free_nats=1.0)
  assert dyn.shape == rep.shape == (B, T)
  is_first = jnp.zeros((B, T), bool).at[:, 0].set(True)
  starts = jax.jit(dynamics.start_states)(params, feats, jnp.zeros((B, T, A)), is_first)
  assert starts['memory'].shape == (B * T, m.layers, 2 * m.state)
  np.testing.assert_allclose(starts['memory'].reshape(B, T, -1)[:, -1],
                             carry['memory'].reshape(B, -1), rtol=1e-5, atol=1e-6)
  policy = lambda f, k: jax.nn.one_hot(jnp.zeros(f.shape[0], int), A)  # noqa: E731
  final, img_feats, img_actions = jax.jit(dynamics.imagine, static_argnums=(2, 3))(
      params, starts, policy, 5, jax.random.key(2))
  assert img_feats.shape == (B * T, 6, dynamics.feature_size) and img_actions.shape == (B * T, 5, A)
  np.testing.assert_allclose(img_feats[:, 0], feats.reshape(B * T, -1), rtol=1e-6)
  assert jax.tree.map(jnp.shape, final) == jax.tree.map(jnp.shape, starts)


@pytest.mark.parametrize('first', [(0,), (0, 3)])
def test_stepping_equals_the_parallel_scan(first):
  """obs_step one step at a time gives the parallel pass's features, posteriors, priors and
  memory; imagination (img_step) from its last state matches one pass over all the steps."""
  agent = ssm_agent(layers=2)
  dynamics = agent.world_model.dynamics
  world_params, embeds, actions, is_first = observed(agent, first=first)
  params = world_params['dynamics']
  carry, feats, post, prior = jax.jit(dynamics.observe)(
      params, dynamics.initial(1), embeds, actions, is_first, jax.random.key(3))
  width = agent.config.model.width
  samples = feats[..., width:].reshape(1, T, 4, 4)
  # Stepping with the posterior samples that observe drew (mode=True would draw others).
  obs_step = jax.jit(dynamics.obs_step)
  stepped, posts, priors = dynamics.initial(1), [], []
  deters = []
  for t in range(T):
    stepped, step_post, step_prior = obs_step(params, stepped, actions[:, t], embeds[:, t],
                                              is_first[:, t], jax.random.key(t))
    stepped = {**stepped, 'stoch': samples[:, t]}
    deters.append(stepped['deter'])
    posts.append(step_post['logits'])
    priors.append(step_prior['logits'])
  np.testing.assert_allclose(jnp.stack(deters, 1), feats[..., :width], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jnp.stack(posts, 1), post['logits'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.stack(priors, 1), prior['logits'], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(stepped['memory'], carry['memory'], rtol=1e-4, atol=1e-5)
  # Imagination from the last observed state equals one pass over all T + H steps.
  horizon = 5
  policy = lambda f, k: jax.random.normal(k, (f.shape[0], A))  # noqa: E731
  _, img_feats, img_actions = jax.jit(dynamics.imagine, static_argnums=(2, 3))(
      params, carry, policy, horizon, jax.random.key(5))
  all_stoch = jnp.concatenate([samples, img_feats[:, 1:, width:].reshape(1, horizon, 4, 4)], 1)
  before = jnp.concatenate([jnp.zeros((1, 1, 4, 4)), all_stoch[:, :-1]], 1)
  all_first = jnp.concatenate([is_first, jnp.zeros((1, horizon), bool)], 1)
  deter, _ = jax.jit(dynamics._advance)(params, dynamics.initial(1), before,
                                        jnp.concatenate([actions, img_actions], 1), all_first)
  np.testing.assert_allclose(img_feats[..., :width], deter[:, T - 1:], rtol=1e-4, atol=1e-5)


def test_is_first_resets_the_memory():
  agent = ssm_agent()
  world_params, embeds, actions, first = observed(agent, first=(0, 4))
  dynamics = agent.world_model.dynamics
  observe = jax.jit(lambda e, a: dynamics.observe(world_params['dynamics'], dynamics.initial(1),
                                                  e, a, first, jax.random.key(3))[1])
  feats = observe(embeds, actions)
  changed = observe(embeds.at[:, :4].multiply(-3.0), actions.at[:, :4].set(7.0))
  np.testing.assert_allclose(feats[:, 4:], changed[:, 4:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(feats[:, :4], changed[:, :4])


def test_presets_match_the_rssm_parameter_count():
  from dreamerjax.analysis import benchmark
  for size in ('debug', 'tiny'):
    rssm = benchmark.dynamics_params(benchmark.bench_agent(size, 'vector'))
    model = dict(dynamics='ssm', **configs.SSM_SIZES[size])
    count = benchmark.dynamics_params(benchmark.bench_agent(size, 'vector', model=model))
    assert 0.75 < count / rssm < 1.15, (size, count, rssm)
  config = configs.base()
  config.model.dynamics = 'ssm'
  assert configs.resolve(config).model.width == configs.SSM_SIZES['12m']['width']
  config.model.latent = 'gaussian'
  with pytest.raises(ValueError, match='latent must be categorical'):
    validation.validate(configs.resolve(config))


def test_world_model_loss_falls_on_a_fixed_batch():
  agent = ssm_agent()
  world_model = agent.world_model
  params = world_model.init(jax.random.key(0))
  batch = make_batch(agent)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def update(params, opt_state, key):
    (loss, _), grads = jax.value_and_grad(world_model.loss, has_aux=True)(params, batch, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for step in range(60):
    params, opt_state, loss = update(params, opt_state, jax.random.key(step))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.parametrize('obs_kind,discrete', [('vector', True), ('image', False)])
def test_train_step_runs_and_compiles_once(obs_kind, discrete):
  out = {}
  train_and_act(ssm_agent(obs_kind, discrete), carry_out=out)
  assert float(jnp.abs(out['carry']['latent']['memory']).sum()) > 0
