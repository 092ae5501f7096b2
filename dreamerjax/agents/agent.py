"""The Dreamer agent: `init`, `train_step` and `policy_step` as pure functions.

`train_step(state, batch) -> (state, metrics)` is one XLA program: a world-model update,
imagination from every posterior state, and actor and critic updates. `policy_step` encodes one
observation per env, updates the posterior and returns an action.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from dreamerjax.agents.behavior import ActorCritic
from dreamerjax.agents.planner import Planner
from dreamerjax.models import nets
from dreamerjax.models.worldmodel import WorldModel
from dreamerjax.types import Batch, Metrics, ReturnNorm, TrainState


def _optimizer(lr: float, eps: float, clip: float, flat: bool) -> optax.GradientTransformation:
  """Clipping and Adam; `flat`: on all parameters raveled into one vector, so the moments are
  one vector each and every elementwise step is one kernel, not one per parameter leaf (the
  1m image update compiles about 19% faster; docs/benchmarks.md, "Adam on one flat vector")."""
  tx = optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr, eps=eps))
  return optax.flatten(tx) if flat else tx


@dataclasses.dataclass(frozen=True)
class Agent:
  """Static description of an agent: modules, optimizers and config. Holds no arrays."""

  config: ml_collections.ConfigDict          # resolved (see configs.resolve)
  obs_space: dict
  discrete: bool
  action_size: int
  # Another world model with WorldModel's methods (World Models' VAE + MDN-RNN); None: WorldModel.
  model: Any = None

  def __post_init__(self):
    c = self.config
    world_model = self.model or WorldModel(self.obs_space, self.action_size, c.model)
    object.__setattr__(self, 'world_model', world_model)
    object.__setattr__(self, 'behavior', ActorCritic(world_model, self.discrete, self.action_size,
                                                     c.agent, c.model))
    # PlaNet: actions by CEM planning; the actor and critic exist (one TrainState layout for all
    # variants) but are neither trained nor used.
    object.__setattr__(self, 'planner', Planner(world_model, self.discrete, self.action_size,
                                                c.planner) if c.agent.get('policy') == 'cem'
                       else None)
    o = c.optim
    object.__setattr__(self, 'optimizers', {
        'world_model': _optimizer(o.model_lr, o.eps, o.model_clip, o.flat),
        'actor': _optimizer(o.actor_lr, o.actor_critic_eps, o.actor_critic_clip, o.flat),
        'critic': _optimizer(o.critic_lr, o.actor_critic_eps, o.actor_critic_clip, o.flat)})

  # --------------------------------------------------------------------------- state

  def init(self, key: jax.Array) -> TrainState:
    wm_key, ac_key, rng = jax.random.split(key, 3)
    actor, critic = self.behavior.init(ac_key)
    params = {'world_model': self.world_model.init(wm_key), 'actor': actor, 'critic': critic}
    opt_state = {name: tx.init(params[name]) for name, tx in self.optimizers.items()}
    # A copy: donating the state must not see the same buffer twice.
    return TrainState(params=params, opt_state=opt_state,
                      slow_critic=jax.tree.map(jnp.copy, critic),
                      return_norm=ReturnNorm(low=jnp.float32(0.0), high=jnp.float32(0.0)),
                      step=jnp.int32(0), rng=rng)

  def param_counts(self, state: TrainState) -> dict[str, int]:
    counts = {name: nets.count_params(p) for name, p in state.params.items()}
    counts['total'] = sum(counts.values())
    return counts

  # --------------------------------------------------------------------------- training

  def apply_gradients(self, group: str, grads, opt_state, params):
    """One optimizer step of `group` ('world_model', 'actor' or 'critic'): the new parameters
    and optimizer state, and the gradients' global norm. With `optim.flat` the norm comes from
    the same raveled vector as the optimizer's clipping, so no kernel per leaf computes it
    again."""
    with jax.named_scope('optimizer'):
      updates, opt_state = self.optimizers[group].update(grads, opt_state, params)
      if self.config.optim.flat:
        raveled = ravel_pytree(grads)[0]
        norm = jnp.sqrt(jnp.sum(jnp.square(raveled)))
      else:
        norm = optax.tree.norm(grads)
      return optax.apply_updates(params, updates), opt_state, norm

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One update of world model, actor and critic. Non-finite losses leave the state unchanged
    (apart from `step` and `rng`) and set `train/nonfinite`, which the loop turns into an error."""
    rng, wm_key, img_key = jax.random.split(state.rng, 3)
    params = state.params
    (_, (features, wm_metrics)), wm_grads = jax.value_and_grad(
        self.world_model.loss, has_aux=True)(params['world_model'], batch, wm_key)
    wm_params, wm_opt, wm_norm = self.apply_gradients(
        'world_model', wm_grads, state.opt_state['world_model'], params['world_model'])

    with jax.named_scope('starts'):
      starts = self.behavior.starts(params['world_model'], features, batch)
    start_cont = 1.0 - batch['is_terminal'].reshape(-1).astype(jnp.float32)
    if self.planner is not None:
      behavior_state = dict(params={'actor': params['actor'], 'critic': params['critic']},
                            opt_state={k: state.opt_state[k] for k in ('actor', 'critic')},
                            slow_critic=state.slow_critic, return_norm=state.return_norm)
      behavior_losses, behavior_metrics = [], {}
    else:
      replay = dict(features=jax.lax.stop_gradient(features),
                    **{k: batch[k] for k in ('reward', 'is_terminal', 'is_last')})
      behavior_state, behavior_losses, behavior_metrics = self.behavior_update(
          state, params['world_model'], starts, start_cont, img_key, replay)

    new_state = TrainState(
        params={'world_model': wm_params, **behavior_state['params']},
        opt_state={'world_model': wm_opt, **behavior_state['opt_state']},
        slow_critic=behavior_state['slow_critic'], return_norm=behavior_state['return_norm'],
        step=state.step + 1, rng=rng)
    losses = jnp.stack([wm_metrics['wm/loss'], *behavior_losses])
    finite = jnp.all(jnp.isfinite(losses))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = new_state.replace(step=state.step + 1, rng=rng)
    metrics = {**wm_metrics, **behavior_metrics, 'wm/grad_norm': wm_norm,
               'train/nonfinite': 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics

  def behavior_update(self, state: TrainState, wm_params, starts: dict,
                      start_cont: jax.Array, img_key: jax.Array, replay: dict | None = None):
    """Actor and critic updates from imagination starting at `starts` (`ActorCritic.starts`).
    `replay` (posterior `features [B, T, F]`, `reward`, `is_terminal`, `is_last`) adds the
    replay-return critic loss when `agent.replay_critic > 0`.

    Returns `(fields, losses, metrics)`: the new `params`/`opt_state` (actor, critic),
    `slow_critic` and `return_norm`; the losses to check for finiteness; metrics.
    """
    behavior, params = self.behavior, {**state.params, 'world_model': wm_params}
    (actor_loss, aux), actor_grads = behavior.actor_value_and_grad(
        params['actor'], params['world_model'], params['critic'], state.slow_critic,
        state.return_norm, starts, start_cont, img_key)
    actor_params, actor_opt, actor_norm = self.apply_gradients(
        'actor', actor_grads, state.opt_state['actor'], params['actor'])
    replay_targets = None
    if replay is not None and self.config.agent.replay_critic > 0:
      boot = aux['returns'][:, 0].reshape(replay['reward'].shape)
      replay_targets = behavior.replay_targets(state.slow_critic, replay, boot)
    (critic_loss, critic_metrics), critic_grads = behavior.critic_value_and_grad(
        params['critic'], aux, replay_targets)
    critic_params, critic_opt, critic_norm = self.apply_gradients(
        'critic', critic_grads, state.opt_state['critic'], params['critic'])
    rate = self.config.agent.slow_critic_rate
    slow_critic = jax.tree.map(lambda s, p: (1 - rate) * s + rate * p, state.slow_critic,
                               critic_params)

    fields = dict(params={'actor': actor_params, 'critic': critic_params},
                  opt_state={'actor': actor_opt, 'critic': critic_opt}, slow_critic=slow_critic,
                  return_norm=aux['return_norm'])
    metrics = {**aux['metrics'], **critic_metrics, 'ac/actor_grad_norm': actor_norm,
               'ac/critic_grad_norm': critic_norm}
    return fields, [actor_loss, critic_loss], metrics

  # --------------------------------------------------------------------------- acting

  def initial_policy_carry(self, num_envs: int) -> dict:
    return {'latent': self.world_model.dynamics.initial(num_envs),
            'action': jnp.zeros((num_envs, self.action_size), jnp.float32)}

  def policy_step(self, state: TrainState, carry: dict, obs: dict, key: jax.Array,
                  mode: str = 'train') -> tuple[dict, jax.Array]:
    """One acting step for `N` envs: `obs` leaves `[N, ...]` with `is_first`; returns the new carry
    and the action `[N, A]` (one-hot for discrete; in [-1, 1] for continuous)."""
    latent_key, action_key = jax.random.split(key)
    params = state.params['world_model']
    embed = self.world_model.encode(params, obs)
    latent, _, _ = self.world_model.dynamics.obs_step(
        params['dynamics'], carry['latent'], carry['action'], embed, obs['is_first'], latent_key,
        mode=mode == 'eval')
    if self.planner is not None:
      action = self.planner.act(params, latent, action_key, explore=mode == 'train')
      return {'latent': latent, 'action': action}, action
    dist = self.behavior.action_dist(state.params['actor'],
                                     self.world_model.dynamics.features(latent))
    action = dist.sample(action_key) if mode == 'train' else dist.mode()
    action = jax.lax.stop_gradient(action)
    return {'latent': latent, 'action': action}, action

  def env_action(self, action: np.ndarray) -> np.ndarray:
    """Model action `[N, A]` -> env action: int32 indices `[N]` or float32 `[N, A]`."""
    action = np.asarray(action)
    return action.argmax(-1).astype(np.int32) if self.discrete else action.astype(np.float32)

  def model_action(self, env_action: np.ndarray) -> np.ndarray:
    """Env action -> model action `[N, A]` (one-hot for discrete)."""
    if self.discrete:
      return np.eye(self.action_size, dtype=np.float32)[np.asarray(env_action)]
    return np.asarray(env_action, np.float32)


def check_finite(metrics: dict, step: int) -> None:
  """Raises FloatingPointError when a fetched `train/nonfinite` flag is set."""
  flag = metrics.get('train/nonfinite', 0.0)
  if float(np.max(np.asarray(flag))) > 0:
    bad = {k: float(np.max(v)) for k, v in metrics.items() if not math.isfinite(float(np.max(v)))}
    raise FloatingPointError(
        f'non-finite loss at env step {step}: {bad or "see train/nonfinite"}. The update was '
        'skipped, so the last checkpoint is finite. Lower the learning rates '
        '(--config.optim.*_lr), check the observations/rewards for NaN or inf, or use '
        '--config.model.compute_dtype=float32.')
