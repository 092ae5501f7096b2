"""Speed measurements behind `make bench`: train_step per size preset and the full training loop.

Every function returns plain records (dicts) that `scripts/benchmark.py` writes as JSON.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax import configs, logger, train
from dreamerjax.agent import Agent

OBS_SPACES = {'vector': {'vector': ((17,), np.float32)},
              'image': {'image': ((64, 64, 3), np.uint8)}}


def machine() -> dict:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(),
          'python': platform.python_version(), 'jax': jax.__version__}


def synthetic_batch(obs_space: dict, batch: int, length: int, actions: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  data = {}
  for key, (shape, dtype) in obs_space.items():
    if np.dtype(dtype) == np.uint8:
      data[key] = rng.integers(0, 255, (batch, length, *shape), dtype=np.uint8)
    else:
      data[key] = rng.normal(size=(batch, length, *shape)).astype(np.float32)
  data['action'] = np.eye(actions, dtype=np.float32)[rng.integers(0, actions, (batch, length))]
  data['reward'] = rng.normal(size=(batch, length)).astype(np.float32)
  data['is_first'] = rng.random((batch, length)) < 0.01
  data['is_last'] = np.zeros((batch, length), bool)
  data['is_terminal'] = rng.random((batch, length)) < 0.01
  return jax.tree.map(jnp.asarray, data)


def train_step_record(size: str, obs: str, batch: int = 16, length: int = 64, actions: int = 17,
                      repeats: int = 3, variant: str = 'dreamerv3') -> dict:
  """Compile time, seconds per step, XLA FLOPs and achieved FLOP/s of one `train_step`."""
  config = configs.base()
  config.size, config.variant = size, variant
  config = configs.resolve(config)
  agent = Agent(config, OBS_SPACES[obs], True, actions)
  state = jax.jit(agent.init)(jax.random.key(0))
  data = synthetic_batch(OBS_SPACES[obs], batch, length, actions)
  params = agent.param_counts(state)
  step = jax.jit(agent.train_step, donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  state, metrics = compiled(state, data)  # warm up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = compiled(state, data)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / repeats
  return {'preset': size, 'obs': obs, 'variant': variant, 'batch': batch, 'length': length,
          'params': params['total'], 'params_by_part': params, 'compile_s': round(compile_s, 3),
          'step_s': round(step_s, 4), 'flops': flops, 'flops_per_s': flops / step_s}


def loop_record(suite: dict, task: str, train_ratio: float, steps: int, envs: int = 4) -> dict:
  """Env steps/s of the whole loop (acting, replay, training) after the first log interval."""
  config = configs.experiment(f'task={task}', suite)
  configs.update(config, {'run': dict(steps=steps, train_ratio=max(train_ratio, 1e-9), envs=envs,
                                      prefill=0 if train_ratio == 0 else min(1000, steps // 4),
                                      log_every=steps // 4, eval_every=0,
                                      replay_capacity=max(10_000, steps * 2),
                                      save_every_minutes=1e6, compile_cache='')})
  if train_ratio == 0:  # collection only: a prefill as long as the run never trains
    config.run.prefill = steps + 1
    config.run.train_ratio = 1.0
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.run(config, workdir)
    rows = [row for row in logger.read_metrics(workdir) if 'run/seconds' in row]
  first, last = rows[0], rows[-1]
  rate = (last['step'] - first['step']) / max(last['run/seconds'] - first['run/seconds'], 1e-9)
  return {'task': task, 'size': config.size, 'train_ratio': train_ratio, 'envs': envs,
          'steps': steps, 'env_steps_per_s': round(rate, 1), 'updates': summary['updates'],
          'policy': 'random (prefill)' if train_ratio == 0 else 'agent'}
