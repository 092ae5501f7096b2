"""Times the training update of the public DreamerV3 code (2024, github.com/danijar/dreamerv3)
and prints one JSON record. Run by `dreamerjax.analysis.public_harness` with the interpreter of
a scratch virtual environment that holds that code's requirements (jax 0.4.33); it imports only
that code, jax, numpy and `flops.py` beside this file, never dreamerjax.

  python public_driver.py --source=/tmp/dreamerv3-public/src --size=12m --obs=image \
      --repeats=3 [--set=agent.dec.simple.kernel=4 ...]

The agent is built as the code's own `dreamerv3/main.py` builds it (its `configs.yaml`: the
`defaults` block, then `size<preset>`), on CPU in float32 with batch 16 x 64, with 17 discrete
actions and a 64x64x3 image or a 17-dimensional vector observation. The timed call is the
jitted train function that its `Agent.train` calls per update, on a synthetic batch of the
layout its replay delivers; each call is synchronised on the new parameters and metrics.
"""

import argparse
import importlib.util
import json
import os
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = {'encoder': 'enc/', 'dynamics': 'dyn/', 'decoder': 'dec/', 'reward': 'rew/',
         'continue': 'con/', 'actor': 'pol/', 'critic': 'val/'}
# The actor loss runs the policy forward again (`opt/jvp(pol)/...`) over the imagined states the
# imagination loop already ran it on to draw the actions (`.../scan/dyn/pol/...`); dreamerjax
# keeps the loop's outputs instead. Those FLOPs are work that only the public code does.
REPEATED_POLICY, IMAGINED_POLICY = 'opt/jvp(pol)/', '/scan/dyn/pol/'


def repeated_policy_flops(counts: dict) -> float:
  """FLOPs of the actor loss's second policy pass, from `flops_by_scope` counts (0 where the
  imagination loop runs no policy, so that nothing is a repeat)."""
  if not any(IMAGINED_POLICY in scope for scope in counts):
    return 0.0
  return float(sum(count for scope, count in counts.items()
                   if scope.startswith(REPEATED_POLICY)))


def _flops_module():
  spec = importlib.util.spec_from_file_location('_flops', os.path.join(HERE, 'flops.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_value(text):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def build_config(source, size, batch, length, overrides):
  import elements
  import ruamel.yaml as yaml

  with open(os.path.join(source, 'dreamerv3', 'configs.yaml')) as file:
    configs = yaml.YAML(typ='safe').load(file)
  # Not among the yaml's keys: compile the train function here, timed, not in the constructor.
  configs['defaults']['jax']['precompile'] = False
  config = elements.Config(configs['defaults']).update(configs[f'size{size}'])
  config = config.update({
      'jax.platform': 'cpu', 'jax.compute_dtype': 'float32', 'jax.prealloc': False,
      'jax.enable_policy': False, 'logdir': '/tmp/dreamerv3-public-logdir',
      'batch_size': batch, 'batch_length': length, 'run.envs': 1})
  for item in overrides:
    key, _, value = item.partition('=')
    config = config.update({key: _parse_value(value)})
  return config


def spaces(obs, actions):
  import elements

  obs_space = {'reward': elements.Space(np.float32), 'is_first': elements.Space(bool),
               'is_last': elements.Space(bool), 'is_terminal': elements.Space(bool)}
  if obs == 'image':
    obs_space['image'] = elements.Space(np.uint8, (64, 64, 3))
  else:
    obs_space['vector'] = elements.Space(np.float32, (17,))
  act_space = {'action': elements.Space(np.int32, (), 0, actions)}
  return obs_space, act_space


def synthetic_data(spaces_, batch, length, seed=0):
  """Random values of every key the train function takes, `[B, T, ...]` (`T` includes the
  replay context): images uniform in [0, 255], vectors and rewards normal, 1% episode starts and
  terminals, random actions, one-hot latents for the replay-context entries."""
  rng = np.random.default_rng(seed)
  data = {}
  for key, space in spaces_.items():
    shape = (batch, length, *space.shape)
    if key == 'dyn/stoch':
      data[key] = np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]
    elif key in ('is_first', 'is_terminal'):
      data[key] = rng.random(shape) < 0.01
    elif space.dtype == bool:
      data[key] = np.zeros(shape, bool)
    elif key == 'action':
      data[key] = rng.integers(0, int(space.high), shape).astype(space.dtype)
    elif space.dtype == np.uint8:
      data[key] = rng.integers(0, 255, shape, dtype=np.uint8)
    elif np.issubdtype(space.dtype, np.integer):
      data[key] = np.zeros(shape, space.dtype)
    else:
      data[key] = rng.normal(size=shape).astype(space.dtype)
  return data


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--source', required=True)
  parser.add_argument('--size', default='1m')
  parser.add_argument('--obs', default='image', choices=('image', 'vector'))
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--actions', type=int, default=17)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--set', action='append', default=[], help='config key=value')
  args = parser.parse_args()
  sys.path.insert(0, args.source)

  import jax

  config = build_config(args.source, args.size, args.batch, args.length, args.set)
  import dreamerv3.agent  # noqa: E402 (after the config: needs the source on sys.path)
  obs_space, act_space = spaces(args.obs, args.actions)
  agent_config = elements_config(config)
  agent = dreamerv3.agent.Agent(obs_space, act_space, agent_config)

  counts = {part: int(sum(value.size for key, value in agent.params.items()
                          if key.startswith(prefix))) for part, prefix in PARTS.items()}
  counts['total'] = sum(counts.values())

  batch, context = args.batch, config.replay_context
  data = synthetic_data(agent.spaces, batch, args.length + context)
  data = jax.device_put(data, agent.train_sharded)
  seed = jax.device_put(np.array([0, 1], np.uint32), agent.train_mirrored)
  carry = agent.init_train(batch)
  split = lambda params: (  # noqa: E731 (donated and kept parameters, as Agent.train splits them)
      {k: v for k, v in params.items() if k not in agent.policy_keys},
      {k: v for k, v in params.items() if k in agent.policy_keys})

  train = agent._train  # the jitted update behind Agent.train
  # Timed before the FLOP count: counting traces `train`, and jit would then reuse that trace,
  # leaving the tracing out of the compile seconds (about 5 s at 1m) that dreamerjax's side pays.
  start = time.perf_counter()
  lowered = train.lower(*split(agent.params), seed, carry, data)
  lower_s = time.perf_counter() - start
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops_module = _flops_module()
  scopes = flops_module.flops_by_scope(train, *split(agent.params), seed, carry, data)
  counted, repeated = float(sum(scopes.values())), repeated_policy_flops(scopes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()  # the scratch buffer each call allocates

  params = agent.params
  seconds, sys_seconds = [], []  # wall and system CPU seconds per call, as on dreamerjax's side
  for index in range(args.warmup + args.repeats):
    start, start_sys = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    params, carry, _, metrics = compiled(*split(params), seed, carry, data)
    jax.block_until_ready((params, metrics))
    if index >= args.warmup:
      seconds.append(time.perf_counter() - start)
      sys_seconds.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - start_sys)
  record = {
      'side': 'public', 'preset': args.size, 'obs': args.obs, 'batch': batch,
      'length': args.length, 'replay_context': context, 'overrides': args.set,
      'params_by_part': counts, 'xla_flops': float(cost.get('flops', float('nan'))),
      'counted_flops': counted, 'repeated_flops': repeated, 'work_flops': counted - repeated,
      'compile_s': compile_s, 'lower_s': lower_s, 'step_s_calls': seconds,
      'step_sys_s_calls': sys_seconds,
      'scratch_bytes': None if memory is None else int(memory.temp_size_in_bytes),
      'jax': jax.__version__, 'matmul_peak': flops_module.matmul_peak(),
      'xla_flags': os.environ.get('XLA_FLAGS', '')}
  print('RECORD', json.dumps(record), flush=True)


def elements_config(config):
  """The agent's config as the code's `main.make_agent` assembles it."""
  import elements

  return elements.Config(
      **config.agent, logdir=config.logdir, seed=config.seed, jax=config.jax,
      batch_size=config.batch_size, batch_length=config.batch_length,
      replay_context=config.replay_context, report_length=config.report_length,
      replica=config.replica, replicas=config.replicas)


if __name__ == '__main__':
  main()
