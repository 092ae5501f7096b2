"""The training loop: envpool envs -> replay -> jitted train_step, with logging and checkpoints.

`run(config, workdir)` is the library entry point behind `scripts/train.py`. Durations are all in
env steps (summed over envs). A run started again on the same workdir resumes from its newest
checkpoint that restores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamerjax.agents.agent import Agent, check_finite
from dreamerjax.data import envs, replay
from dreamerjax.data.envgroup import EnvGroup
from dreamerjax.models import openloop
from dreamerjax.run import configs, parallel
from dreamerjax.run.checkpoint import Checkpointer
from dreamerjax.run.logger import Logger, eval_metrics, plot_curve

# Keys that may change when a run is resumed: they extend or re-time the run, not change it.
RESUMABLE_CHANGES = ('run.steps', 'run.compile_cache', 'run.log_every', 'run.eval_every',
                     'run.eval_episodes', 'run.save_every_minutes', 'run.keep_checkpoints',
                     'run.force', 'run.transfer_guard')
CONFIG_FILE = 'config.json'
# Observed steps before the open-loop prediction written at each evaluation (as in Dreamer's
# open-loop videos: the rest of the replayed sequence is predicted from the actions alone).
OPENLOOP_CONTEXT = 5


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks that `workdir` holds no run with an incompatible config; writes config.json."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  current = config.to_dict()
  if os.path.exists(path) and not config.run.force:
    with open(path) as f:
      saved = _flatten(json.load(f))
    new = _flatten(json.loads(json.dumps(current)))
    # A run saved before a key existed ran with its default.
    defaults = _flatten(json.loads(json.dumps(configs.base().to_dict())))
    saved = {**{k: v for k, v in defaults.items() if k in new}, **saved}
    differ = sorted(k for k in set(saved) | set(new) if k not in RESUMABLE_CHANGES
                    and saved.get(k, '<unset>') != new.get(k, '<unset>'))
    if differ:
      lines = [f'  {k}: saved {saved.get(k, "<unset>")!r}, now {new.get(k, "<unset>")!r}'
               for k in differ]
      raise ValueError(
          f'{workdir} holds a run with a different config:\n' + '\n'.join(lines) +
          '\nUse another --workdir, or pass --config.run.force=True to delete that run and start '
          'over.')
  # Every process has read config.json before process 0 replaces it (or deletes the old run).
  parallel.barrier('dreamerjax: workdir checked')
  if parallel.is_main_process():
    if config.run.force:
      for name in ('checkpoints', 'metrics.jsonl', 'tensorboard', 'plots'):
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)
  parallel.barrier('dreamerjax: workdir ready')


class StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop polls, so it can checkpoint before exiting."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def replay_spec(env: envs.VectorEnv | EnvGroup) -> dict:
  return {**env.obs_space, 'action': ((env.act_space.num_actions,), np.float32),
          'reward': ((), np.float32), 'is_first': ((), np.bool_), 'is_last': ((), np.bool_),
          'is_terminal': ((), np.bool_)}


def make_env(config, num_envs: int, seed: int) -> envs.VectorEnv:
  size = (config.env.image_size, config.env.image_size)
  return envs.make_env(config.task, num_envs, seed, size=size, from_pixels=config.env.from_pixels,
                       sticky=config.env.sticky, noop_max=config.env.noop_max,
                       max_episode_steps=config.env.max_episode_steps)


def make_env_group(config, num_envs: int, seed: int, layout: parallel.Layout,
                   shared: bool = True) -> EnvGroup:
  """The envs of seeds `seed .. seed + K - 1`; split over processes if `shared`, else every
  process steps all of them (evaluation, whose arrays are replicated)."""
  index, count = (jax.process_index(), jax.process_count()) if shared else (0, 1)
  return EnvGroup(functools.partial(make_env, config), num_envs,
                  [seed + k for k in range(layout.num_seeds)], layout.stacked, index, count)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted functions of the loop, with explicit shardings. Shapes per seed, behind a `[K]`
  axis with several seeds (see `parallel.Layout`); `N` envs per seed, `A` action size.

  train(state, replay) -> (state, metrics): samples `[B, T]` from every replay shard, one
    `agent.train_step`; the state is donated, metrics are replicated scalars.
  policy(state, carry, obs, key, step) -> (carry, action `[N, A]`): acting with envs split over
    `data`; the carry is donated; the key is folded with the env step inside.
  eval_policy: the same with the policy mode, on replicated eval envs.
  add(replay, step) -> replay: writes one step `[N, ...]` of every env; the replay is donated.
  predict(state, replay) -> open-loop prediction (`openloop.open_loop`) of a replayed batch
    `[B, T]` from its first `OPENLOOP_CONTEXT` steps, replicated (one seed only).
  """

  train: Callable
  policy: Callable
  eval_policy: Callable
  add: Callable
  predict: Callable
  state_sharding: Any
  replay_sharding: Any


def build(agent: Agent, layout: parallel.Layout, config: ml_collections.ConfigDict,
          spec: dict) -> tuple[Programs, Callable, Callable]:
  """Jitted programs, and functions that create the state and the replay with their shardings."""
  run_config, mesh = config.run, layout.mesh
  keys = lambda: layout.seed_keys(config.seed)  # noqa: E731
  init = layout.over_seeds(agent.init)
  state_sharding = parallel.state_shardings(layout, jax.eval_shape(lambda: init(keys())),
                                            config.parallel.param_rules)
  make_replay = lambda: layout.broadcast(replay.init(  # noqa: E731
      spec, run_config.envs, run_config.replay_capacity, num_shards=mesh.size))
  replay_sharding = layout.with_seed_axis(replay.shardings(mesh, jax.eval_shape(
      lambda: replay.init(spec, run_config.envs, run_config.replay_capacity,
                          num_shards=mesh.size))))
  batch_size, length = run_config.batch_size, run_config.batch_length
  batch_sharding = parallel.data_sharded(mesh)

  def train(state, replay_state):
    rng, sample_key = jax.random.split(state.rng)
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return agent.train_step(state.replace(rng=rng), batch)

  def predict(state, replay_state):
    sample_key, key = jax.random.split(jax.random.fold_in(state.rng, 1))
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    result = openloop.open_loop(agent.world_model, state.params['world_model'], batch,
                                min(OPENLOOP_CONTEXT, length - 1), key)
    # The errors cover the whole batch; only the video's sequences need to reach the host.
    shown = lambda tree: jax.tree.map(lambda x: x[:openloop.VIDEO_SEQUENCES], tree)  # noqa: E731
    return {**result, 'truth': shown(result['truth']), 'prediction': shown(result['prediction'])}

  def acting(mode):
    def policy(state, carry, obs, key, step):
      return agent.policy_step(state, carry, obs, jax.random.fold_in(key, step), mode=mode)
    return layout.over_seeds(policy, in_axes=(0, 0, 0, 0, None))

  scalar, per_env, whole = parallel.replicated(mesh), layout.per_env, layout.replicated
  programs = Programs(
      train=jax.jit(layout.over_seeds(train), in_shardings=(state_sharding, replay_sharding),
                    out_shardings=(state_sharding, whole), donate_argnums=0),
      policy=jax.jit(acting('train'),
                     in_shardings=(state_sharding, per_env, per_env, whole, scalar),
                     out_shardings=(per_env, per_env), donate_argnums=1),
      eval_policy=jax.jit(acting('eval'),
                          in_shardings=(state_sharding, whole, whole, whole, scalar),
                          out_shardings=(whole, whole), donate_argnums=1),
      add=jax.jit(layout.over_seeds(replay.add), in_shardings=(replay_sharding, per_env),
                  out_shardings=replay_sharding, donate_argnums=0),
      predict=jax.jit(predict, in_shardings=(state_sharding, replay_sharding),
                      out_shardings=whole),
      state_sharding=state_sharding, replay_sharding=replay_sharding)
  make_state = jax.jit(lambda: init(keys()), out_shardings=state_sharding)
  return programs, make_state, jax.jit(make_replay, out_shardings=replay_sharding)


def initial_carry(agent: Agent, layout: parallel.Layout, num_envs: int, sharding) -> dict:
  return jax.jit(lambda: layout.broadcast(agent.initial_policy_carry(num_envs)),
                 out_shardings=sharding)()


def policy_keys(layout: parallel.Layout, seed: int, env_step: int) -> jax.Array:
  """Acting keys `[K?]` of a run (re)started at `env_step`, made on the devices."""
  fold = layout.over_seeds(jax.random.fold_in, in_axes=(0, None))
  return jax.jit(lambda: fold(layout.seed_keys(seed), env_step + 1),
                 out_shardings=layout.replicated)()


def evaluate(agent: Agent, programs: Programs, state, config, layout: parallel.Layout,
             episodes: int, seed: int, max_steps: int = 100_000) -> np.ndarray:
  """Returns `[K?, episodes]` of the first episode of each of `episodes` eval envs per seed
  (NaN where none ended within `max_steps`), acting with the policy mode. Every process steps all
  eval envs (replicated arrays)."""
  env = make_env_group(config, episodes, seed, layout, shared=False)
  try:
    obs = env.reset()
    whole, scalar = layout.replicated, parallel.replicated(layout.mesh)
    carry = initial_carry(agent, layout, episodes, whole)
    keys = jax.jit(lambda: layout.seed_keys(seed), out_shardings=whole)()
    returns: dict[tuple[int, int], float] = {}
    for step in range(max_steps):
      carry, action = programs.eval_policy(state, carry, layout.put(_model_obs(obs, env), whole),
                                           keys, layout.put(np.int32(step), scalar))
      obs = env.step(agent.env_action(parallel.to_host(action)))
      for seed_index, index, episode_return, _ in env.pop_finished_episodes():
        returns.setdefault((seed_index, index), episode_return)
      if len(returns) == layout.num_seeds * episodes:
        break
    table = np.array([[returns.get((k, i), np.nan) for i in range(episodes)]
                      for k in range(layout.num_seeds)])
    return table if layout.stacked else table[0]
  finally:
    env.close()


def _model_obs(obs: dict, env: envs.VectorEnv | EnvGroup) -> dict:
  return {key: obs[key] for key in (*env.obs_space, 'is_first')}


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, Agent, replay.Spec]:
  """The config, agent and replay spec of the run in `workdir` (no arrays)."""
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config = configs.base()  # keys added since the run was saved keep their defaults
    configs.update(config, json.load(f))
  env = make_env(config, 1, config.seed)
  env.close()
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  return config, agent, replay_spec(env)


def restore(workdir: str) -> tuple[int, Any, replay.ReplayState, dict]:
  """The newest checkpoint of the run in `workdir`: `(step, TrainState, ReplayState, meta)`,
  sharded as the run had them (every process calls it with several processes). The step counts
  env steps; for offline runs it counts updates and the replay is None (they do not save it:
  it is the dataset)."""
  config, agent, spec = load_run(workdir)
  mesh = parallel.make_mesh(config.parallel.devices)
  layout = parallel.Layout(mesh, config.num_seeds)
  programs, make_state, make_replay = build(agent, layout, config, spec)
  with_sharding = lambda tree, shardings: jax.tree.map(  # noqa: E731
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  abstract = {'agent': with_sharding(jax.eval_shape(make_state), programs.state_sharding)}
  if config.run.mode != 'offline':
    abstract['replay'] = with_sharding(jax.eval_shape(make_replay), programs.replay_sharding)
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    restored = checkpointer.restore_latest(abstract)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
  step, tree, meta = restored
  return step, tree['agent'], tree.get('replay'), meta


def restore_agent(workdir: str, loaded: tuple | None = None
                  ) -> tuple[ml_collections.ConfigDict, Agent, int, Any]:
  """`(config, agent, step, TrainState)` of the newest checkpoint of the run in `workdir` (online
  or offline), for acting with it: the state of seed 0 where the run trained several. `loaded`:
  what `load_run(workdir)` returned, if the caller has it already."""
  config, agent, _ = loaded or load_run(workdir)
  step, state, _, _ = restore(workdir)
  if config.num_seeds > 1:
    state = jax.tree.map(lambda x: x[0], state)
  return config, agent, step, state


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.num_seeds` agents as `config` says, in `workdir`; returns a summary.

  Every process of a multi-process job calls it: each steps its share of the envs, all save and
  restore checkpoints together, and only process 0 writes logs, metrics, config.json and plots.
  With several seeds, per-seed rows of metrics.jsonl (episodes, train metrics, evaluations) carry
  a `seed` field (0 .. K-1, the agent trained with `config.seed + seed`); `run/` rows have none.
  """
  config = configs.resolve(config)
  if config.run.compile_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.run.compile_cache))
  mesh = parallel.make_mesh(config.parallel.devices)
  configs.validate(config, mesh.size)
  if config.run.mode == 'offline':  # from a recorded dataset; the env only for evaluation
    from dreamerjax.run import offline  # offline builds on this module
    return offline.run(config, workdir)
  if config.variant == 'worldmodels':  # trained in stages, not by this online loop
    from dreamerjax.agents import worldmodels
    return worldmodels.run(config, workdir)
  layout = parallel.Layout(mesh, config.num_seeds)
  run_config = config.run
  env = make_env_group(config, run_config.envs, config.seed, layout)
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  spec = replay_spec(env)
  try:
    programs, make_state, make_replay = build(agent, layout, config, spec)  # checks param rules
    prepare_workdir(config, workdir)
  except Exception:
    env.close()
    raise
  logging.info('Replay: %d env steps per seed, about %.1f MiB for %d seed(s).',
               run_config.replay_capacity, layout.num_seeds * replay.memory_bytes(
                   spec, run_config.envs, run_config.replay_capacity) / 2**20, layout.num_seeds)
  state, replay_state = make_state(), make_replay()
  counts = agent.param_counts(jax.eval_shape(agent.init, jax.random.key(0)))
  logging.info('Parameters per seed: %s', {k: f'{v:,}' for k, v in counts.items()})
  counters = {'env_step': 0, 'updates': 0, 'train_credit': 0.0, 'episodes': 0}
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              keep=run_config.keep_checkpoints)
  restored = checkpointer.restore_latest({'agent': state, 'replay': replay_state})
  if restored is not None:
    step, tree, meta = restored
    state, replay_state = tree['agent'], tree['replay']
    counters.update(meta['counters'])
  # Steps written per env, tracked on the host so the loop never waits on the device for it.
  position = int(parallel.to_host(replay_state.position).reshape(-1)[0])
  capacity_per_env = run_config.replay_capacity // run_config.envs
  if restored is not None:
    logging.info('Resumed from checkpoint at env step %d (%d updates, replay holds %d steps).',
                 counters['env_step'], counters['updates'],
                 min(position, capacity_per_env) * run_config.envs)

  length = run_config.batch_length
  logger = Logger(workdir, run_config.steps, enabled=parallel.is_main_process())
  save = lambda: checkpointer.save(  # noqa: E731
      counters['env_step'], {'agent': state, 'replay': replay_state},
      {'counters': counters, 'config': config.to_dict()})
  seed_field = (lambda k: k) if layout.stacked else (lambda k: None)  # noqa: E731
  multi_process = jax.process_count() > 1
  guard = ((lambda: jax.transfer_guard('disallow')) if run_config.transfer_guard
           else contextlib.nullcontext)

  num_envs = run_config.envs  # per seed, over all processes
  updates_per_step = run_config.train_ratio / (run_config.batch_size * length)
  rngs = [np.random.default_rng([seed, counters['env_step']]) for seed in env.seeds]
  policy_key = policy_keys(layout, config.seed, counters['env_step'])
  scalar = parallel.replicated(mesh)
  obs = env.reset()
  action_zeros = np.zeros((*obs['is_first'].shape, env.act_space.num_actions), np.float32)
  step_data = layout.put({**obs, 'action': action_zeros})
  replay_state = programs.add(replay_state, step_data)
  position += 1
  carry = initial_carry(agent, layout, num_envs, layout.per_env)
  finished: list[tuple[int, int, float, int]] = []  # (env step, seed, return, length)
  metrics, last_log, last_eval = None, counters['env_step'], counters['env_step']
  last_save, start_time, start_step = time.monotonic(), time.monotonic(), counters['env_step']
  interrupted = None

  def write_episodes():
    """Logs the finished episodes of every process (gathered: all processes call this)."""
    rows = parallel.gather_rows(np.asarray(finished, np.float64).reshape(-1, 4))
    finished.clear()
    for step, seed, episode_return, episode_length in sorted(rows.tolist(), key=lambda r: r[0]):
      counters['episodes'] += 1
      logger.write(int(step), {'episode/return': episode_return, 'episode/length': episode_length},
                   seed=seed_field(int(seed)))

  with StopFlag() as stop:
    while counters['env_step'] < run_config.steps:
      with guard():
        if counters['env_step'] < run_config.prefill:
          env_action = env.random_actions(rngs)
          model_action = agent.model_action(env_action)
        else:
          carry, action = programs.policy(
              state, carry, _model_obs(step_data, env), policy_key,
              layout.put(np.int32(counters['env_step']), scalar))
          model_action = parallel.to_host(action)
          env_action = agent.env_action(model_action)
        obs = env.step(env_action)
        stored_action = model_action * ~obs['is_first'][..., None]
        step_data = layout.put({**obs, 'action': stored_action})
        replay_state = programs.add(replay_state, step_data)
        position += 1
        counters['env_step'] += num_envs
        finished.extend((counters['env_step'], seed, episode_return, episode_length)
                        for seed, _, episode_return, episode_length
                        in env.pop_finished_episodes())

        if counters['env_step'] >= run_config.prefill and position >= length:
          counters['train_credit'] += num_envs * updates_per_step
          while counters['train_credit'] >= 1.0:
            state, metrics = programs.train(state, replay_state)
            counters['updates'] += 1
            counters['train_credit'] -= 1.0

      step = counters['env_step']
      at_log = step - last_log >= run_config.log_every or step >= run_config.steps
      if at_log or not multi_process:
        write_episodes()
      if at_log:
        last_log = step
        elapsed = time.monotonic() - start_time
        row = {'run/env_steps_per_s': (step - start_step) / max(elapsed, 1e-9),
               'run/seconds': elapsed, 'run/updates': counters['updates'],
               'run/replay_size': min(position, capacity_per_env) * num_envs}
        per_seed = []
        if metrics is not None:
          fetched = parallel.to_host(metrics)
          check_finite(fetched, step)
          if layout.stacked:
            per_seed = [{k: v[seed] for k, v in fetched.items()}
                        for seed in range(layout.num_seeds)]
          else:
            row.update(fetched)
        logger.write(step, row)
        for seed, values in enumerate(per_seed):
          logger.write(step, values, seed=seed)
      if run_config.eval_every and step - last_eval >= run_config.eval_every:
        last_eval = step
        returns = evaluate(agent, programs, state, config, layout, run_config.eval_episodes,
                           config.seed + 10_000 + step)
        for seed, seed_returns in enumerate(returns if layout.stacked else [returns]):
          logger.write(step, eval_metrics(seed_returns), seed=seed_field(seed))
        if not layout.stacked:  # what the model predicts from actions alone: metrics and video
          prediction = parallel.to_host(programs.predict(state, replay_state))
          logger.write(step, openloop.error_metrics(prediction))
          if parallel.is_main_process():
            openloop.write_video(logger, step, prediction)
      logger.progress(step, counters['updates'])
      save_due = time.monotonic() - last_save >= 60 * run_config.save_every_minutes
      stopping = stop.signal is not None
      if multi_process:  # decided together, at log steps (the same on every process)
        stopping, save_due = parallel.agree(stopping, save_due) if at_log else (False, False)
      if save_due:
        save()
        last_save = time.monotonic()
      if stopping:
        interrupted = stop.signal or 'a signal to another process'
        break

  save()
  checkpointer.close()
  env.close()
  logger.progress(counters['env_step'], counters['updates'], force=True)
  logger.close()
  summary = dict(counters, interrupted=interrupted, params=counts['total'],
                 seconds=time.monotonic() - start_time,
                 param_checksum=parallel.checksum(state.params))
  if parallel.is_main_process():
    summary['plot'] = plot_curve(workdir)
  if interrupted:
    logging.warning('Stopped by %s at env step %d; checkpoint saved. Run the same command to '
                    'resume.', interrupted, counters['env_step'])
  return summary
