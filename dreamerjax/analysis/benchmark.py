"""Speed measurements behind `make bench`: train_step per size preset, the full training loop,
weak scaling over devices, many seeds in one program versus separate processes, and RSSM versus
Transformer dynamics.

Every function returns plain records (dicts) that `scripts/benchmark.py` writes as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dreamerjax.agents.agent import Agent
from dreamerjax.analysis.conv_timing import layer_arrays
from dreamerjax.analysis.flops import matmul_flops, matmul_peak
from dreamerjax.models import convs, nets
from dreamerjax.run import allocator, configs, logger, parallel, sweeps, train

OBS_SPACES = {'vector': {'vector': ((17,), np.float32)},
              'image': {'image': ((64, 64, 3), np.uint8)}}


def machine() -> dict:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(),
          'python': platform.python_version(), 'jax': jax.__version__,
          'allocator': allocator.active(),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


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


class Timing(NamedTuple):
  compiled: jax.stages.Compiled
  compile_s: float        # trace + lower + XLA compile
  step_s: float           # median over the timed calls
  calls: list[float]      # every timed call's seconds
  lower_s: float          # trace + lower, the Python part of `compile_s`
  sys_calls: list[float]  # every timed call's system CPU seconds, all threads (page faults)


def _compile_and_time(step, state, data, repeats: int, warmup: int = 2,
                      pause_s: float = 0.0) -> Timing:
  """Traces, lowers and compiles the jitted `step(state, data)` (timed) and times `repeats`
  calls after `warmup` untimed ones. `state` is donated, so it is threaded through the calls.
  Two warm-up calls: XLA:CPU's scratch buffer (3.4 GB for the 12m image step) is released only
  as a call finishes, and the next call often allocates a second one first; on this VM the
  first touch of fresh memory costs about 30 us per page, a 25-35 s stall once per process.
  The median, not the mean: that stall can still land in a timed call, and on a shared host
  other stalls do. Each call's system CPU seconds (`sys_calls`) show the kernel's share: mostly
  zeroing the pages of a freshly mapped scratch buffer (docs/benchmarks.md, "Noise").
  `pause_s`: seconds to sleep before each timed call (untimed), to see how the host treats memory
  freed that long before (docs/benchmarks.md, "Why our calls fell into two levels")."""
  start = time.perf_counter()
  lowered = step.lower(state, data)
  lower_s = time.perf_counter() - start
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
  seconds, sys_seconds = [], []
  for _ in range(repeats):
    time.sleep(pause_s)
    start, start_sys = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    seconds.append(time.perf_counter() - start)
    sys_seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - start_sys)
  return Timing(compiled, compile_s, float(np.median(seconds)), seconds, lower_s, sys_seconds)


def scratch_bytes(compiled: jax.stages.Compiled) -> int | None:
  """Bytes of the scratch buffer that each call of a compiled program allocates (XLA's temporary
  memory: activations kept for the backward pass, loop outputs); None where the backend gives
  no memory analysis."""
  stats = compiled.memory_analysis()
  return None if stats is None else int(stats.temp_size_in_bytes)


def xla_flops(compiled: jax.stages.Compiled) -> float:
  """XLA's own FLOP count of a compiled program (`cost_analysis`, which counts a loop body once),
  NaN where the backend gives none."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def bench_agent(size: str, obs: str, actions: int = 17, variant: str = 'dreamerv3',
                model: dict | None = None, optim: dict | None = None) -> Agent:
  """The agent of a benchmark: preset `size`, `variant`, `model` and `optim` keys overriding the
  preset."""
  config = configs.base()
  config.size, config.variant = size, variant
  # Before the presets: model.arch picks some.
  configs.update(config, {'model': model or {}, 'optim': optim or {}})
  config = configs.resolve(config)
  return Agent(config, OBS_SPACES[obs], True, actions)


def dynamics_params(agent: Agent) -> int:
  return nets.count_params(jax.eval_shape(agent.world_model.init, jax.random.key(0))['dynamics'])


def matched_transformer(size: str, obs: str = 'vector', actions: int = 17) -> dict:
  """Transformer `model` keys (`width`, a multiple of 2 x heads) whose dynamics parameter count is
  closest to the RSSM's at preset `size`: the equal-count comparison of RSSM and Transformer."""
  target = dynamics_params(bench_agent(size, obs, actions))
  heads = configs.TRANSFORMER_SIZES[size]['heads']
  count = lambda width: dynamics_params(bench_agent(  # noqa: E731
      size, obs, actions, 'storm', {'width': width}))
  low, high = 1, 4096 // (2 * heads)  # count grows with the width: bisect on width / (2 heads)
  while low < high:
    middle = (low + high) // 2
    if count(2 * heads * middle) < target:
      low = middle + 1
    else:
      high = middle
  widths = [2 * heads * k for k in (max(1, low - 1), low)]
  return {'width': min(widths, key=lambda width: abs(count(width) - target))}


def train_step_record(size: str, obs: str, batch: int = 16, length: int = 64, actions: int = 17,
                      repeats: int = 7, variant: str = 'dreamerv3',
                      model: dict | None = None, pause_s: float = 0.0,
                      optim: dict | None = None) -> dict:
  """Compile time, seconds per step (median of `repeats` calls, each after `pause_s` seconds of
  sleep; `step_s_calls` holds each), the per-call scratch memory (`scratch_bytes`), XLA FLOPs
  (`cost_analysis`, which counts loop bodies once), matrix-product FLOPs with every loop step
  counted (`matmul_flops`) and achieved FLOP/s."""
  agent = bench_agent(size, obs, actions, variant, model, optim)
  state = jax.jit(agent.init)(jax.random.key(0))
  data = synthetic_batch(OBS_SPACES[obs], batch, length, actions)
  params = agent.param_counts(state)
  matmul = matmul_flops(agent.train_step, state, data)
  step = jax.jit(agent.train_step, donate_argnums=0)
  timing = _compile_and_time(step, state, data, repeats, pause_s=pause_s)
  compile_s, step_s, calls = timing.compile_s, timing.step_s, timing.calls
  flops = xla_flops(timing.compiled)
  return {'preset': size, 'obs': obs, 'variant': variant, 'model': model or {},
          'optim': optim or {}, 'batch': batch,
          'length': length, 'pause_s': pause_s,
          'params': params['total'], 'params_by_part': params, 'compile_s': round(compile_s, 3),
          'step_s': round(step_s, 4), 'step_s_calls': [round(t, 3) for t in calls],
          'step_sys_s_calls': [round(t, 3) for t in timing.sys_calls],
          'scratch_bytes': scratch_bytes(timing.compiled),
          'flops': flops, 'flops_per_s': flops / step_s,
          'matmul_flops': matmul, 'matmul_flops_per_s': matmul / step_s}


def loop_record(suite: dict, task: str, train_ratio: float | str, steps: int, envs: int = 4,
                loop: str = 'host') -> dict:
  """Env steps/s of the whole loop (acting, replay, training) after the first log interval.
  `train_ratio`: 0 for random actions only (a prefill as long as the run), 'policy' for acting
  with the policy and no updates, else the ratio. `loop`: `run.loop` (host or device)."""
  config = configs.experiment(f'task={task}', suite)
  ratio = 1e-9 if train_ratio == 'policy' else max(train_ratio, 1e-9)
  configs.update(config, {'run': dict(steps=steps, train_ratio=ratio, envs=envs,
                                      prefill=0 if train_ratio in (0, 'policy')
                                      else min(1000, steps // 4),
                                      log_every=steps // 4, eval_every=0,
                                      replay_capacity=max(10_000, steps * 2),
                                      save_every_minutes=1e6, compile_cache='', loop=loop)})
  if train_ratio == 0:  # collection only: a prefill as long as the run never trains
    config.run.prefill = steps + 1
    config.run.train_ratio = 1.0
  with tempfile.TemporaryDirectory() as workdir:
    summary = train.run(config, workdir)
    rows = [row for row in logger.read_metrics(workdir) if 'run/seconds' in row]
  first, last = rows[0], rows[-1]
  rate = (last['step'] - first['step']) / max(last['run/seconds'] - first['run/seconds'], 1e-9)
  return {'task': task, 'size': config.size, 'loop': loop,
          'loop_steps': config.run.loop_steps if loop == 'device' else 1,
          'train_ratio': 0.0 if train_ratio == 'policy' else train_ratio, 'envs': envs,
          'steps': steps, 'env_steps_per_s': round(rate, 1), 'updates': summary['updates'],
          'policy': 'random (prefill)' if train_ratio == 0 else 'agent'}


# ------------------------------------------------------------------------------- scale-out

def _subprocess_record(call: str, device_count: int | None = None) -> subprocess.Popen:
  """Starts `benchmark.<call>` in a fresh interpreter that prints its record (see `_collect`).

  `device_count` simulates that many CPU devices (XLA_FLAGS must be set before jax starts).
  """
  environment = dict(os.environ)
  if device_count is not None:
    flags = environment.get('XLA_FLAGS', '').replace('--xla_force_host_platform_device_count', '')
    environment['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={device_count}'
    environment['JAX_PLATFORMS'] = 'cpu'
  root = str(sweeps.REPOSITORY_ROOT)
  environment['PYTHONPATH'] = os.pathsep.join(filter(None, [root, environment.get('PYTHONPATH')]))
  code = ('import json\nfrom dreamerjax.analysis import benchmark\n'
          f'print("RECORD", json.dumps({call}))')
  return subprocess.Popen([sys.executable, '-c', code], env=environment, cwd=root,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(process: subprocess.Popen, timeout: float = 1800) -> dict:
  stdout, stderr = process.communicate(timeout=timeout)
  if process.returncode != 0:
    raise RuntimeError(f'benchmark subprocess failed ({process.returncode}):\n{stderr[-3000:]}')
  return json.loads(stdout.split('RECORD ', 1)[1].splitlines()[0])


def scaling_record(devices: int, per_device_batch: int = 4, length: int = 16,
                   size: str = 'debug', obs: str = 'vector', actions: int = 4,
                   repeats: int = 5) -> dict:
  """Train steps/s of `train_step` on a `devices`-device data axis at a fixed per-device batch
  (weak scaling: the global batch is `devices * per_device_batch` sequences of `length`).

  Runs in this process, which must see at least `devices` devices; see `scaling_records`.
  """
  config = configs.base()
  config.size = size
  configs.update(config, {'model': dict(bins=31)} if size == 'debug' else {})
  config = configs.resolve(config)
  agent = Agent(config, OBS_SPACES[obs], True, actions)
  layout = parallel.Layout(parallel.make_mesh(devices))
  shardings = parallel.state_shardings(layout, jax.eval_shape(agent.init, jax.random.key(0)))
  state = jax.jit(lambda: agent.init(jax.random.key(0)), out_shardings=shardings)()
  step = jax.jit(agent.train_step, in_shardings=(shardings, layout.per_env),
                 out_shardings=(shardings, layout.replicated), donate_argnums=0)
  batch = devices * per_device_batch
  data = layout.put(jax.device_get(synthetic_batch(OBS_SPACES[obs], batch, length, actions)))
  timing = _compile_and_time(step, state, data, repeats)
  compile_s, step_s = timing.compile_s, timing.step_s
  return {'devices': devices, 'platform': jax.devices()[0].platform, 'size': size, 'obs': obs,
          'per_device_batch': per_device_batch, 'global_batch': batch, 'length': length,
          'compile_s': round(compile_s, 3), 'step_s': round(step_s, 4),
          'train_steps_per_s': round(1.0 / step_s, 3),
          'replayed_steps_per_s': round(batch * length / step_s, 1)}


def scaling_records(device_counts=(1, 2, 4, 8), **kwargs) -> list[dict]:
  """`scaling_record` for each device count, each in its own subprocess. On CPU the devices are
  simulated (`--xla_force_host_platform_device_count`) and share the host's cores, so this
  measures what sharding costs (collectives, partitioning), not a speed-up; on accelerators it
  uses the real devices."""
  simulate = jax.default_backend() == 'cpu'
  records = []
  for devices in device_counts:
    arguments = ', '.join([f'{devices}', *(f'{k}={v!r}' for k, v in kwargs.items())])
    process = _subprocess_record(f'benchmark.scaling_record({arguments})',
                                 devices if simulate else None)
    record = _collect(process)
    record['weak_scaling_efficiency'] = None
    if records:  # replayed steps/s per device, relative to one device
      base = records[0]
      record['weak_scaling_efficiency'] = round(
          record['replayed_steps_per_s'] / devices / base['replayed_steps_per_s'], 3)
    records.append(record)
  return records


def loop_rate(config_values: dict, workdir: str) -> dict:
  """Runs `train.run` on the config given as a dict; returns env steps/s (summed over seeds) in
  the steady state (from the second log row after the prefill, so compiles are left out) and the
  wall time of the whole run."""
  config = configs.base()
  configs.update(config, config_values)
  start = time.perf_counter()
  summary = train.run(config, workdir)
  wall_s = time.perf_counter() - start
  run = config.run
  rows = [row for row in logger.read_metrics(workdir) if 'run/seconds' in row]
  steady = [row for row in rows if row['step'] >= run.prefill + 2 * run.log_every] or rows[-2:]
  first, last = steady[0], steady[-1]
  rate = (last['step'] - first['step']) / max(last['run/seconds'] - first['run/seconds'], 1e-9)
  return {'env_steps_per_s': rate * config.num_seeds, 'wall_s': wall_s,
          'env_steps': summary['env_step'] * config.num_seeds, 'updates': summary['updates']}


def seeds_record(config_values: dict, seeds: int) -> dict:
  """Env + train throughput of `seeds` agents: vmapped in one program (`num_seeds=seeds`) versus
  `seeds` separate single-seed processes running at the same time. Each mode runs in fresh
  processes; `ratio` > 1 means one program is faster.

  Args:
    config_values: a resolved config as a dict (`config.to_dict()`), with `num_seeds` 1.
    seeds: K.
  """
  with tempfile.TemporaryDirectory() as root:
    values = json.loads(json.dumps({**config_values, 'num_seeds': seeds}))
    one = _collect(_subprocess_record(
        f'benchmark.loop_rate({values!r}, {os.path.join(root, "vmap")!r})'))
    start = time.perf_counter()
    processes = []
    for k in range(seeds):
      values = json.loads(json.dumps({**config_values, 'num_seeds': 1,
                                      'seed': config_values['seed'] + k}))
      processes.append(_subprocess_record(
          f'benchmark.loop_rate({values!r}, {os.path.join(root, f"seed{k}")!r})'))
    separate = [_collect(process) for process in processes]
    separate_wall = time.perf_counter() - start
  separate_rate = sum(record['env_steps_per_s'] for record in separate)
  return {'seeds': seeds, 'task': config_values['task'], 'size': config_values['size'],
          'envs_per_seed': config_values['run']['envs'],
          'train_ratio': config_values['run']['train_ratio'],
          'steps_per_seed': config_values['run']['steps'],
          'one_program': {'env_steps_per_s': round(one['env_steps_per_s'], 1),
                          'wall_s': round(one['wall_s'], 1)},
          'separate_processes': {'env_steps_per_s': round(separate_rate, 1),
                                 'wall_s': round(separate_wall, 1)},
          'ratio': round(one['env_steps_per_s'] / max(separate_rate, 1e-9), 3),
          'wall_ratio': round(separate_wall / max(one['wall_s'], 1e-9), 3)}


# ------------------------------------------------------------------------------- dynamics

def dynamics_record(size: str, variant: str, length: int, batch: int = 16, horizon: int = 15,
                    repeats: int = 3, model: dict | None = None) -> dict:
  """`train_step_record` (vector obs) for one dynamics model, with the dynamics' own parameter
  count and imagination steps/s: `dynamics.imagine` of `horizon` steps from `batch * length`
  start states (for the Transformer, with their `context`-step key/value caches)."""
  record = train_step_record(size, 'vector', batch=batch, length=length, repeats=repeats,
                             variant=variant, model=model)
  agent = bench_agent(size, 'vector', 17, variant, model)
  world_model = agent.world_model
  dynamics = world_model.dynamics
  params = jax.jit(world_model.init)(jax.random.key(0))
  data = synthetic_batch(OBS_SPACES['vector'], batch, length, 17)

  @jax.jit
  def starts(params, data):
    features = world_model.loss(params, data, jax.random.key(1))[1][0]
    return agent.behavior.starts(params, features, data)['carry']

  policy = lambda features, key: jax.nn.one_hot(  # noqa: E731
      jax.random.randint(key, features.shape[:1], 0, 17), 17)
  imagine = jax.jit(lambda p, carry, key: dynamics.imagine(p, carry, policy, horizon, key)[1])
  carry = starts(params, data)
  jax.block_until_ready(imagine(params['dynamics'], carry, jax.random.key(2)))
  start = time.perf_counter()
  for index in range(repeats):
    jax.block_until_ready(imagine(params['dynamics'], carry, jax.random.key(index)))
  seconds = (time.perf_counter() - start) / repeats
  return {**record, 'dynamics': agent.config.model.dynamics, 'model': model or {},
          'dynamics_params': nets.count_params(params['dynamics']),
          'imagine_starts': batch * length, 'horizon': horizon,
          'imagine_steps_per_s': round(batch * length * horizon / seconds, 1)}


# ------------------------------------------------------------------ against the public code

# The parts the side-by-side comparison counts, and the dreamerjax parameter groups of each.
PUBLIC_PARTS = {'encoder': ('image_encoder', 'vector_encoder'), 'dynamics': ('dynamics',),
                'decoder': ('image_decoder', 'vector_decoder'), 'reward': ('reward',),
                'continue': ('cont',), 'actor': ('actor',), 'critic': ('critic',)}


def params_by_part(agent: Agent, state) -> dict[str, int]:
  """Trained parameters per part (the slow critic and optimizer state are not counted)."""
  groups = {**state.params['world_model'], 'actor': state.params['actor'],
            'critic': state.params['critic']}
  counts = {part: sum(nets.count_params(groups[name]) for name in names if name in groups)
            for part, names in PUBLIC_PARTS.items()}
  counts['total'] = sum(counts.values())
  return counts


def direct_form_flops(fn, *args) -> float:
  """`matmul_flops` of `fn(*args)` with the stride-1 'SAME' convolutions in their direct form
  (`convs.SAME_CONV = 'lax'`: upsample, convolve, pool, as the public code does): the work of the
  network itself. The form `auto` picks on one CPU device (`chunked`) computes each decoder layer
  by phases at its input's resolution (`chunked_conv.phase_kernel`): the same function with
  36 / 100 of that layer's products.
  """
  form = convs.SAME_CONV
  convs.SAME_CONV = 'lax'
  try:  # a new function: jax reuses a trace of the same function object, the form unseen
    return matmul_flops(lambda *inputs: fn(*inputs), *args)
  finally:
    convs.SAME_CONV = form


def side_record(size: str, obs: str, arch: str = 'paper', batch: int = 16, length: int = 64,
                actions: int = 17, repeats: int = 3) -> dict:
  """dreamerjax's side of the comparison with the public code (`public_harness`), in the public
  driver's record layout: parameters per part, XLA, counted and work FLOPs (`direct_form_flops`;
  `public_harness` compares the work of both sides by them), compile seconds, every
  timed call's seconds after two warm-ups, the per-call scratch memory, and this runtime's matmul
  peak."""
  agent = bench_agent(size, obs, actions, model={'arch': arch})
  state = jax.jit(agent.init)(jax.random.key(0))
  data = synthetic_batch(OBS_SPACES[obs], batch, length, actions)
  counts = params_by_part(agent, state)
  # Compiled (traced, lowered, compiled: timed) before the FLOP count traces the step, as on
  # the public side, so that neither side's compile seconds reuse a trace.
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)  # donated
  step = jax.jit(agent.train_step, donate_argnums=0)
  timing = _compile_and_time(step, state, data, repeats)
  counted = matmul_flops(agent.train_step, shapes, data)
  return {'side': 'dreamerjax', 'arch': arch, 'preset': size, 'obs': obs, 'batch': batch,
          'length': length, 'params_by_part': counts, 'xla_flops': xla_flops(timing.compiled),
          'counted_flops': counted,
          'work_flops': direct_form_flops(agent.train_step, shapes, data),
          'compile_s': timing.compile_s, 'lower_s': timing.lower_s,
          'step_s_calls': timing.calls, 'step_sys_s_calls': timing.sys_calls,
          'scratch_bytes': scratch_bytes(timing.compiled),
          'jax': jax.__version__, 'allocator': allocator.active(),
          'matmul_peak': matmul_peak()}


def cnn_profile(size: str, arch: str, batch: int = 16, length: int = 64,
                repeats: int = 3) -> dict:
  """Counted FLOPs and seconds (min of `repeats` after one warm-up) of the image encoder's and
  decoder's forward plus backward pass over one batch's `batch * length` frames, alone: the
  share of the update the CNNs take."""
  agent = bench_agent(size, 'image', model={'arch': arch})
  model = agent.world_model
  params = jax.jit(model.init)(jax.random.key(0))
  data = synthetic_batch(OBS_SPACES['image'], batch, length, 17)
  features = jnp.zeros((batch, length, model.dynamics.feature_size))
  record = {'preset': size, 'arch': arch}
  parts = {'image_encoder': lambda p: jnp.sum(model.apply('image_encoder', p, data['image'])),
           'image_decoder': lambda p: jnp.sum(model.apply('image_decoder', p, features))}
  for name, loss in parts.items():
    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(params))
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(grad(params))
      seconds.append(time.perf_counter() - start)
    record[name] = {'counted_flops': matmul_flops(grad, params), 'seconds': min(seconds)}
  return record


def conv_profile(depth: int, frames: int = 1024, kernel: int = 5, impls=('lax', 'rows', 'patch'),
                 repeats: int = 3) -> list[dict]:
  """Forward plus backward seconds of each stride-1 `kernel` convolution of `arch=public2024`
  (`conv_shapes`) alone over `frames` frames, per formulation of `convs.same_conv`: per shape, one
  call of each formulation in turn, `repeats` rounds (so that load on a shared host falls on all
  alike), after one warm-up call each; the record keeps each one's calls and their minimum. The
  first encoder layer differentiates the kernel only (the image needs no gradient)."""
  records = []
  for shape, x, weights, cotangent, argnums in layer_arrays(depth, frames, kernel):
    grads = {name: jax.jit(jax.grad(
        lambda x, w, g, impl=name: jnp.vdot(convs.same_conv(x, w, impl), g), argnums))
        for name in impls}
    for grad in grads.values():
      jax.block_until_ready(grad(x, weights, cotangent))
    calls = {name: [] for name in impls}
    for _ in range(repeats):
      for name, grad in grads.items():
        start = time.perf_counter()
        jax.block_until_ready(grad(x, weights, cotangent))
        calls[name].append(time.perf_counter() - start)
    flops = matmul_flops(grads['lax'], x, weights, cotangent) if 'lax' in grads else None
    records.append({**shape, 'frames': frames, 'kernel': kernel, 'load_average': os.getloadavg(),
                    'counted_flops': flops, 'calls_s': calls,
                    'min_s': {k: min(v) for k, v in calls.items()}})
  return records
