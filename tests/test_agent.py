"""Contracts of the agent core: dynamics shapes, train_step on every obs/action kind, one compile,
learning on a fixed batch, and the non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.agents.agent import Agent, check_finite
from dreamerjax.models import convs, nets, pooling, products
from dreamerjax.run import configs, validation

B, T = 3, 8


def small_config(variant='dreamerv3', optim=None, **model):
  config = configs.base()
  config.variant = variant
  config.size = 'debug'
  configs.update(config, configs.DEBUG)
  config.agent.horizon = 3
  configs.update(config, {'model': model, 'optim': optim or {}})
  return configs.resolve(config)


def make_agent(obs_kind='vector', discrete=True, variant='dreamerv3', actions=3, optim=None,
               **model):
  space = ({'vector': ((5,), np.float32)} if obs_kind == 'vector'
           else {'image': ((16, 16, 3), np.uint8)})
  return Agent(small_config(variant, optim, **model), space, discrete, actions)


def make_batch(agent, seed=0):
  rng = np.random.default_rng(seed)
  batch = {}
  for key, (shape, dtype) in agent.obs_space.items():
    if dtype == np.uint8:
      batch[key] = rng.integers(0, 255, (B, T, *shape)).astype(np.uint8)
    else:
      batch[key] = rng.normal(size=(B, T, *shape)).astype(np.float32)
  if agent.discrete:
    batch['action'] = np.eye(agent.action_size, dtype=np.float32)[
        rng.integers(0, agent.action_size, (B, T))]
  else:
    batch['action'] = rng.uniform(-1, 1, (B, T, agent.action_size)).astype(np.float32)
  batch['reward'] = rng.normal(size=(B, T)).astype(np.float32)
  batch['is_first'] = np.zeros((B, T), bool)
  batch['is_last'] = np.zeros((B, T), bool)
  batch['is_terminal'] = rng.random((B, T)) < 0.1
  return jax.tree.map(jnp.asarray, batch)


@pytest.mark.parametrize('latent', ['categorical', 'gaussian'])
def test_dynamics_observe_imagine_shapes(latent):
  agent = make_agent(latent=latent)
  dynamics = agent.world_model.dynamics
  world_params = agent.world_model.init(jax.random.key(0))
  params = world_params['dynamics']
  embed = agent.world_model.encode(world_params, {'vector': jnp.ones((B, T, 5))})
  carry, feats, post, prior = dynamics.observe(
      params, dynamics.initial(B), embed, jnp.zeros((B, T, 3)), jnp.zeros((B, T), bool),
      jax.random.key(1))
  F = dynamics.feature_size
  assert feats.shape == (B, T, F)
  assert carry['deter'].shape == (B, dynamics.cell.deter)
  if latent == 'categorical':
    assert post['logits'].shape == prior['logits'].shape == (B, T, 4, 4)
  else:
    assert post['mean'].shape == prior['std'].shape == (B, T, 4)
  dyn, rep = dynamics.loss(post, prior, free_nats=1.0)
  assert dyn.shape == rep.shape == (B, T) and float(jnp.min(dyn)) >= 1.0
  policy = lambda f, k: jax.nn.one_hot(jnp.zeros(f.shape[0], int), 3)  # noqa: E731
  carry, img_feats, img_actions = dynamics.imagine(
      params, dynamics.state_from_features(feats[:, -1]), policy, 5, jax.random.key(2))
  assert img_feats.shape == (B, 6, F) and img_actions.shape == (B, 5, 3)
  np.testing.assert_allclose(img_feats[:, 0], feats[:, -1], rtol=1e-6)


def test_observe_resets_on_is_first():
  agent = make_agent()
  world_params = agent.world_model.init(jax.random.key(0))
  dynamics = agent.world_model.dynamics
  rng = np.random.default_rng(0)
  embed = agent.world_model.encode(world_params, {'vector': jnp.asarray(
      rng.normal(size=(1, T, 5)).astype(np.float32))})
  actions = jnp.asarray(rng.normal(size=(1, T, 3)).astype(np.float32))
  first = np.zeros((1, T), bool)
  first[0, 0] = first[0, 4] = True
  observe = lambda e, a: dynamics.observe(  # noqa: E731
      world_params['dynamics'], dynamics.initial(1), e, a, jnp.asarray(first),
      jax.random.key(3))[1]
  feats = observe(embed, actions)
  # Changing everything before the reset at t=4 leaves t >= 4 unchanged (same keys per step).
  changed = observe(embed.at[:, :4].multiply(-3.0), actions.at[:, :4].set(7.0))
  np.testing.assert_allclose(feats[:, 4:], changed[:, 4:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(feats[:, :4], changed[:, :4])


@pytest.mark.parametrize('obs_kind,discrete,variant', [
    ('vector', True, 'dreamerv3'), ('vector', False, 'dreamerv3'),
    ('image', True, 'dreamerv3'), ('image', False, 'dreamerv3'),
    ('vector', False, 'dreamerv1'), ('vector', True, 'dreamerv2'),
])
def test_train_step_runs_and_compiles_once(obs_kind, discrete, variant):
  agent = make_agent(obs_kind, discrete, variant)
  state, values, actions = train_and_act(agent, steps=3)
  assert int(state.step) == 3
  assert values['train/nonfinite'] == 0.0
  for key in ('wm/loss', 'ac/actor_loss', 'ac/critic_loss', 'ac/return_mean'):
    assert key in values
  for action in actions:
    env_action = agent.env_action(action)
    assert env_action.shape == ((2,) if discrete else (2, agent.action_size))


def train_and_act(agent, steps=2, modes=('train', 'eval'), carry_out=None):
  """`steps` jitted train steps on random batches (one compilation, finite metrics), then one
  policy step per mode in `modes` for 2 envs from a fresh carry (the first on `is_first`).
  Returns `(state, metrics, actions)`; the last policy carry goes to `carry_out['carry']`."""
  state = agent.init(jax.random.key(0))
  step = jax.jit(agent.train_step, donate_argnums=0)
  for seed in range(steps):
    state, metrics = step(state, make_batch(agent, seed))
  assert step._cache_size() == 1
  values = jax.device_get(metrics)
  assert all(np.isfinite(v) for v in values.values()), values
  carry = agent.initial_policy_carry(2)
  obs = {k: v[:2, 0] for k, v in make_batch(agent).items() if k in agent.obs_space}
  obs['is_first'] = jnp.ones(2, bool)
  policy = jax.jit(agent.policy_step, static_argnames='mode')
  actions = []
  for mode in modes:
    carry, action = policy(state, carry, obs, jax.random.key(1), mode=mode)
    obs['is_first'] = jnp.zeros(2, bool)
    assert action.shape == (2, agent.action_size)
    actions.append(action)
  if carry_out is not None:
    carry_out['carry'] = carry
  return state, values, actions


@pytest.mark.parametrize('bc_weight', [0.0, 1.0])
def test_reinforce_gradient_from_imagination_outputs(bc_weight):
  """REINFORCE takes the actor's gradient through the outputs it produced while imagining (one
  forward pass); it equals the gradient of running the actor again on the trajectory's states."""
  agent = make_agent('vector', discrete=True)
  agent.behavior.config.unlock()
  agent.behavior.config.bc_weight = bc_weight
  behavior, state, batch = agent.behavior, agent.init(jax.random.key(0)), make_batch(agent)
  wm = state.params['world_model']
  features = agent.world_model.loss(wm, batch, jax.random.key(1))[1][0]
  starts = behavior.starts(wm, features, batch)
  start_cont = 1.0 - batch['is_terminal'].reshape(-1).astype(jnp.float32)
  args = (wm, state.params['critic'], state.slow_critic, state.return_norm, starts, start_cont)
  key = jax.random.key(2)
  (loss, _), got = behavior.actor_value_and_grad(state.params['actor'], *args, key)
  features, actions, outputs, _ = behavior.rollout(wm, state.params['actor'], starts,
                                                   key, with_outputs=True)
  trajectory = (features, actions)
  again = lambda actor: behavior.actor.apply(actor, trajectory[0][:, :-1])  # noqa: E731
  np.testing.assert_allclose(again(state.params['actor']), outputs, atol=1e-5)
  want_loss, want = jax.value_and_grad(
      lambda actor: behavior.policy_loss(again(actor), *args, trajectory)[0])(state.params['actor'])
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4), want, got)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(got)) > 0


def test_variants_select_the_recipe():
  v1, v2, v3 = (small_config(v) for v in ('dreamerv1', 'dreamerv2', 'dreamerv3'))
  assert (v1.model.latent, v2.model.latent, v3.model.latent) == ('gaussian', 'categorical',
                                                                   'categorical')
  assert v2.model.classes == 32 and v3.model.classes == 4
  assert (v2.model.dyn_scale, v2.model.rep_scale) == (0.8, 0.2)
  assert (v3.model.dyn_scale, v3.model.rep_scale, v3.model.free_nats) == (0.5, 0.1, 1.0)
  assert make_agent(variant='dreamerv1').behavior.reinforce_mix == 0.0
  assert make_agent(variant='dreamerv2', discrete=True).behavior.reinforce_mix == 1.0
  assert make_agent(variant='dreamerv2', discrete=False).behavior.reinforce_mix == 0.0
  # DreamerV3 as its 2023 code: REINFORCE for discrete actions, backprop for continuous ones.
  assert make_agent(variant='dreamerv3', discrete=True).behavior.reinforce_mix == 1.0
  assert make_agent(variant='dreamerv3', discrete=False).behavior.reinforce_mix == 0.0
  # A user override wins over the preset.
  config = configs.base()
  config.variant, config.size, config.model.classes = 'dreamerv2', 'debug', 8
  assert configs.resolve(config).model.classes == 8


def test_world_model_loss_falls_on_fixed_batch():
  agent = make_agent(optim={'model_lr': 1e-3})
  state = agent.init(jax.random.key(0))
  batch = make_batch(agent)
  step = jax.jit(agent.train_step, donate_argnums=0)
  losses = []
  for _ in range(100):
    state, metrics = step(state, batch)
    losses.append(float(metrics['wm/loss']))
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-10:])


def test_nonfinite_loss_raises_and_keeps_state():
  agent = make_agent()
  state = agent.init(jax.random.key(0))
  before = jax.tree.map(np.asarray, state.params)
  batch = make_batch(agent)
  batch['vector'] = batch['vector'].at[0, 0, 0].set(jnp.nan)
  state, metrics = jax.jit(agent.train_step)(state, batch)
  fetched = jax.device_get(metrics)
  assert fetched['train/nonfinite'] == 1.0
  with pytest.raises(FloatingPointError, match='non-finite loss at env step 7'):
    check_finite(fetched, 7)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


def test_flat_optimizer_takes_the_per_leaf_steps():
  # Adam on one raveled vector (`optim.flat`, the default without param rules) against Adam per
  # leaf: the same parameters and gradient norms after 3 updates, and the moments one vector.
  runs = {}
  for flat in (True, False):
    agent = make_agent(optim={'flat': flat})
    state, batch = agent.init(jax.random.key(0)), make_batch(agent)
    step, norms = jax.jit(agent.train_step), []
    for _ in range(3):
      state, metrics = step(state, batch)
      norms.append([float(metrics[k]) for k in ('wm/grad_norm', 'ac/actor_grad_norm',
                                                'ac/critic_grad_norm')])
    runs[flat] = state, np.array(norms)
  (flat, flat_norms), (leafwise, leaf_norms) = runs[True], runs[False]
  assert flat.opt_state['world_model'][1][0].mu.ndim == 1
  assert isinstance(leafwise.opt_state['world_model'][1][0].mu, dict)
  assert np.all(flat_norms > 0)
  np.testing.assert_allclose(flat_norms, leaf_norms, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(flat.params), jax.device_get(leafwise.params))
  flat_count = flat.opt_state['world_model'][1][0].mu.size
  assert flat_count == nets.count_params(leafwise.params['world_model'])


def test_optimizer_is_flat_unless_param_rules_shard_the_moments():
  assert small_config().optim.flat is True
  config = configs.base()
  config.parallel.param_rules = (('kernel$', ('data', None)),)
  assert configs.resolve(config).optim.flat is False
  config.optim.flat = True
  with pytest.raises(validation.ConfigError, match='cannot shard like the parameters'):
    validation.validate(configs.resolve(config), num_devices=1)


@pytest.mark.parametrize('channels,outputs', [
    (3, 6),    # more outputs than inputs: the patch (im2col) form
    (8, 1)])   # few outputs (the decoder's last layer): the overlap-add form with its own VJP
def test_upsample_conv_equals_transposed_conv(channels, outputs):
  """The decoder's upsampling is a 4x4 stride-2 transposed convolution, computed differently;
  values and gradients (input and kernel) match lax's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, channels))
  k4 = jax.random.normal(jax.random.PRNGKey(1), (4, 4, channels, outputs))
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 10, 14, outputs))
  # Output phase p reads kernel taps p + 2a (a = 0, 1) along each axis: split each 4-axis into
  # (a, p) and move the phases next to the output channels.
  to_phases = lambda k: k.reshape(2, 2, 2, 2, channels, outputs).transpose(  # noqa: E731
      0, 2, 4, 1, 3, 5).reshape(2, 2, channels, 4 * outputs)
  want_fn = lambda x, k: jax.lax.conv_transpose(  # noqa: E731
      x, k, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got_fn = lambda x, k: convs.upsample_conv(x, to_phases(k))  # noqa: E731
  want, got = want_fn(x, k4), got_fn(x, k4)
  assert got.shape == want.shape == (2, 10, 14, outputs)
  np.testing.assert_allclose(got, want, atol=1e-4)
  grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * cotangent), (0, 1))(x, k4)
           for f in (want_fn, got_fn)]
  for want_grad, got_grad in zip(*grads, strict=True):
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize('size,kernel,stride,pad', [
    (8, 4, 2, 1),   # the encoder's layers: runs through space_to_depth
    (7, 4, 2, 1),   # odd padded size: the strided-view path
    (6, 3, 1, 1),
    (6, 2, 1, 0)])
def test_patch_conv_equals_conv(size, kernel, stride, pad):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 2, 3))
  k = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 3, 5))
  want = jax.lax.conv_general_dilated(x, k, (stride, stride), [(pad, pad)] * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got = convs.patch_conv(x, k, stride, pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4)
  # Gradients too: the patch product has its own VJP (`products.rows_matmul`).
  cotangent = jax.random.normal(jax.random.PRNGKey(2), want.shape)
  want_grads = jax.grad(lambda x, k: jnp.sum(jax.lax.conv_general_dilated(
      x, k, (stride, stride), [(pad, pad)] * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) * cotangent), (0, 1))(x, k)
  got_grads = jax.grad(lambda x, k: jnp.sum(convs.patch_conv(x, k, stride, pad) * cotangent),
                       (0, 1))(x, k)
  for want_grad, got_grad in zip(want_grads, got_grads, strict=True):
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize('kind', ['layer', 'rms'])
@pytest.mark.parametrize('act', [None, 'silu', 'elu', 'relu', 'tanh'])
def test_norm_with_activation_matches_flax(kind, act):
  """`Norm(kind, act)` (the norm and activation differentiated by hand, `nets.norm_act`) against
  flax's LayerNorm or RMSNorm followed by the activation: values and gradients for the input and
  the parameters, and flax's parameter names."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 7)) * 3.0 + 1.0
  reference = (nn.LayerNorm if kind == 'layer' else nn.RMSNorm)(epsilon=1e-3)
  params = jax.tree.map(lambda v: v + 0.3, reference.init(jax.random.PRNGKey(1), x)['params'])
  cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  module = nets.Norm(kind, act)
  name = 'LayerNorm_0' if kind == 'layer' else 'RMSNorm_0'
  shapes = jax.tree.map(jnp.shape, module.init(jax.random.PRNGKey(0), x))
  assert shapes == {'params': {name: jax.tree.map(jnp.shape, params)}}
  activate = (lambda y: y) if act is None else nets.activation(act)
  want_fn = lambda x, p: activate(reference.apply({'params': p}, x))  # noqa: E731
  got_fn = lambda x, p: module.apply({'params': {name: p}}, x)  # noqa: E731
  np.testing.assert_allclose(got_fn(x, params), want_fn(x, params), atol=1e-5)
  grads = [jax.grad(lambda x, p, f=f: jnp.sum(f(x, p) * cotangent), (0, 1))(x, params)
           for f in (want_fn, got_fn)]
  jax.tree.map(lambda w, g: np.testing.assert_allclose(g, w, atol=1e-5), *grads)


def test_norm_gradient_keeps_only_its_input(capsys):
  """Differentiating a norm with its activation stores one array of the input's size for the
  backward pass (the input; the rest is recomputed), where autodiff of flax's RMSNorm and SiLU
  stores several (`jax.ad_checkpoint.print_saved_residuals` lists what is stored)."""
  import flax.linen as nn
  from jax import ad_checkpoint
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 32))
  module = nets.Norm('rms', 'silu')
  params = module.init(jax.random.PRNGKey(1), x)

  def stored(f):
    capsys.readouterr()
    ad_checkpoint.print_saved_residuals(f, x)
    return capsys.readouterr().out.count('f32[64,32]')

  reference = nn.RMSNorm(epsilon=1e-3)
  assert stored(lambda x: module.apply(params, x)) == 1
  assert stored(lambda x: nn.silu(reference.apply({'params': params['params']['RMSNorm_0']},
                                                  x))) > 1


@pytest.mark.parametrize('rows,inputs,outputs', [(300, 64, 16), (300, 16, 64), (8, 64, 16)])
def test_weight_grad_in_either_layout_is_x_transposed_times_g(rows, inputs, outputs):
  """`products.weight_grad` takes `(g.T @ x).T` for many rows and a wide input (the first case),
  else `x.T @ g`; both are the weight's gradient. `Dense` differentiated through it (`rows_matmul`)
  equals flax's own `nn.Dense` with the same parameters, for the input and the parameters."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (rows, inputs))
  g = jax.random.normal(jax.random.PRNGKey(1), (rows, outputs))
  np.testing.assert_allclose(products.weight_grad(x, g), x.T @ g, rtol=1e-4, atol=1e-3)
  layer = nets.Dense(outputs, norm='layer', bias=True)
  params = layer.init(jax.random.PRNGKey(2), x)
  plain = nn.Dense(outputs)
  plain_fn = lambda p, x: nets.activation('silu')(nets.Norm('layer').apply(  # noqa: E731
      {'params': p['params']['Norm_0']}, plain.apply({'params': p['params']['Dense_0']}, x)))
  want = jax.grad(lambda p, x: jnp.sum(plain_fn(p, x) * jnp.cos(x[:, :1])), (0, 1))(params, x)
  got = jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) * jnp.cos(x[:, :1])), (0, 1))(params, x)
  jax.tree.map(lambda w, o: np.testing.assert_allclose(o, w, rtol=1e-4, atol=1e-5), want, got)


def test_space_to_depth_kernel_matches_strided_conv():
  """A stride-2 4x4 convolution equals a stride-1 2x2 one over the space-to-depth input."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 2))
  k = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 2, 3))
  dn = ('NHWC', 'HWIO', 'NHWC')
  want = jax.lax.conv_general_dilated(x, k, (2, 2), 'VALID', dimension_numbers=dn)
  got = jax.lax.conv_general_dilated(pooling.space_to_depth(x, 2), convs.kernel_to_depth(k, 2),
                                     (1, 1), 'VALID', dimension_numbers=dn)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert pooling.space_to_depth(x, 2)[0, 1, 2].tolist() == [  # (row, column, channel) order
      *x[0, 2, 4].tolist(), *x[0, 2, 5].tolist(), *x[0, 3, 4].tolist(), *x[0, 3, 5].tolist()]


def test_block_linear_shared_input_equals_repeated_input():
  """`shared` is the same map as appending the shared input to every block's slice."""
  blocks, x, shared = 4, jnp.arange(2 * 8.0).reshape(2, 8) / 10, jnp.ones((2, 3))
  layer = nets.BlockLinear(12, blocks)
  params = layer.init(jax.random.PRNGKey(0), x, shared)
  kernel = params['params']['kernel']  # [blocks, 8 / blocks + 3, 12 / blocks]
  assert kernel.shape == (4, 5, 3)
  rows = jnp.concatenate([x.reshape(2, blocks, 2), jnp.repeat(shared[:, None], blocks, 1)], -1)
  want = jnp.einsum('ngi,gio->ngo', rows, kernel).reshape(2, 12)
  np.testing.assert_allclose(layer.apply(params, x, shared), want, atol=1e-5)
  diagonal = {'params': {'kernel': kernel[:, :2], 'bias': jnp.zeros(12)}}  # no shared input
  want = jnp.einsum('ngi,gio->ngo', x.reshape(2, blocks, 2), kernel[:, :2]).reshape(2, 12)
  np.testing.assert_allclose(nets.BlockLinear(12, blocks).apply(diagonal, x), want, atol=1e-5)
  # blocks_major: the same numbers as [blocks, N, out / blocks] (the GRU gates' layout), bias in.
  biased = {'params': {'kernel': kernel[:, :2], 'bias': jnp.arange(12.0)}}
  flat = nets.BlockLinear(12, blocks).apply(biased, x)
  major = nets.BlockLinear(12, blocks).apply(biased, x, blocks_major=True)
  assert major.shape == (blocks, 2, 3)
  np.testing.assert_allclose(major.transpose(1, 0, 2).reshape(2, 12), flat, atol=1e-6)
  with pytest.raises(ValueError, match='no shared input'):
    layer.apply(params, x, shared, blocks_major=True)


def test_matmul_flops_counts_every_loop_iteration():
  """2 FLOPs per multiply-add; a scan body counts once per step, a cond its dearest branch."""
  from dreamerjax.analysis import benchmark

  def f(w, xs):
    _, ys = jax.lax.scan(lambda c, x: (c, x @ w), 0.0, xs)      # 5 x [2,3]@[3,4]: 5 * 48
    y = jax.jit(lambda y: y @ jnp.ones((4, 7)))(ys)              # [5,2,4]@[4,7]: 560
    return jax.lax.cond(y.sum() > 0, lambda: y @ jnp.ones((7, 1)),  # 2*10*7 = 140
                        lambda: jnp.zeros((5, 2, 1)))
  assert benchmark.matmul_flops(f, jnp.ones((3, 4)), jnp.ones((5, 2, 3))) == 240 + 560 + 140


def with_context(agent, batch, seed):
  """`batch` with stored latent states (`model.replay_context`): random for `seed`, else zeros."""
  rng = np.random.default_rng(seed)
  fields = {name: (rng.normal(size=(B, T, *shape)) if seed is not None
                   else np.zeros((B, T, *shape))).astype(np.float32)
            for name, (shape, _) in agent.world_model.context_spec().items()}
  return {**batch, **jax.tree.map(jnp.asarray, fields)}


def test_replay_context_starts_from_the_stored_state():
  agent = make_agent(replay_context=True)
  assert set(agent.world_model.context_spec()) == {'context_deter', 'context_stoch'}
  params = agent.world_model.init(jax.random.key(0))
  loss = jax.jit(lambda batch: agent.world_model.loss(params, batch, jax.random.key(1))[0])
  batch = make_batch(agent)
  stored = [float(loss(with_context(agent, batch, seed))) for seed in (None, 1, 2)]
  assert len(set(stored)) == 3, stored  # the stored state of step 0 changes the loss
  # Only step 0's stored state is read.
  later = with_context(agent, batch, 1)
  later['context_deter'] = later['context_deter'].at[:, 1:].set(9.0)
  assert float(loss(later)) == stored[1]
  # A sequence that starts an episode starts fresh, as without the option.
  fresh = {**batch, 'is_first': batch['is_first'].at[:, 0].set(True)}
  plain = make_agent()
  expected = float(plain.world_model.loss(params, batch, jax.random.key(1))[0])
  for seed in (None, 1):
    np.testing.assert_allclose(float(loss(with_context(agent, fresh, seed))), expected, rtol=1e-6)
  # The whole train step runs on the stored state.
  _, metrics = jax.jit(agent.train_step)(agent.init(jax.random.key(0)),
                                             with_context(agent, batch, 1))
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  # The option needs RSSM dynamics in online runs.
  config = configs.base()
  configs.update(config, {'model': {'replay_context': True, 'dynamics': 'ssm'}})
  with pytest.raises(ValueError, match='replay_context=True needs --config.model.dynamics=rssm'):
    validation.validate(configs.resolve(config))
