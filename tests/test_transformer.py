"""Transformer dynamics: the RSSM's contract, causality, is_first masking, and cached imagination
equal to recomputing the whole sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.run import configs, validation
from tests.test_agent import B, T, make_agent, make_batch, train_and_act

A = 3


def transformer_agent(obs_kind='vector', discrete=True, **model):
  return make_agent(obs_kind, discrete, variant='storm', actions=A, **model)


def observed(agent, seed=0, first=()):
  """(world params, embeds [1,T,E], actions [1,T,A], is_first [1,T]) of random data."""
  world_params = agent.world_model.init(jax.random.key(0))
  rng = np.random.default_rng(seed)
  embeds = agent.world_model.encode(world_params, {'vector': jnp.asarray(
      rng.normal(size=(1, T, 5)).astype(np.float32))})
  actions = jnp.asarray(rng.normal(size=(1, T, A)).astype(np.float32))
  is_first = np.zeros((1, T), bool)
  is_first[0, list(first)] = True
  return world_params, embeds, actions, jnp.asarray(is_first)


def observe_features(agent, world_params, embeds, actions, is_first):
  dynamics = agent.world_model.dynamics
  observe = jax.jit(lambda *args: dynamics.observe(*args)[1])
  return observe(world_params['dynamics'], dynamics.initial(embeds.shape[0]), embeds, actions,
                 is_first, jax.random.key(3))


def observe_ones(agent):
  """(dynamics params, carry, features, post, prior) of `observe` over `[B, T]` constant inputs."""
  dynamics = agent.world_model.dynamics
  world_params = agent.world_model.init(jax.random.key(0))
  embed = agent.world_model.encode(world_params, {'vector': jnp.ones((B, T, 5))})
  return world_params['dynamics'], *jax.jit(dynamics.observe)(
      world_params['dynamics'], dynamics.initial(B), embed, jnp.zeros((B, T, A)),
      jnp.zeros((B, T), bool), jax.random.key(1))


def test_observe_imagine_shapes_and_presets():
  agent = transformer_agent()
  dynamics = agent.world_model.dynamics
  assert type(dynamics).__name__ == 'Transformer'
  params, carry, feats, post, prior = observe_ones(agent)
  width, context = agent.config.model.width, agent.config.model.context
  assert feats.shape == (B, T, dynamics.feature_size) and carry['deter'].shape == (B, width)
  assert carry['keys'].shape[:3] == (B, agent.config.model.layers, context)
  assert post['logits'].shape == prior['logits'].shape == (B, T, 4, 4)
  dyn, rep = dynamics.loss(post, prior, free_nats=1.0)
  assert dyn.shape == rep.shape == (B, T)
  policy = lambda f, k: jax.nn.one_hot(jnp.zeros(f.shape[0], int), A)  # noqa: E731
  starts = jax.jit(dynamics.start_states)(params, feats, jnp.zeros((B, T, A)),
                                 jnp.zeros((B, T), bool).at[:, 0].set(True))
  assert starts['keys'].shape[0] == B * T
  final, img_feats, img_actions = jax.jit(dynamics.imagine, static_argnums=(2, 3))(
      params, starts, policy, 5, jax.random.key(2))
  assert img_feats.shape == (B * T, 6, dynamics.feature_size) and img_actions.shape == (B * T, 5, A)
  np.testing.assert_allclose(img_feats[:, 0], feats.reshape(B * T, -1), rtol=1e-6)
  assert jax.tree.map(jnp.shape, final) == jax.tree.map(jnp.shape, starts)  # fixed-size cache
  # The size presets fill the transformer keys; the bad values name the flag.
  config = configs.resolve(configs.base())
  assert config.model.dynamics == 'rssm' and config.model.width == 256
  assert configs.resolve(_variant('dreamerv4')).run.mode == 'offline'


def _variant(name):
  config = configs.base()
  config.variant = name
  return config


@pytest.mark.parametrize('change,message', [
    (dict(model=dict(dynamics='lstm')), 'model.dynamics must be one of'),
    (dict(model=dict(width=30)), 'into an even head size'),
    (dict(agent=dict(actor_objective='ppo')), 'actor_objective must be one of'),
    (dict(run=dict(mode='offline')), 'needs --config.run.dataset'),
    # Windows of T <= C steps all hold the sequence start: long episodes would be out of reach.
    (dict(model=dict(context=40)), 'batch_length=64 must be at least twice'),
])
def test_bad_transformer_config(change, message):
  config = _variant('storm')
  config.size = 'debug'
  configs.update(config, change)
  with pytest.raises(ValueError, match=message):
    validation.validate(configs.resolve(config))


def test_attention_is_causal_and_masked_at_is_first():
  agent = transformer_agent()
  world_params, embeds, actions, no_first = observed(agent)
  feats = observe_features(agent, world_params, embeds, actions, no_first)
  # Changing steps 5.. leaves the outputs of steps 0..4 unchanged.
  changed = observe_features(agent, world_params, embeds.at[:, 5:].multiply(-2.0),
                             actions.at[:, 5:].set(4.0), no_first)
  np.testing.assert_array_equal(feats[:, :5], changed[:, :5])
  assert not np.allclose(feats[:, 5:], changed[:, 5:])
  # With an episode starting at step 4, changing steps 0..3 leaves steps 4.. unchanged.
  _, _, _, first = observed(agent, first=(0, 4))
  feats = observe_features(agent, world_params, embeds, actions, first)
  changed = observe_features(agent, world_params, embeds.at[:, :4].multiply(-3.0),
                             actions.at[:, :4].set(7.0), first)
  np.testing.assert_allclose(feats[:, 4:], changed[:, 4:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(feats[:, :4], changed[:, :4])


@pytest.mark.parametrize('first', [(0,), (0, 3)])
def test_cached_imagination_equals_recomputation(first):
  """Imagining H steps with the key/value ring buffer (context 4 < the 8 + 6 steps, so it wraps)
  gives the outputs of one uncached pass over the observed and imagined steps."""
  agent = transformer_agent(context=4, layers=2)
  dynamics = agent.world_model.dynamics
  world_params, embeds, actions, is_first = observed(agent, first=first)
  params = world_params['dynamics']
  feats = observe_features(agent, world_params, embeds, actions, is_first)
  starts = jax.jit(dynamics.start_states)(params, feats, actions, is_first)
  start = jax.tree.map(lambda x: x[T - 1:T], starts)  # from the last observed step
  policy = lambda f, k: jax.random.normal(k, (f.shape[0], A))  # noqa: E731
  horizon = 6
  _, img_feats, img_actions = jax.jit(dynamics.imagine, static_argnums=(2, 3))(
      params, start, policy, horizon, jax.random.key(5))
  advance = jax.jit(lambda *args: dynamics._advance(*args)[0])
  width = agent.config.model.width
  stoch = jnp.concatenate([feats, img_feats[:, 1:]], 1)[..., width:].reshape(1, T + horizon, 4, 4)
  all_actions = jnp.concatenate([actions, img_actions], 1)
  all_first = jnp.concatenate([is_first, jnp.zeros((1, horizon), bool)], 1)
  carry = dynamics.initial(1)
  before = jnp.concatenate([carry['stoch'][:, None], stoch[:, :-1]], 1)
  deter = advance(params, carry, before, all_actions, all_first)
  np.testing.assert_allclose(img_feats[:, :, :width], deter[:, T - 1:], rtol=1e-4, atol=1e-5)
  # Acting (obs_step one step at a time with the cache) matches one pass over its samples.
  carry, stepped, samples = dynamics.initial(1), [], []
  obs_step = jax.jit(dynamics.obs_step)
  for t in range(T):
    carry, _, _ = obs_step(params, carry, actions[:, t], embeds[:, t], is_first[:, t],
                                    jax.random.key(t))
    stepped.append(carry['deter'])
    samples.append(carry['stoch'])
  samples = jnp.stack(samples, 1)
  before = jnp.concatenate([dynamics.initial(1)['stoch'][:, None], samples[:, :-1]], 1)
  deter = advance(params, dynamics.initial(1), before, actions, is_first)
  np.testing.assert_allclose(jnp.stack(stepped, 1), deter, rtol=1e-4, atol=1e-5)


# Each observation kind and each action kind once, as for the SSM: the encoders and the actor's
# heads are shared by every backbone, and tests/test_agent.py runs all four pairs.
@pytest.mark.parametrize('obs_kind,discrete', [('vector', True), ('image', False)])
def test_train_step_runs_and_compiles_once(obs_kind, discrete):
  out = {}
  train_and_act(transformer_agent(obs_kind, discrete), modes=('train', 'eval', 'train'),
                carry_out=out)
  assert int(out['carry']['latent']['position'][0]) == 2


def test_benchmark_matches_transformer_and_rssm_parameter_counts():
  from dreamerjax.analysis import benchmark
  model = benchmark.matched_transformer('debug')
  rssm = benchmark.dynamics_params(benchmark.bench_agent('debug', 'vector'))
  transformer = benchmark.dynamics_params(benchmark.bench_agent('debug', 'vector', 17, 'storm',
                                                                model))
  assert abs(transformer - rssm) / rssm < 0.05, (model, transformer, rssm)
  assert model['width'] % (2 * configs.TRANSFORMER_SIZES['debug']['heads']) == 0


def test_long_context_trains_on_sequences_of_twice_its_length():
  """`model.context` overrides the preset (8 at debug) up to the memory suite's L + 1 = 121; a
  context of 61 trains on 122-step sequences, its windows reaching 61 steps back."""
  config = _variant('storm')
  config.size = 'debug'
  configs.update(config, {'model': {'context': 121}, 'run': {'batch_length': 242}})
  validation.validate(configs.resolve(config))
  length, context = 122, 61
  agent = transformer_agent(context=context)
  assert agent.config.model.context == context
  state = agent.init(jax.random.key(0))
  tile = lambda x: jnp.concatenate([x] * (length // T + 1), 1)[:2, :length]  # noqa: E731
  batch = jax.tree.map(tile, make_batch(agent))
  state, metrics = jax.jit(agent.train_step)(state, batch)
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  dynamics, params = agent.world_model.dynamics, state.params['world_model']
  _, embeds, actions, first = observed(agent)
  long = lambda x: jnp.concatenate([x] * (length // T + 1), 1)[:, :length]  # noqa: E731
  embeds, actions, first = long(embeds), long(actions), jnp.zeros((1, length), bool)
  feats = observe_features(agent, params, embeds, actions, first)
  # Step 70 attends over steps 10..70: a change at step 9 leaves it alone, one at step 10 not.
  for step, reaches in ((9, False), (10, True)):
    changed = observe_features(agent, params, embeds, actions.at[:, step].multiply(-1.0), first)
    assert np.allclose(feats[:, 70, :agent.config.model.width],
                       changed[:, 70, :agent.config.model.width], atol=1e-6) != reaches
  assert dynamics.initial(1)['keys'].shape[2] == context
