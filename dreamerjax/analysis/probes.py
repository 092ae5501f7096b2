"""State probes (PlaNet's open-loop state diagnostic): what do a world model's latents know?

A trained world model (of any variant: Dreamer-family agents trained online or offline, PlaNet,
World Models) is frozen. Episodes are collected with the run's own policy together with
the simulator's ground truth (`VectorEnv.truth`: DMC positions/velocities, Atari RAM, the
classic-control state vector). Small MLP probes are trained (JAX, Adam) to predict each quantity
and the reward from

* filtered latents: the posterior features of step t (horizon 0), and
* open-loop latents: the prior features of step t predicted k steps ahead from the posterior at
  t - k on the recorded actions (k = 1, 5, 15 by default).

Scores are R^2 on held-out steps (the streams of a quarter of the envs), per quantity (pooled
over its dimensions) and horizon; `run` writes `probes.md`, `probes.json` and `probes.png`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamerjax.agents import worldmodels
from dreamerjax.models import nets
from dreamerjax.models.openloop import rollout_actions
from dreamerjax.run import common
from dreamerjax.run import worldmodels as worldmodels_run

FILTERED = 0  # horizon key of the posterior features


def r2_score(prediction: np.ndarray, target: np.ndarray) -> float:
  """Pooled R^2 over all dimensions of `[N, D]`: 1 - SSE / SST (SST about the target mean)."""
  prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
  total = np.sum(np.square(target - target.mean(0)))
  return float(1.0 - np.sum(np.square(prediction - target)) / max(total, 1e-12))


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, key: jax.Array,
              steps: int = 2000, units: int = 128, layers: int = 2, lr: float = 1e-3,
              batch_size: int = 256, validation: float = 0.2, every: int = 100) -> np.ndarray:
  """Trains an MLP `x -> y` on standardized inputs and targets; returns predictions on `test_x`.

  The last `validation` fraction of the training rows is held out for early stopping (the
  parameters with the lowest validation error, checked every `every` steps, are kept), so that a
  probe on features without information predicts about the mean (R^2 near 0, not below).
  """
  # Inputs are latent features (order 1). The floor keeps a dimension that is (nearly) constant
  # in training, e.g. a category never chosen there, from blowing up its held-out values.
  x_mean, x_std = train_x.mean(0), np.maximum(train_x.std(0), 1e-2)
  y_mean, y_std = train_y.mean(0), train_y.std(0) + 1e-6
  inputs = jnp.asarray((train_x - x_mean) / x_std, jnp.float32)
  targets = jnp.asarray((train_y - y_mean) / y_std, jnp.float32)
  split = max(1, int(len(inputs) * (1.0 - validation)))
  (inputs, held_x), (targets, held_y) = (
      (x[:split], x[split:] if split < len(x) else x) for x in (inputs, targets))
  # Zero-initialized output: before training the probe predicts the mean (R^2 = 0).
  model = nets.Head(train_y.shape[-1], layers, units, norm='none', act='relu', zero_init=True)
  tx = optax.adam(lr)
  loss = lambda p, x, y: jnp.mean(jnp.square(model.apply(p, x) - y))  # noqa: E731

  @jax.jit
  def train(params, opt_state, key):
    def step(carry, key):
      params, opt_state = carry
      index = jax.random.randint(key, (batch_size,), 0, inputs.shape[0])
      grads = jax.grad(loss)(params, inputs[index], targets[index])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, every))
    return params, opt_state, loss(params, held_x, held_y)

  params = model.init(key, inputs[:1])
  opt_state, best = tx.init(params), (float(jnp.mean(jnp.square(held_y))), params)
  for round_index in range(max(1, steps // every)):
    params, opt_state, held_loss = train(params, opt_state, jax.random.fold_in(key, round_index))
    if float(held_loss) < best[0]:
      best = (float(held_loss), params)
  test = jnp.asarray((test_x - x_mean) / x_std, jnp.float32)
  return np.asarray(model.apply(best[1], test)) * y_std + y_mean


# ----------------------------------------------------------------------------- latents


def latent_features(world_model, params, data: dict, horizons: tuple[int, ...], key: jax.Array,
                    chunk: int = 1024) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Features per horizon: `{k: (features [M, F], index [M, 2])}` where `index` holds the
  (env, step) that the features describe. k = 0: posterior features of every step; k > 0: the
  prior k steps ahead from the posterior at `step - k`, only where no episode starts in between.

  `data` leaves are `[N, T, ...]` streams (obs keys, `action`, `is_first`).
  """
  dynamics = world_model.dynamics
  num_envs, length = data['is_first'].shape
  observe_key, rollout_key = jax.random.split(key)
  obs = {k: jnp.asarray(v) for k, v in data.items()}
  is_first = obs['is_first'].at[:, 0].set(True)
  _, filtered, _, _ = jax.jit(lambda p: dynamics.observe(
      p['dynamics'], dynamics.initial(num_envs), world_model.encode(p, obs), obs['action'],
      is_first, observe_key))(params)
  filtered = np.asarray(filtered)
  grid = np.stack(np.meshgrid(np.arange(num_envs), np.arange(length), indexing='ij'), -1)
  result = {FILTERED: (filtered.reshape(-1, filtered.shape[-1]), grid.reshape(-1, 2))}
  longest = max(horizons)
  if longest <= 0:
    return result
  starts = grid[:, :length - longest].reshape(-1, 2)
  actions = np.asarray(data['action'])
  firsts = np.asarray(data['is_first'])
  offsets = np.arange(1, longest + 1)

  @jax.jit
  def rollout(start_features, window, key):
    _, feats = rollout_actions(dynamics, params['dynamics'],
                               dynamics.state_from_features(start_features), window, key)
    return feats

  pieces: dict[int, list] = {k: [] for k in horizons if k > 0}
  for begin in range(0, len(starts), chunk):
    part = starts[begin:begin + chunk]
    count = len(part)
    part = np.concatenate([part, np.repeat(part[-1:], chunk - count, 0)])  # one compiled shape
    env_index, step = part[:, 0], part[:, 1]
    window = actions[env_index[:, None], step[:, None] + offsets]
    feats = np.asarray(rollout(filtered[env_index, step], window,
                               jax.random.fold_in(rollout_key, begin)))[:count]
    crossing = np.cumsum(firsts[env_index[:, None], step[:, None] + offsets], 1)[:count] > 0
    for k in pieces:
      valid = ~crossing[:, k - 1]
      target_index = np.stack([env_index[:count], step[:count] + k], -1)
      pieces[k].append((feats[valid, k], target_index[valid]))
  for k, parts in pieces.items():
    result[k] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return result


# ----------------------------------------------------------------------------- collection


def collect(act, initial_carry, env_action, config, steps: int, num_envs: int,
            seed: int) -> dict:
  """Streams `[N, T, ...]` of obs, action, reward, is_first and the ground truth (`truth/<name>`)
  from `num_envs` envs acting with `act(carry, obs, key) -> (carry, model action)` (the run's own
  policy); `env_action` maps model actions to the env's."""
  env = common.make_env(config, num_envs, seed)
  try:
    obs = env.reset()
    carry = initial_carry(num_envs)
    action = np.zeros((num_envs, env.act_space.num_actions), np.float32)
    rows = []
    for step in range(steps):
      truth = {f'truth/{k}': v for k, v in env.truth.items()}
      rows.append({**obs, **truth, 'action': action * ~obs['is_first'][:, None]})
      model_obs = {k: obs[k] for k in (*env.obs_space, 'is_first')}
      carry, action = act(carry, model_obs, jax.random.key(seed * 100_003 + step))
      action = np.asarray(action)
      obs = env.step(env_action(action))
  finally:
    env.close()
  return {key: np.stack([row[key] for row in rows], 1) for key in rows[0]}


def restore_subject(workdir: str) -> dict:
  """What probes need from any run (online or offline Dreamer-family agents, PlaNet, World
  Models): `world_model`, its `params`, the run's policy as `act`/`initial_carry`/`env_action`
  (see `collect`), the checkpoint `step`, the `config` and a `title`."""
  loaded = common.load_run(workdir)
  config, agent, _ = loaded
  if config.variant == 'worldmodels':
    step, model, params, controller = worldmodels_run.restore(
        workdir, config, agent.obs_space, agent.discrete, agent.action_size)
    policy = worldmodels.controller_policy(config, model, agent.discrete, controller)
    return dict(world_model=model, params=params, step=step, config=config,
                act=worldmodels.acting(model, params, policy),
                initial_carry=lambda count: worldmodels.initial_carry(model, count),
                env_action=agent.env_action,
                title=f'worldmodels on {config.task}, {config.agent.policy} '
                      f'controller, checkpoint at update {step}')
  _, _, step, state = common.restore_agent(workdir, loaded)  # seed 0 of a several-seed run
  policy = jax.jit(agent.policy_step)
  unit = 'update' if config.run.mode == 'offline' else 'env step'
  return dict(world_model=agent.world_model, params=state.params['world_model'], step=step,
              config=config, act=lambda carry, obs, key: policy(state, carry, obs, key),
              initial_carry=agent.initial_policy_carry, env_action=agent.env_action,
              title=f'{config.variant} ({config.run.mode}) on {config.task}, checkpoint at '
                    f'{unit} {step}')


# ----------------------------------------------------------------------------- report


def probe_table(features: dict, data: dict, key: jax.Array, steps: int = 2000,
                test_fraction: float = 0.25) -> dict[str, dict[int, float]]:
  """R^2 `{quantity: {horizon: score}}` of probes on `features` (from `latent_features`) for
  every `truth/<name>` of `data` and the reward. The whole streams of the last `test_fraction` of
  the envs are held out (at least one env): neighbouring steps are nearly equal, and the end of a
  stream can sit in one corner of the state space (a fallen walker), so holding out the tail of
  every stream would measure the probe on an unrepresentative, low-variance slice. With a single
  env, its last `test_fraction` of steps is held out instead."""
  envs, length = data['is_first'].shape
  held_envs = max(1, round(envs * test_fraction))
  names = sorted(k[len('truth/'):] for k in data if k.startswith('truth/'))
  targets = {name: data[f'truth/{name}'] for name in names}
  targets['reward'] = data['reward'][..., None]
  columns = list(targets)
  sizes = [targets[name].shape[-1] for name in columns]
  table: dict[str, dict[int, float]] = {name: {} for name in columns}
  for horizon, (feats, index) in sorted(features.items()):
    y = np.concatenate([targets[name][index[:, 0], index[:, 1]] for name in columns], -1)
    train_mask = (index[:, 0] < envs - held_envs if envs > held_envs
                  else index[:, 1] < int(length * (1.0 - test_fraction)))
    prediction = fit_probe(feats[train_mask], y[train_mask], feats[~train_mask],
                           jax.random.fold_in(key, horizon), steps=steps)
    bounds = np.cumsum([0, *sizes])
    for name, low, high in zip(columns, bounds[:-1], bounds[1:], strict=True):
      table[name][horizon] = r2_score(prediction[:, low:high], y[~train_mask][:, low:high])
  return table


def horizon_label(horizon: int) -> str:
  return 'filtered' if horizon == FILTERED else f'open loop k={horizon}'


def write_report(table: dict[str, dict[int, float]], out_dir: str, title: str) -> dict:
  """Writes `probes.md` (table), `probes.json` and `probes.png` (R^2 against horizon)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  os.makedirs(out_dir, exist_ok=True)
  horizons = sorted({h for scores in table.values() for h in scores})
  lines = [f'R^2 of MLP probes on held-out steps ({title})', '',
           '| quantity | ' + ' | '.join(horizon_label(h) for h in horizons) + ' |',
           '|---|' + '---:|' * len(horizons)]
  for name, scores in table.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{scores[h]:.3f}' for h in horizons) + ' |')
  paths = {'markdown': os.path.join(out_dir, 'probes.md'),
           'json': os.path.join(out_dir, 'probes.json'),
           'plot': os.path.join(out_dir, 'probes.png')}
  with open(paths['markdown'], 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(paths['json'], 'w') as f:
    json.dump({'title': title, 'r2': {n: {str(h): s for h, s in v.items()}
                                      for n, v in table.items()}}, f, indent=2)
  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for index, (name, scores) in enumerate(table.items()):
    ax.plot(horizons, [scores[h] for h in horizons], 'o-', color=f'C{index}', label=name)
  ax.set_xticks(horizons)
  ax.set_xlabel('prediction horizon k (0 = filtered posterior)')
  ax.set_ylabel('probe R$^2$ (held out)')
  ax.set_ylim(min(-0.1, min(min(s.values()) for s in table.values())), 1.05)
  ax.set_title(title, fontsize='medium')
  ax.grid(alpha=0.3)
  ax.legend(loc='best', fontsize='small')
  fig.tight_layout()
  fig.savefig(paths['plot'], format='png')
  return paths


def run(workdir: str, out_dir: str | None = None, steps: int = 1000, num_envs: int = 4,
        horizons: tuple[int, ...] = (1, 5, 15), probe_steps: int = 2000, seed: int = 12345) -> dict:
  """Probes the newest checkpoint of the run in `workdir` (any variant, online or offline);
  returns the table and output paths."""
  subject = restore_subject(workdir)
  data = collect(subject['act'], subject['initial_carry'], subject['env_action'],
                 subject['config'], steps, num_envs, seed)
  key = jax.random.key(seed)
  features = latent_features(subject['world_model'], subject['params'], data,
                             (FILTERED, *horizons), key)
  table = probe_table(features, data, jax.random.fold_in(key, 1), probe_steps)
  paths = write_report(table, out_dir or os.path.join(workdir, 'probes'), subject['title'])
  return {'table': table, 'paths': paths, 'step': subject['step']}
