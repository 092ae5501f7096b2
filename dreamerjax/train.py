"""The training loop: envpool envs -> replay -> jitted train_step, with logging and checkpoints.

`run(config, workdir)` is the library entry point behind `scripts/train.py`. Durations are all in
env steps (summed over envs). A run started again on the same workdir resumes from its newest
checkpoint that restores.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from dreamerjax import configs, envs, parallel, replay
from dreamerjax.agent import Agent, check_finite
from dreamerjax.checkpoint import Checkpointer
from dreamerjax.logger import Logger, plot_curve

# Keys that may change when a run is resumed: they extend or re-time the run, not change it.
RESUMABLE_CHANGES = ('run.steps', 'run.compile_cache', 'run.log_every', 'run.eval_every', 'run.eval_episodes',
                     'run.save_every_minutes', 'run.keep_checkpoints', 'run.force')
CONFIG_FILE = 'config.json'


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
    differ = sorted(k for k in set(saved) | set(new)
                    if k not in RESUMABLE_CHANGES and saved.get(k, '<unset>') != new.get(k, '<unset>'))
    if differ:
      lines = [f'  {k}: saved {saved.get(k, "<unset>")!r}, now {new.get(k, "<unset>")!r}'
               for k in differ]
      raise ValueError(
          f'{workdir} holds a run with a different config:\n' + '\n'.join(lines) +
          '\nUse another --workdir, or pass --config.run.force=True to delete that run and start '
          'over.')
  elif config.run.force:
    for name in ('checkpoints', 'metrics.jsonl', 'tensorboard', 'plots'):
      target = os.path.join(workdir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)


class _StopFlag:
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


def replay_spec(env: envs.VectorEnv) -> dict:
  return {**env.obs_space, 'action': ((env.act_space.num_actions,), np.float32),
          'reward': ((), np.float32), 'is_first': ((), np.bool_), 'is_last': ((), np.bool_),
          'is_terminal': ((), np.bool_)}


def make_env(config, num_envs: int, seed: int) -> envs.VectorEnv:
  size = (config.env.image_size, config.env.image_size)
  return envs.make_env(config.task, num_envs, seed, size=size, from_pixels=config.env.from_pixels,
                       sticky=config.env.sticky, noop_max=config.env.noop_max,
                       max_episode_steps=config.env.max_episode_steps)


def evaluate(agent: Agent, policy, state, config, episodes: int, seed: int,
             max_steps: int = 100_000) -> list[float]:
  """Returns of the first episode of each of `episodes` eval envs, acting with the policy mode."""
  env = make_env(config, episodes, seed)
  try:
    obs = env.reset()
    carry = agent.initial_policy_carry(episodes)
    returns: dict[int, float] = {}
    key = jax.random.key(seed)
    for step in range(max_steps):
      carry, action = policy(state, carry, _model_obs(obs, env), jax.random.fold_in(key, step))
      obs = env.step(agent.env_action(action))
      for index, episode_return, _ in env.pop_finished_episodes():
        returns.setdefault(index, episode_return)
      if len(returns) == episodes:
        break
    return [returns[i] for i in sorted(returns)]
  finally:
    env.close()


def _model_obs(obs: dict, env: envs.VectorEnv) -> dict:
  return {key: obs[key] for key in (*env.obs_space, 'is_first')}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains an agent as `config` says, in `workdir`; returns a summary of the run."""
  config = configs.resolve(config)
  if config.run.compile_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.run.compile_cache))
  mesh = parallel.make_mesh(config.parallel.devices)
  configs.validate(config, mesh.size)
  run_config = config.run
  env = make_env(config, run_config.envs, config.seed)
  prepare_workdir(config, workdir)
  agent = Agent(config, env.obs_space, env.act_space.discrete, env.act_space.num_actions)
  spec = replay_spec(env)
  logging.info('Replay: %d env steps, about %.1f MiB.', run_config.replay_capacity,
               replay.memory_bytes(spec, run_config.envs, run_config.replay_capacity) / 2**20)

  replicated = parallel.replicated(mesh)
  state = jax.jit(agent.init, out_shardings=replicated)(jax.random.key(config.seed))
  replay_state = replay.init(spec, run_config.envs, run_config.replay_capacity,
                             num_shards=mesh.size, mesh=mesh)
  counts = agent.param_counts(state)
  logging.info('Parameters: %s', {k: f'{v:,}' for k, v in counts.items()})
  counters = {'env_step': 0, 'updates': 0, 'train_credit': 0.0, 'episodes': 0}
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              keep=run_config.keep_checkpoints)
  restored = checkpointer.restore_latest({'agent': state, 'replay': replay_state})
  if restored is not None:
    step, tree, meta = restored
    state, replay_state = tree['agent'], tree['replay']
    counters.update(meta['counters'])
    logging.info('Resumed from checkpoint at env step %d (%d updates, replay holds %d steps).',
                 step, counters['updates'], int(replay.size(replay_state)))

  batch_size, length = run_config.batch_size, run_config.batch_length

  @functools.partial(jax.jit, donate_argnums=0)
  def train(state, replay_state):
    rng, sample_key = jax.random.split(state.rng)
    batch = replay.sample(replay_state, sample_key, batch_size, length)
    return agent.train_step(state.replace(rng=rng), batch)

  policy = jax.jit(agent.policy_step, static_argnames='mode')
  add = jax.jit(replay.add, donate_argnums=0)
  eval_policy = functools.partial(policy, mode='eval')
  logger = Logger(workdir, run_config.steps, enabled=jax.process_index() == 0)
  save = lambda: checkpointer.save(  # noqa: E731
      counters['env_step'], {'agent': state, 'replay': replay_state},
      {'counters': counters, 'config': config.to_dict()})

  num_envs = env.num_envs
  updates_per_step = run_config.train_ratio / (batch_size * length)
  rng = np.random.default_rng([config.seed, counters['env_step']])
  policy_key = jax.random.fold_in(jax.random.key(config.seed), counters['env_step'] + 1)
  obs = env.reset()
  action_zeros = np.zeros((num_envs, env.act_space.num_actions), np.float32)
  replay_state = add(replay_state, {**obs, 'action': action_zeros})
  carry = agent.initial_policy_carry(num_envs)
  metrics, last_log, last_eval = None, counters['env_step'], counters['env_step']
  last_save, start_time, start_step = time.monotonic(), time.monotonic(), counters['env_step']
  interrupted = None

  with _StopFlag() as stop:
    while counters['env_step'] < run_config.steps:
      if counters['env_step'] < run_config.prefill:
        env_action = _random_actions(rng, env)
        model_action = agent.model_action(env_action)
      else:
        carry, model_action = policy(state, carry, _model_obs(obs, env),
                                     jax.random.fold_in(policy_key, counters['env_step']))
        model_action = np.asarray(model_action)
        env_action = agent.env_action(model_action)
      obs = env.step(env_action)
      stored_action = model_action * ~obs['is_first'][:, None]
      replay_state = add(replay_state, {**obs, 'action': stored_action})
      counters['env_step'] += num_envs
      for _, episode_return, episode_length in env.pop_finished_episodes():
        counters['episodes'] += 1
        logger.write(counters['env_step'], {'episode/return': episode_return,
                                            'episode/length': episode_length})

      if counters['env_step'] >= run_config.prefill and bool(replay.can_sample(replay_state,
                                                                              length)):
        counters['train_credit'] += num_envs * updates_per_step
        while counters['train_credit'] >= 1.0:
          state, metrics = train(state, replay_state)
          counters['updates'] += 1
          counters['train_credit'] -= 1.0

      step = counters['env_step']
      if step - last_log >= run_config.log_every or step >= run_config.steps:
        last_log = step
        elapsed = time.monotonic() - start_time
        row = {'run/env_steps_per_s': (step - start_step) / max(elapsed, 1e-9),
               'run/seconds': elapsed,
               'run/updates': counters['updates'], 'run/replay_size': int(
                   replay.size(replay_state))}
        if metrics is not None:
          fetched = jax.device_get(metrics)
          check_finite(fetched, step)
          row.update(fetched)
        logger.write(step, row)
      if run_config.eval_every and step - last_eval >= run_config.eval_every:
        last_eval = step
        returns = evaluate(agent, eval_policy, state, config, run_config.eval_episodes,
                           config.seed + 10_000 + step)
        logger.write(step, {'eval/episode/return': float(np.mean(returns)),
                            'eval/episode/return_std': float(np.std(returns))})
      logger.progress(step, counters['updates'])
      if time.monotonic() - last_save >= 60 * run_config.save_every_minutes:
        save()
        last_save = time.monotonic()
      if stop.signal:
        interrupted = stop.signal
        break

  save()
  checkpointer.close()
  env.close()
  logger.progress(counters['env_step'], counters['updates'], force=True)
  logger.close()
  summary = dict(counters, interrupted=interrupted, params=counts['total'],
                 seconds=time.monotonic() - start_time)
  if jax.process_index() == 0:
    summary['plot'] = plot_curve(workdir)
  if interrupted:
    logging.warning('Stopped by %s at env step %d; checkpoint saved. Run the same command to '
                    'resume.', interrupted, counters['env_step'])
  return summary


def _random_actions(rng: np.random.Generator, env: envs.VectorEnv) -> np.ndarray:
  space = env.act_space
  if space.discrete:
    return rng.integers(0, space.num_actions, env.num_envs).astype(np.int32)
  return rng.uniform(-1.0, 1.0, (env.num_envs, space.num_actions)).astype(np.float32)


