"""Actor-critic learned in imagination (DreamerV1-V3 recipes as configuration).

Trajectories `[N, H+1, ...]` start from every posterior state of the replayed batch (N = B*T) and
roll the dynamics prior H steps under the actor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from dreamerjax.models import deferred_grads, dists, heads, nets, ops
from dreamerjax.models.worldmodel import WorldModel
from dreamerjax.types import ReturnNorm

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class ActorCritic:
  world_model: WorldModel
  discrete: bool
  action_size: int
  config: ml_collections.ConfigDict          # the `agent` section
  model_config: ml_collections.ConfigDict    # the `model` section (units, norm, act)

  def __post_init__(self):
    m, a = self.model_config, self.config
    common = dict(norm=m.norm, act=m.act, dtype=jnp.dtype(m.compute_dtype),
                  bias=m.get('arch') == 'public2024')
    outputs = self.action_size if self.discrete else 2 * self.action_size
    object.__setattr__(self, 'actor', nets.Head(outputs, a.actor_layers, m.units, **common))
    object.__setattr__(self, 'critic', nets.Head(
        heads.scalar_outputs(a.critic_head, m.bins), a.critic_layers, m.units,
        zero_init=a.critic_head == 'twohot', **common))
    mix = a.actor_grad_mix
    if mix < 0:  # auto: REINFORCE for discrete actions, dynamics backprop for continuous ones
      mix = 1.0 if self.discrete else 0.0
    object.__setattr__(self, 'reinforce_mix', float(mix))

  def init(self, key):
    actor_key, critic_key = jax.random.split(key)
    features = jnp.zeros((1, self.world_model.dynamics.feature_size))
    critic = self.critic.init(critic_key, features)
    return self.actor.init(actor_key, features), critic

  def action_dist(self, actor_params, features) -> dists.ActionDist:
    return self.output_dist(self.actor.apply(actor_params, features))

  def output_dist(self, outputs) -> dists.ActionDist:
    """The action distribution of the actor's outputs."""
    return dists.ActionDist(self.discrete, outputs, unimix=self.config.actor_unimix)

  def value(self, critic_params, features) -> jax.Array:
    return self._predict(self.critic.apply(critic_params, features))

  def _predict(self, outputs) -> jax.Array:
    """The value of the critic's `outputs`."""
    return heads.scalar_predict(self.config.critic_head, outputs, self.world_model.bins)

  def starts(self, wm_params, features, batch) -> dict:
    """What imagination starts from, one entry per replayed step (`N = B*T`), gradients stopped:
    `carry` (the dynamics state, with the Transformer's context window), and for the behaviour-
    cloning term the action the data took next from that state (`bc_action [N, A]`) and
    whether there is one (`bc_mask [N]`: not after the last step nor into an `is_first`)."""
    batch_size, length = batch['is_first'].shape
    is_first = batch['is_first'].at[:, 0].set(True)  # as WorldModel.loss observes it
    dynamics = self.world_model.dynamics
    if hasattr(dynamics, 'start_states'):
      carry = dynamics.start_states(wm_params['dynamics'], features, batch['action'], is_first)
    else:  # a dynamics whose state is its features
      carry = dynamics.state_from_features(features.reshape(batch_size * length, -1))
    next_action = jnp.concatenate([batch['action'][:, 1:], jnp.zeros_like(batch['action'][:, :1])],
                                  1)
    has_next = jnp.concatenate([~batch['is_first'][:, 1:], jnp.zeros((batch_size, 1), bool)], 1)
    return sg({'carry': carry, 'bc_action': next_action.reshape(batch_size * length, -1),
               'bc_mask': has_next.reshape(-1).astype(jnp.float32)})

  def rollout(self, wm_params, actor_params, starts, key, with_outputs: bool = False):
    """Imagines from `starts` (see `starts`).

    Returns `(features [N, H+1, F], actions [N, H, A])`. `with_outputs` adds the actor's outputs
    at `features[:, :-1]` (`[N, H, O]`) and the outputs of its linear layers there
    (`{path: [N, H, units]}`, `deferred_grads.record`); then nothing carries a gradient (the
    actions are sampled for REINFORCE), and `actor_value_and_grad` takes the actor's gradient
    after the loop.
    """
    def policy(features, k):
      if with_outputs:
        outputs, linear = deferred_grads.record(self.actor.apply)(sg(actor_params), features)
        return sg(self.output_dist(outputs).sample(k)), (outputs, linear)
      outputs = self.actor.apply(actor_params, features)
      return self.output_dist(outputs).sample(k), outputs

    with jax.named_scope('imagine'):
      _, features, actions, outputs = self.world_model.dynamics.imagine(
          wm_params['dynamics'], starts['carry'], policy, self.config.horizon, key,
          policy_aux=True)
    return (features, actions, *outputs) if with_outputs else (features, actions)

  def _heads(self, wm_params, critic_params, slow_critic_params, record_critic: bool = False):
    """`x [N, F] -> {name: [N, ...]}`: every head the returns read, at one step's states.

    'reward', 'cont' (the continue logits), 'value', and 'slow_value' when the target or the
    regularizer uses it. With `record_critic`, the critic's outputs 'critic' and its linear
    layers' outputs 'critic_linear' (`deferred_grads.record`) instead of 'value'."""
    a, wm = self.config, self.world_model

    def heads(x):
      out = {'reward': wm.reward(wm_params, x), 'cont': wm.cont_logits(wm_params, x)}
      if record_critic:
        out['critic'], out['critic_linear'] = deferred_grads.record(self.critic.apply)(
            critic_params, x)
      else:
        out['value'] = self.value(critic_params, x)
      if a.slow_critic_target or a.slow_critic_reg > 0:
        out['slow_value'] = self.value(slow_critic_params, x)
      return out

    return heads

  def imagined_heads(self, wm_params, critic_params, slow_critic_params, features) -> dict:
    """The heads at the imagined states before the last (`_heads`, gradients stopped), each
    `[H, N, ...]`, in one pass over the states a step at a time; and the critic's outputs there
    as rows `[H N, O]` ('critic') with their VJP to `critic_params` ('critic_vjp'), which the
    critic's loss reads, as the public code's one critic call does.

    A step's states `[N, F]` (10 MB at 12m) are read once by all four heads' first products:
    over 1024 rows a step these run at 1.15-1.2x the speed of one product over all `H N` rows
    (docs/benchmarks.md). The critic's gradient is taken after the loop over every row at once,
    from its recorded linear outputs (`deferred_grads.replay`)."""
    with jax.named_scope('imagined_heads'):
      states = step_major(features)[:-1]
      out = jax.lax.map(self._heads(sg(wm_params), sg(critic_params), sg(slow_critic_params),
                                    record_critic=True), states)
      linear = {path: rows(y) for path, y in out.pop('critic_linear').items()}
      critic = lambda p: deferred_grads.replay(self.critic.apply, linear)(p, rows(states))  # noqa: E731
      out['critic'], out['critic_vjp'] = jax.vjp(critic, critic_params)
      out['value'] = self._predict(sg(out['critic'])).reshape(states.shape[:2])
      return out

  def returns(self, wm_params, critic_params, slow_critic_params, features, start_cont,
              heads=None):
    """Lambda returns `[N, H]`, values `[N, H+1]` and loss weights `[N, H]` of a trajectory;
    also the imagined rewards `[N, H]` and the slow critic's values `[N, H+1]` (None when
    neither the target nor the regularizer uses them), so no head runs twice on the same states.
    `heads`: the heads at `features[:, :-1]` (`imagined_heads`), if computed."""
    with jax.named_scope('imagined_heads'):
      a = self.config
      # The states before the last (`states[:-1]`, what imagination's loop wrote) and the last
      # are read apart: XLA then drops the join of the two in `imagine` (a copy of every state)
      # and no slice of the joined states is copied either. The reward and continue heads run
      # on the start states too, whose outputs are dropped (1/H more of their work).
      states = step_major(features)
      step_heads = self._heads(wm_params, critic_params, slow_critic_params)
      if heads is None:  # one product per layer over every row (a loop of 1024-row steps was
        # 3-8% slower differentiated through the states, under dynamics backprop)
        steps = states.shape[0] - 1, states.shape[1]
        before = step_heads(rows(states[:-1]))
        heads = jax.tree.map(lambda y: y.reshape(*steps, *y.shape[1:]), before)
      last = step_heads(states[-1])
      each = lambda name: jnp.concatenate([heads[name], last[name][None]]).T  # noqa: E731
      reward = each('reward')[:, 1:]
      logits = each('cont')[:, 1:]
      cont = jax.nn.sigmoid(logits) if a.imag_cont == 'prob' else (logits > 0).astype(jnp.float32)
      cont = jnp.concatenate([start_cont[:, None], cont], 1)
      value = each('value')
      slow_value = each('slow_value') if 'slow_value' in last else None
      target_value = slow_value if a.slow_critic_target else value
      discount = a.discount * cont
      returns = ops.lambda_returns(reward.T, discount[:, 1:].T, target_value.T, a.lam).T
      # A state's weight is the probability of still being in the episode when reaching it.
      weight = sg(jnp.cumprod(discount, 1) / a.discount)[:, :-1]
      return dict(returns=returns, value=value, weight=weight, reward=reward,
                  slow_value=slow_value)

  def actor_value_and_grad(self, actor_params, wm_params, critic_params, slow_critic_params,
                           return_norm, starts, start_cont, key):
    """`((loss, aux), grads)` of the actor loss with respect to `actor_params`.

    REINFORCE (no gradient through the rollout) differentiates the loss with respect to the
    outputs the actor produced while imagining, and takes that on to its parameters after the
    loop: the actor replayed on the stacked states with its linear layers' recorded outputs
    (`deferred_grads.replay`), so its forward products run once, inside imagination, and its
    weight gradients are one product per layer over all `H x N` states. The loop keeps no
    residuals (the VJP of `lax.scan` would store every imagined state a second time). It also
    runs the critic once over those states (`imagined_heads`) for the returns and, through
    `aux['critic_forward']`, for the critic's loss (`critic_value_and_grad`). Dynamics backprop
    imagines inside `actor_loss`.
    """
    args = (wm_params, critic_params, slow_critic_params, return_norm, starts, start_cont)
    if self.reinforce_mix < 1.0:
      with jax.named_scope('actor_loss'):  # imagination inside is scoped 'imagine'
        return jax.value_and_grad(self.actor_loss, has_aux=True)(actor_params, *args, key)

    features, actions, _, linear = self.rollout(wm_params, actor_params, starts, key,
                                                with_outputs=True)
    trajectory = (features, actions)
    states = step_major(features)[:-1]
    linear = {path: rows(step_major(y)) for path, y in linear.items()}

    def outputs_of(actor):
      with jax.named_scope('imagine'):  # its backward pass is the actor's gradient
        out = deferred_grads.replay(self.actor.apply, linear)(actor, rows(states))
        return jnp.swapaxes(out.reshape(*states.shape[:2], -1), 0, 1)

    outputs, outputs_vjp = jax.vjp(outputs_of, actor_params)
    heads = self.imagined_heads(wm_params, critic_params, slow_critic_params, trajectory[0])
    critic_forward = heads.pop('critic'), heads.pop('critic_vjp')
    with jax.named_scope('actor_loss'):
      (loss, aux), output_grads = jax.value_and_grad(self.policy_loss, has_aux=True)(
          outputs, *args, trajectory, heads)
    aux = {**aux, 'critic_forward': critic_forward}
    return (loss, aux), outputs_vjp(output_grads)[0]

  def actor_loss(self, actor_params, wm_params, critic_params, slow_critic_params, return_norm,
                 starts, start_cont, key):
    """Actor loss with imagination inside, so gradients can flow through the dynamics (dynamics
    backprop; REINFORCE differentiates `policy_loss` instead, see `actor_value_and_grad`)."""
    trajectory = self.rollout(sg(wm_params), actor_params, starts, key)
    outputs = self.actor.apply(actor_params, sg(trajectory[0][:, :-1]))
    return self.policy_loss(outputs, wm_params, critic_params, slow_critic_params, return_norm,
                            starts, start_cont, trajectory)

  def policy_loss(self, outputs, wm_params, critic_params, slow_critic_params, return_norm,
                  starts, start_cont, trajectory, heads=None):
    """Actor loss from the actor's outputs `[N, H, O]` at the trajectory's states
    `features[:, :-1]` (`trajectory = (features, actions)`, see `rollout`); `heads`: the heads
    there (`imagined_heads`), else `returns` runs them."""
    a = self.config
    features, actions = trajectory
    rollout = self.returns(sg(wm_params), sg(critic_params), sg(slow_critic_params), features,
                           start_cont, heads)
    returns, value, weight = rollout['returns'], rollout['value'], rollout['weight']
    if a.return_norm == 'percentile':
      low, high, scale = ops.percentile_range_update(
          return_norm.low, return_norm.high, returns, a.return_norm_decay,
          tuple(a.return_norm_percentiles))
    else:
      low, high, scale = return_norm.low, return_norm.high, jnp.float32(1.0)
    dist = self.output_dist(outputs)
    advantage = (returns - value[:, :-1]) / scale
    objective = jnp.zeros_like(returns)
    if a.actor_objective == 'sign':
      objective += sign_of_advantage(dist.log_prob(actions), sg(advantage), weight)
    elif self.reinforce_mix > 0:
      objective += self.reinforce_mix * dist.log_prob(actions) * sg(advantage)
    if self.reinforce_mix < 1 and a.actor_objective != 'sign':
      objective += (1.0 - self.reinforce_mix) * returns / scale
    entropy = dist.entropy()
    loss = -jnp.mean(weight * (objective + a.entropy * entropy))
    bc_metrics = {}
    if a.bc_weight > 0:  # offline: stay close to the data's actions at the replayed states
      # The start states are `features[:, 0]`: the actor's outputs there are `outputs[:, 0]`.
      start_dist = self.output_dist(outputs[:, 0])
      mask = starts['bc_mask']
      bc_loss = -jnp.sum(mask * start_dist.log_prob(starts['bc_action'])) / jnp.maximum(
          jnp.sum(mask), 1.0)
      loss += a.bc_weight * bc_loss
      bc_metrics = {'ac/bc_loss': bc_loss}
    aux = dict(features=sg(features), returns=sg(returns), weight=weight,
               slow_value=None if rollout['slow_value'] is None else sg(rollout['slow_value']),
               return_norm=ReturnNorm(low=low, high=high),
               metrics={'ac/actor_loss': loss, 'ac/entropy': jnp.mean(entropy),
                        'ac/return_mean': jnp.mean(returns), 'ac/value_mean': jnp.mean(value),
                        'ac/return_scale': scale, 'ac/advantage_std': jnp.std(advantage),
                        'ac/imagined_reward': jnp.mean(sg(rollout['reward'])),
                        **bc_metrics})
    return loss, aux

  def replay_targets(self, slow_critic_params, replay: dict, boot: jax.Array) -> dict:
    """Targets of the critic along the replayed sequences (`replay`: posterior `features
    [B, T, F]`, `reward`, `is_terminal`, `is_last [B, T]`), gradients stopped.

    Lambda returns over the real rewards and terminals, bootstrapped at every step by `boot
    [B, T]`, the imagined return from that replayed state: `R_t = r_{t+1} + discount * (1 -
    terminal_{t+1}) * ((1 - mix) * boot_{t+1} + mix * R_{t+1})` with `mix = lam * (1 -
    last_{t+1})`, so no return chains past an episode's end and a time-limit end bootstraps.
    Returns `returns [B, T-1]`, `weight [B, T-1]` (0 on a last step) and the slow critic's
    values there (None without the regularizer)."""
    a = self.config
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    live = a.discount * (1.0 - f32(replay['is_terminal']))
    mix = a.lam * (1.0 - f32(replay['is_last']))
    returns = ops.lambda_returns(f32(replay['reward'])[:, 1:].T, live[:, 1:].T, boot.T,
                                 mix[:, 1:].T).T
    slow_value = None
    if a.slow_critic_reg > 0:
      slow_value = self.value(slow_critic_params, replay['features'][:, :-1])
    return sg(dict(features=replay['features'], returns=returns,
                   weight=1.0 - f32(replay['is_last'])[:, :-1], slow_value=slow_value))

  def critic_value_and_grad(self, critic_params, aux: dict, replay=None):
    """`((loss, metrics), grads)` of `critic_loss` at the actor loss's `aux`. With
    `aux['critic_forward']` (REINFORCE), the loss is differentiated with respect to those
    outputs and taken on to the parameters by their VJP, so the critic's forward pass over the
    imagined states is the one the returns read."""
    args = (aux['features'], aux['returns'], aux['weight'], aux['slow_value'], replay)
    if aux.get('critic_forward') is None:
      return jax.value_and_grad(self.critic_loss, has_aux=True)(critic_params, *args)
    critic_rows, critic_vjp = aux['critic_forward']
    (loss, metrics), (grads, row_grads) = jax.value_and_grad(
        self.critic_loss, (0, 6), has_aux=True)(critic_params, *args, critic_rows)
    with jax.named_scope('critic_loss'):
      return (loss, metrics), jax.tree.map(jnp.add, grads, critic_vjp(row_grads)[0])

  def critic_loss(self, critic_params, features, returns, weight, slow_value, replay=None,
                  critic_rows=None):
    """`slow_value [N, H+1]`: the slow critic's values of `features` (`returns` computes them;
    None when `slow_critic_reg` is 0). `replay`: `replay_targets`, for the replay-return loss
    (weighted by `agent.replay_critic`). `critic_rows`: the critic's outputs at
    `features[:, :-1]` (`imagined_heads`), else computed here from `critic_params`."""
    a = self.config
    with jax.named_scope('critic_loss'):
      states = step_major(features)[:-1]
      if critic_rows is None:
        critic_rows = self.critic.apply(critic_params, rows(states))
      outputs = jnp.swapaxes(critic_rows.reshape(*states.shape[:2], -1), 0, 1)
      loss = jnp.mean(weight * self._value_loss(outputs, returns, slow_value))
      metrics = {'ac/critic_loss': loss}
      if replay is not None:
        outputs = self.critic.apply(critic_params, replay['features'][:, :-1])
        replay_loss = jnp.mean(replay['weight'] * self._value_loss(
            outputs, replay['returns'], replay['slow_value'], offset=0))
        loss += a.replay_critic * replay_loss
        metrics['ac/replay_critic_loss'] = replay_loss
        metrics['ac/replay_return_mean'] = jnp.mean(replay['returns'])
      return loss, metrics

  def _value_loss(self, outputs, returns, slow_value, offset=1):
    """The critic's loss toward `returns` plus the slow-critic regularizer (`slow_value` has
    `offset` more steps than `returns`; the extra last ones are dropped)."""
    a = self.config
    loss = heads.scalar_loss(a.critic_head, outputs, returns, self.world_model.bins)
    if a.slow_critic_reg > 0:
      slow_value = slow_value[:, :slow_value.shape[1] - offset]
      loss += a.slow_critic_reg * heads.scalar_loss(a.critic_head, outputs, slow_value,
                                                    self.world_model.bins)
    return loss


def step_major(features: jax.Array) -> jax.Array:
  """Imagined features `[N, H+1, F]` as `[H+1, N, F]`, the layout imagination's loop writes: XLA
  folds this transpose into the loop's own, so the heads read the states in place, and the states
  before the last and the last one are slices along the leading axis that XLA takes straight
  from the loop's output and its last state (a slice of the batch-major states is a copy)."""
  return jnp.swapaxes(features, 0, 1)


def rows(states: jax.Array) -> jax.Array:
  """`[S, N, F]` -> `[S N, F]`: one product over every state."""
  return states.reshape(-1, states.shape[-1])


def sign_of_advantage(log_prob: jax.Array, advantage: jax.Array, weight: jax.Array,
                      positive_share: float = 0.5) -> jax.Array:
  """DreamerV4's policy objective `[N, H]` (PMPO-style): only the sign of the advantage counts.

  objective = share * log pi(a) / n+ on states with A > 0, - (1 - share) * log pi(a) / n- on
  states with A < 0, where n+- are the (weighted) fractions of such states, so both sets pull
  with fixed total strength whatever the scale of the returns.
  """
  positive = (advantage > 0).astype(jnp.float32)
  negative = (advantage < 0).astype(jnp.float32)
  total = jnp.maximum(jnp.sum(weight), 1e-6)
  positive_fraction = jnp.maximum(jnp.sum(weight * positive) / total, 1e-6)
  negative_fraction = jnp.maximum(jnp.sum(weight * negative) / total, 1e-6)
  return log_prob * (positive_share * positive / positive_fraction -
                     (1.0 - positive_share) * negative / negative_fraction)
