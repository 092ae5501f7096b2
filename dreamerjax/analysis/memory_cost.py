"""What a run of experiments/memory.py costs: CPU and wall seconds of one update and one acting
step of all its seeds, measured on synthetic data, and the run's cost extrapolated from them.

CPU seconds (`time.process_time`, all threads) measure the work however busy the machine is; wall
seconds depend on what else runs. A run of `run.steps` env steps (per seed) makes
`(steps - prefill) x train_ratio / (batch_size x batch_length)` updates and `steps / envs` acting
steps; `extrapolate` adds them up (prefill, evaluation and compilation left out).
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from dreamerjax.agents.agent import Agent
from dreamerjax.analysis import benchmark
from dreamerjax.data import jax_envs
from dreamerjax.run import configs


def _timed(function, *args, repeats: int) -> tuple[float, float]:
  """Median CPU and wall seconds of `function(*args)` over `repeats` calls (after one warm-up)."""
  jax.block_until_ready(function(*args))
  cpu, wall = [], []
  for _ in range(repeats):
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    jax.block_until_ready(function(*args))
    cpu.append(time.process_time() - cpu_start)
    wall.append(time.perf_counter() - wall_start)
  return float(np.median(cpu)), float(np.median(wall))


def measure(config: ml_collections.ConfigDict, repeats: int = 3) -> dict:
  """CPU and wall seconds of one update (`agent.train_step` of every seed, vmapped, on a
  synthetic `[B, T]` batch) and of one acting step (`policy_step` of every seed's envs), and the
  CPU seconds of compiling the update."""
  config = configs.resolve(config)
  env = jax_envs.resolve(config.task.removeprefix('jax:'))
  actions = env.act_space.num_actions
  agent = Agent(config, env.obs_space, env.act_space.discrete, actions)
  seeds, run = config.num_seeds, config.run
  states = jax.jit(jax.vmap(agent.init))(jax.random.split(jax.random.key(0), seeds))
  batch = benchmark.synthetic_batch(env.obs_space, run.batch_size, run.batch_length, actions)
  batch.update({k: jax.numpy.zeros((run.batch_size, run.batch_length, *shape), dtype)
                for k, (shape, dtype) in agent.world_model.context_spec().items()})
  batch = jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (seeds, *x.shape)), batch)
  cpu_start = time.process_time()
  update = jax.jit(jax.vmap(agent.train_step)).lower(states, batch).compile()
  compile_cpu = time.process_time() - cpu_start
  update_cpu, update_wall = _timed(lambda s, b: update(s, b)[1], states, batch, repeats=repeats)
  carry = jax.vmap(lambda _: agent.initial_policy_carry(run.envs))(np.arange(seeds))
  obs = {k: jax.numpy.zeros((seeds, run.envs, *shape), dtype)
         for k, (shape, dtype) in env.obs_space.items()}
  obs['is_first'] = jax.numpy.zeros((seeds, run.envs), bool)
  keys = jax.random.split(jax.random.key(1), seeds)
  policy = jax.jit(jax.vmap(agent.policy_step))
  act_cpu, act_wall = _timed(lambda: policy(states, carry, obs, keys)[1], repeats=20)
  return {'task': config.task, 'dynamics': config.model.dynamics,
          'context': config.model.context if config.model.dynamics == 'transformer' else None,
          'replay_context': config.model.replay_context, 'seeds': seeds,
          'batch': [run.batch_size, run.batch_length], 'compile_cpu_s': round(compile_cpu, 2),
          'update_cpu_s': round(update_cpu, 4), 'update_wall_s': round(update_wall, 4),
          'act_cpu_s': round(act_cpu, 5), 'act_wall_s': round(act_wall, 5)}


def extrapolate(record: dict, config: ml_collections.ConfigDict) -> dict:
  """Updates, acting steps and CPU seconds of a whole run of `config` from a `measure` record."""
  run = config.run
  trained = max(0, run.steps - run.prefill)
  updates = trained * run.train_ratio / (run.batch_size * run.batch_length)
  acting = trained / run.envs
  return {'updates': int(updates), 'acting_steps': int(acting),
          'cpu_s': round(updates * record['update_cpu_s'] + acting * record['act_cpu_s'], 1)}
