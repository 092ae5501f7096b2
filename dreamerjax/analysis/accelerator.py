"""The accelerator suite behind `make bench-accelerator`: one command, one JSON, sized to fit
in 10 minutes on one GPU. It measures, on the devices of the host it runs on:

- `train_step` of each size preset (default 12m and 50m, 64x64 images, batch 16 x 64) in each
  compute dtype (float32, bfloat16): compile s, s per update, achieved FLOP/s and the device's
  peak memory over that measurement;
- K agents vmapped in one program (`num_seeds`-style, one train step of K stacked states on
  K batches) against one agent (the float32 `train_step` record of that size where there is
  one): replayed steps per second and their ratio;
- weak scaling over the devices present (1, 2, 4, ... up to the device count): a fixed batch
  per device, `benchmark.scaling_record` in fresh processes;
- one Atari 100k run's projected wall-clock: updates (100k env steps x train ratio / batch
  steps) times the measured s per update, plus 100k env steps at the measured acting rate of
  the loop (policy, no updates).

Each part is written to the JSON as it finishes, and parts that would start after the time
budget are skipped (listed under `skipped`), so a slow host still leaves a complete file.
On CPU the same command runs with tiny sizes (the test suite does), which checks the plumbing,
not the figures.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.analysis import benchmark
from dreamerjax.run import configs, sweeps

ATARI100K_STEPS = 100_000


def peak_memory_bytes() -> int | None:
  """The first device's peak bytes in use so far (None where the backend does not say: CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def train_step_part(size: str, dtype: str, repeats: int, batch: int = 16,
                    length: int = 64) -> dict:
  record = benchmark.train_step_record(size, 'image', batch, length, repeats=repeats,
                                       model={'compute_dtype': dtype})
  return {'dtype': dtype, **record, 'peak_memory_bytes': peak_memory_bytes()}


def seeds_part(size: str, seeds: int, repeats: int, batch: int = 16, length: int = 64,
               actions: int = 17, one: dict | None = None) -> dict:
  """Replayed steps/s of `seeds` agents vmapped in one train step against one agent: `one`, a
  float32 `train_step_record` of the same size and batch that the suite already made, or else one
  agent vmapped alone."""
  agent = benchmark.bench_agent(size, 'image', actions)
  data = benchmark.synthetic_batch(benchmark.OBS_SPACES['image'], batch, length, actions)
  rates = {}
  if one is not None:
    rates[1] = {'compile_s': one['compile_s'], 'step_s': one['step_s'],
                'replayed_steps_per_s': round(batch * length / one['step_s'], 1)}
  for k in (1, seeds) if one is None else (seeds,):
    keys = jax.random.split(jax.random.key(0), k)
    state = jax.jit(jax.vmap(agent.init))(keys)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), data)  # noqa: B023
    step = jax.jit(jax.vmap(agent.train_step), donate_argnums=0)
    timing = benchmark._compile_and_time(step, state, stacked, repeats)
    rates[k] = {'compile_s': round(timing.compile_s, 3), 'step_s': round(timing.step_s, 4),
                'replayed_steps_per_s': round(k * batch * length / timing.step_s, 1)}
  return {'size': size, 'seeds': seeds, 'one': rates[1], 'vmapped': rates[seeds],
          'ratio': round(rates[seeds]['replayed_steps_per_s']
                         / rates[1]['replayed_steps_per_s'], 3),
          'peak_memory_bytes': peak_memory_bytes()}


def scaling_part(size: str, per_device_batch: int, repeats: int) -> list[dict]:
  counts, n = [], 1
  while n <= jax.device_count():
    counts.append(n)
    n *= 2
  return benchmark.scaling_records(counts, per_device_batch=per_device_batch, size=size,
                                   repeats=repeats)


def atari_projection(size: str, repeats: int, acting_steps: int, step: dict | None = None,
                     batch: int | None = None, length: int | None = None) -> dict:
  """Projected wall-clock of one Atari 100k run (`experiments/atari100k.py` at `size`).

  Updates are counted at the suite's batch (16 x 64); the update is timed at `batch x length`
  (the suite's where None), or `step`, a `train_step_record` of that size in float32 that the
  suite already made, is used as it is."""
  module = configs.load_file(os.path.join(sweeps.REPOSITORY_ROOT, 'experiments', 'atari100k.py'))
  suite = {**module.SUITE, 'size': size}
  run = module.get_config(f'size={size}').run
  batch, length = batch or run.batch_size, length or run.batch_length
  if step is None:
    step = benchmark.train_step_record(size, 'image', batch, length, repeats=repeats)
  acting = benchmark.loop_record(suite, 'Pong-v5', 'policy', acting_steps, envs=run.envs,
                                 loop='device')
  updates = ATARI100K_STEPS * run.train_ratio / (run.batch_size * run.batch_length)
  seconds = updates * step['step_s'] + ATARI100K_STEPS / max(acting['env_steps_per_s'], 1e-9)
  return {'size': size, 'task': 'Pong-v5', 'env_steps': ATARI100K_STEPS,
          'train_ratio': run.train_ratio, 'updates': int(updates),
          'step_batch': [step['batch'], step['length']],
          'step_s': step['step_s'], 'acting_env_steps_per_s': acting['env_steps_per_s'],
          'projected_hours': round(seconds / 3600, 3)}


def run_suite(out: str, sizes=('12m', '50m'), dtypes=('float32', 'bfloat16'), seeds: int = 8,
              seeds_size: str = '12m', scaling_size: str = '12m', per_device_batch: int = 16,
              atari_size: str = '12m', acting_steps: int = 2000, repeats: int = 5,
              budget_s: float = 540.0, batch: int = 16, length: int = 64) -> dict:
  """Runs every part (see the module doc), writing `out` after each; returns the result.
  `batch x length` is the update's batch in every part but weak scaling (`per_device_batch`);
  the seeds part's single agent and the Atari projection reuse the float32 update of their size
  where the suite timed it (one compile each fewer: 12m by default)."""
  start = time.monotonic()
  result = {'machine': benchmark.machine(), 'budget_s': budget_s, 'skipped': []}
  parts = [(f'train_step/{size}/{dtype}', 'train_step',
            lambda size=size, dtype=dtype: train_step_part(size, dtype, repeats, batch, length))
           for size in sizes for dtype in dtypes]

  def measured(size):
    """The float32 update of `size` that the suite has timed, if any (at `batch x length`)."""
    return next((r for r in result.get('train_step', [])
                 if r['preset'] == size and r['dtype'] == 'float32'), None)

  parts += [('seeds', 'seeds', lambda: seeds_part(seeds_size, seeds, repeats, batch, length,
                                                  one=measured(seeds_size))),
            ('scaling', 'scaling', lambda: scaling_part(scaling_size, per_device_batch,
                                                        repeats)),
            ('atari100k_projection', 'atari100k_projection',
             lambda: atari_projection(atari_size, repeats, acting_steps, measured(atari_size),
                                      batch, length))]
  for name, key, measure in parts:
    if time.monotonic() - start > budget_s:
      result['skipped'].append(name)
      continue
    value = measure()
    if key == 'train_step':
      result.setdefault(key, []).append(value)
    else:
      result[key] = value
    result['seconds'] = round(time.monotonic() - start, 1)
    _write(out, result)
  _write(out, result)
  return result


def _write(out: str, result: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w', encoding='utf-8') as f:
    json.dump(result, f, indent=2, default=lambda x: x.item() if isinstance(x, np.generic)
              else str(x))
