"""The actor-critic's targets when imagined returns saturate, and the replay-return critic targets.

The mechanism behind a policy that solves CartPole and then forgets it: once replay is full of
long episodes, every continue logit in imagination is positive. Thresholded at 0.5 (`imag_cont =
'mode'`), every imagined return is the same `sum discount^t`, the 5-95 percentile range is 0, the
advantages carry no signal and the policy drifts. With the continue probability, a trajectory
heading for an ending (a lower, still positive logit) is worth less, and the actor is pushed away
from the action that led there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamerjax.agents.behavior import ActorCritic, rows, step_major
from dreamerjax.run import configs
from dreamerjax.types import ReturnNorm

DISCOUNT, LAM = 0.9, 0.5


class DriftWorldModel:
  """Features are a position `x`; reward 1 per step; continue logit `3 - 4|x|`, positive (mode
  1) for |x| < 0.75, so a drifting trajectory looks like a safe one to the thresholded head."""
  bins = None

  class dynamics:  # noqa: N801
    feature_size = 1

  def reward(self, params, features):
    return jnp.ones(features.shape[:-1])

  def cont_logits(self, params, features):
    return 3.0 - 4.0 * jnp.abs(features[..., 0])


def behavior(imag_cont, actions=2):
  config = configs.base()
  config.size = 'debug'
  configs.update(config, configs.DEBUG)
  config = configs.resolve(config)
  config.agent.imag_cont = imag_cont
  config.agent.discount, config.agent.lam = DISCOUNT, LAM
  config.agent.critic_head = 'mse'  # a plain linear critic: zero-initialised below
  world_model = DriftWorldModel()
  world_model.bins = jnp.zeros(3)
  return ActorCritic(world_model, True, actions, config.agent, config.model)


def trajectories():
  """`[2, H+1=4, 1]`: one stays at x = 0, the other drifts 0 -> 0.6 (never below logit 0)."""
  stay = jnp.zeros((4, 1))
  drift = jnp.array([[0.0], [0.2], [0.4], [0.6]])
  return jnp.stack([stay, drift])


def zero_critic(ac):
  _, critic = ac.init(jax.random.key(0))
  return jax.tree.map(jnp.zeros_like, critic)


def hand_returns(cont_probs):
  """Lambda returns with zero values: R_t = 1 + discount * c_{t+1} * lam * R_{t+1}, R_H = 0."""
  horizon = len(cont_probs)
  returns, following = np.zeros(horizon), 0.0
  for t in reversed(range(horizon)):
    following = 1.0 + DISCOUNT * cont_probs[t] * LAM * following
    returns[t] = following
  return returns


def test_thresholded_continue_saturates_imagined_returns():
  ac = behavior('mode')
  critic = zero_critic(ac)
  out = ac.returns({}, critic, critic, trajectories(), jnp.ones(2))
  stay, drift = np.asarray(out['returns'])
  np.testing.assert_allclose(stay, drift)  # no signal: the drift is invisible
  np.testing.assert_allclose(stay, hand_returns([1.0, 1.0, 1.0]), rtol=1e-6)


def test_continue_probability_values_a_drift_lower_by_hand():
  ac = behavior('prob')
  critic = zero_critic(ac)
  out = ac.returns({}, critic, critic, trajectories(), jnp.ones(2))
  stay, drift = np.asarray(out['returns'])
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
  np.testing.assert_allclose(stay, hand_returns([sigmoid(3.0)] * 3), rtol=1e-5)
  np.testing.assert_allclose(
      drift, hand_returns([sigmoid(3.0 - 0.8), sigmoid(3.0 - 1.6), sigmoid(3.0 - 2.4)]), rtol=1e-5)
  assert drift[0] < stay[0] - 0.05
  # The weights are the probability of still being in the episode: lower along the drift.
  weight = np.asarray(out['weight'])
  assert weight[1, -1] < weight[0, -1] < 1.0


@pytest.mark.parametrize('imag_cont', ['prob', 'mode'])
def test_actor_update_moves_away_from_the_drifting_action(imag_cont):
  """Action 1 took the drifting trajectory, action 0 the safe one (both from a uniform policy).
  The critic is 0, so both advantages are positive: what counts is the difference. With the
  continue probability the REINFORCE update raises the safe action's logit more than the
  drifting one's (against any baseline between the two returns, it lowers the drifting one);
  thresholded, the two pushes are equal and the actor cannot tell the actions apart."""
  ac = behavior(imag_cont)
  critic = zero_critic(ac)
  features = trajectories()
  actions = jnp.stack([jnp.tile(jnp.array([1.0, 0.0]), (3, 1)),
                       jnp.tile(jnp.array([0.0, 1.0]), (3, 1))])
  outputs = jnp.zeros((2, 3, 2))
  starts = {'bc_action': jnp.zeros((2, 2)), 'bc_mask': jnp.zeros(2)}
  norm = ReturnNorm(low=jnp.float32(0.0), high=jnp.float32(0.0))

  def loss(outputs):
    return ac.policy_loss(outputs, {}, critic, critic, norm, starts, jnp.ones(2),
                          (features, actions))[0]

  grads = np.asarray(jax.grad(loss)(outputs))
  # The loss is minimised: a negative gradient on a logit means the update raises it.
  safe_push, drift_push = -grads[0, 0, 0], -grads[1, 0, 1]
  if imag_cont == 'prob':
    assert safe_push - drift_push > 0.02 * safe_push > 0
  else:
    np.testing.assert_allclose(safe_push, drift_push, rtol=1e-5)


def test_replay_targets_by_hand():
  """One sequence of 5 steps: a terminal at t=2 (reward 5), a new episode from t=3 that is cut
  by a time limit at t=4 (is_last without is_terminal). Bootstraps `boot_t = 10 + t`."""
  ac = behavior('prob')
  critic = zero_critic(ac)
  reward = jnp.array([[0.0, 1.0, 5.0, 0.0, 2.0]])
  is_terminal = jnp.array([[False, False, True, False, False]])
  is_last = jnp.array([[False, False, True, False, True]])
  boot = 10.0 + jnp.arange(5.0)[None]
  replay = dict(features=jnp.zeros((1, 5, 1)), reward=reward, is_terminal=is_terminal,
                is_last=is_last)
  out = ac.replay_targets(critic, replay, boot)
  g, lam = DISCOUNT, LAM
  r3 = 2.0 + g * 14.0                    # t=4 is a time-limit end: bootstrap from boot_4 alone
  r2 = 0.0 + g * ((1 - lam) * 13.0 + lam * r3)  # t=2 is last: its own target is masked out
  r1 = 5.0                               # t=2 is terminal: no bootstrap past it
  r0 = 1.0 + g * ((1 - lam) * 11.0 + lam * r1)
  np.testing.assert_allclose(out['returns'][0], [r0, r1, r2, r3], rtol=1e-6)
  np.testing.assert_allclose(out['weight'][0], [1.0, 1.0, 0.0, 1.0])


def test_step_major_states_put_the_last_state_apart_and_rows_keep_step_order():
  n, steps, width = 3, 4, 2
  features = jnp.arange(n * steps * width, dtype=jnp.float32).reshape(n, steps, width)
  states = step_major(features)
  assert states.shape == (steps, n, width)
  np.testing.assert_array_equal(states[-1], features[:, -1])
  flat = rows(states[:-1])
  assert flat.shape == ((steps - 1) * n, width)
  np.testing.assert_array_equal(flat[n], features[0, 1])  # step 1 of trajectory 0
  np.testing.assert_array_equal(flat[n - 1], features[n - 1, 0])


def test_one_pass_gradients_equal_plain_autodiff():
  """REINFORCE's one pass over the imagined states (the actor's outputs from inside imagination,
  the critic's one forward pass in `imagined_heads`, the critic's loss through that pass's VJP)
  gives the losses and gradients of the plain formulation: the actor run again on the stopped
  states, the critic run again in its loss, each differentiated directly."""
  from tests.test_agent import make_agent
  agent = make_agent(discrete=True)
  ac = agent.behavior
  assert ac.reinforce_mix == 1.0  # REINFORCE: the one-pass path
  state = agent.init(jax.random.key(0))
  params, slow, norm = state.params, state.slow_critic, state.return_norm
  # Perturb the zero-initialised output layers so every head's gradient is non-trivial.
  keys = iter(jax.random.split(jax.random.key(1), 64))
  params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), params)
  slow = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), slow)
  wm = params['world_model']
  n = 6
  dynamics = agent.world_model.dynamics
  features = jax.random.normal(jax.random.key(2), (n, dynamics.feature_size))
  carry = dynamics.state_from_features(features)
  if 'stoch' in carry and carry['stoch'].ndim == 3:
    carry['stoch'] = jax.nn.one_hot(jnp.argmax(carry['stoch'], -1), carry['stoch'].shape[-1])
  starts = {'carry': carry, 'bc_action': jnp.zeros((n, agent.action_size)), 'bc_mask': jnp.zeros(n)}
  start_cont = jnp.ones(n)
  key = jax.random.key(3)

  (loss, aux), grads = ac.actor_value_and_grad(params['actor'], wm, params['critic'], slow, norm,
                                               starts, start_cont, key)
  (critic_loss, _), critic_grads = ac.critic_value_and_grad(params['critic'], aux)

  sg = jax.lax.stop_gradient
  features, actions, _, _ = ac.rollout(wm, params['actor'], starts, key, with_outputs=True)
  trajectory = sg((features, actions))

  def plain_actor_loss(actor):
    outputs = ac.actor.apply(actor, trajectory[0][:, :-1])
    return ac.policy_loss(outputs, wm, params['critic'], slow, norm, starts, start_cont,
                          trajectory)

  (want_loss, want_aux), want_grads = jax.value_and_grad(plain_actor_loss, has_aux=True)(
      params['actor'])
  (want_critic_loss, _), want_critic_grads = jax.value_and_grad(ac.critic_loss, has_aux=True)(
      params['critic'], want_aux['features'], want_aux['returns'], want_aux['weight'],
      want_aux['slow_value'])
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(critic_loss, want_critic_loss, rtol=1e-5)
  np.testing.assert_allclose(aux['returns'], want_aux['returns'], rtol=1e-5, atol=1e-6)
  for got, want in [(grads, want_grads), (critic_grads, want_critic_grads)]:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      assert float(jnp.abs(w).max()) > 0
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(jnp.abs(w).max()))
