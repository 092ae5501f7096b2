"""Times the training update of the public DreamerV3 package (PyPI dreamerv3==1.5.0).

Only imports and runs the installed package; nothing of it is copied here.

The config is built exactly like dreamerv3/train.py does it:
  defaults -> 'crafter' block (64x64x3 image, 17 discrete actions; encoder/decoder
  use only the 'image' key) -> command-line style overrides (printed).
The batch has the structure that the package's replay + agent.dataset() deliver
to agent.train() in a stock run: image uint8 [B,T,64,64,3], reward f32 [B,T],
is_first/is_last/is_terminal bool [B,T], action f32 one-hot [B,T,17],
reset bool [B,T], id uint8 [B,T,16] (replay drops log_* keys).
Each timed call is agent.train(batch, state) -- the same call the package's
training loop makes per update (jitted world-model + actor + critic update) --
followed by block_until_ready on the new state and all variables, plus an explicit
device_get of a scalar, so the measured time covers the full computation.

Usage:
  python bench.py --size 12m --steps 20
  python bench.py --size 1m  --steps 50
  python bench.py --size tiny --steps 2         (harness check only)
Unknown arguments are passed through as package config flags, e.g.
  python bench.py --size 12m --steps 20 --actor.layers 3 --critic.layers 3
"""

import argparse
import os
import sys
import time

PRESETS = {
    # deter, rssm hidden (package key rssm.units), stoch, classes, cnn depth,
    # mlp units, batch size, batch length
    '12m': dict(deter=2048, hidden=256, stoch=32, classes=16, depth=16,
                units=256, batch=16, length=64),
    '1m': dict(deter=512, hidden=64, stoch=32, classes=4, depth=4,
               units=64, batch=16, length=64),
    'tiny': dict(deter=64, hidden=32, stoch=4, classes=4, depth=4,
                 units=32, batch=2, length=8),
}


def preset_flags(p):
  flags = [
      # Stock CLI would be: python -m dreamerv3.train --configs crafter <flags>
      '--jax.platform', 'cpu',
      '--jax.precision', 'float32',
      '--jax.jit', 'True',
      '--jax.prealloc', 'False',
      '--batch_size', str(p['batch']),
      '--batch_length', str(p['length']),
      '--rssm.deter', str(p['deter']),
      '--rssm.units', str(p['hidden']),
      '--rssm.stoch', str(p['stoch']),
      '--rssm.classes', str(p['classes']),
      '--encoder.cnn_depth', str(p['depth']),
      '--decoder.cnn_depth', str(p['depth']),
      '--encoder.mlp_units', str(p['units']),
      '--decoder.mlp_units', str(p['units']),
      '--reward_head.units', str(p['units']),
      '--cont_head.units', str(p['units']),
      '--actor.units', str(p['units']),
      '--critic.units', str(p['units']),
      '--disag_head.units', str(p['units']),
  ]
  return flags


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', choices=list(PRESETS), default='tiny')
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  args, passthrough = parser.parse_known_args()

  import dreamerv3
  import jax
  import numpy as np
  from dreamerv3 import embodied, jaxutils

  print('python', sys.version.split()[0], '| jax', jax.__version__,
        '| jaxlib', jax.lib.__version__ if hasattr(jax.lib, '__version__')
        else '?', '| dreamerv3', dreamerv3.__file__)
  print('XLA_FLAGS =', os.environ.get('XLA_FLAGS', ''))

  overrides = preset_flags(PRESETS[args.size]) + ['--seed', str(args.seed)]
  overrides += passthrough
  config = embodied.Config(dreamerv3.configs['defaults'])
  config = config.update(dreamerv3.configs['crafter'])
  config = embodied.Flags(config).parse(overrides)
  print('Config: defaults + crafter block + overrides:')
  print('  ' + ' '.join(overrides))
  print('Resulting model-relevant keys:')
  for key, value in config.flat.items():
    if key.split('.')[0] in (
        'rssm', 'encoder', 'decoder', 'reward_head', 'cont_head', 'actor',
        'critic', 'batch_size', 'batch_length', 'jax', 'imag_horizon',
        'task_behavior', 'expl_behavior', 'model_opt', 'actor_opt',
        'critic_opt', 'imag_unroll'):
      print(f'  {key} = {value}')

  # Spaces exactly as the crafter env looks after dreamerv3.wrap_env
  # (OneHotAction for the discrete action, ExpandScalars no-op here).
  num_actions = 17
  obs_space = {
      'image': embodied.Space(np.uint8, (64, 64, 3)),
      'reward': embodied.Space(np.float32),
      'is_first': embodied.Space(bool),
      'is_last': embodied.Space(bool),
      'is_terminal': embodied.Space(bool),
  }
  act_space = {
      'action': embodied.Space(np.float32, (num_actions,), 0, 1),
      'reset': embodied.Space(bool),
  }
  act_space['action']._discrete = True  # as wrappers.OneHotAction does

  step = embodied.Counter()
  t0 = time.perf_counter()
  agent = dreamerv3.Agent(obs_space, act_space, step, config)
  t_build = time.perf_counter() - t0

  B, T = config.batch_size, config.batch_length
  rng = np.random.default_rng(args.seed)
  batch = {
      'image': rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
      'reward': rng.normal(0, 1, (B, T)).astype(np.float32),
      'is_first': np.zeros((B, T), bool),
      'is_last': np.zeros((B, T), bool),
      'is_terminal': np.zeros((B, T), bool),
      'action': np.eye(num_actions, dtype=np.float32)[
          rng.integers(0, num_actions, (B, T))],
      'reset': np.zeros((B, T), bool),
      'id': rng.integers(0, 256, (B, T, 16), dtype=np.uint8),
  }
  batch['is_first'][:, 0] = True  # replay sets is_first at chunk start
  # Same host->device step as agent.dataset()'s postprocess.
  batch = agent._convert_inps(batch, agent.train_devices)

  def sync(state, mets):
    leaves = jax.tree_util.tree_leaves((state, agent.varibs))
    for x in leaves:
      x.block_until_ready()
    # Explicit fetch of a scalar that depends on the whole update.
    # (critic_opt/step is written last in the update: after the world model,
    # actor and critic steps.)
    key = [k for k in agent.varibs if k.endswith('critic_opt/step/value')]
    key = key[0] if key else sorted(agent.varibs)[-1]
    return int(np.asarray(jax.device_get(agent.varibs[key])).ravel()[0])

  state = None
  t0 = time.perf_counter()
  outs, state, mets = agent.train(batch, state)
  sync(state, mets)
  t_first = time.perf_counter() - t0

  params = {k: int(v) for k, v in jaxutils.Optimizer.PARAM_COUNTS.items()}
  total = sum(params.values())
  print('Trainable parameters per optimizer:', params)
  print(f'Trainable parameters total: {total:,} '
        f'(world model {params.get("agent/wm/model_opt", 0):,})')

  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    outs, state, mets = agent.train(batch, state)
    critic_steps = sync(state, mets)
    times.append(time.perf_counter() - t0)
  if mets:
    loss = {k: float(v) for k, v in mets.items() if k.endswith('_loss_mean')}
    print('Last fetched loss metrics:', loss)
  print('critic optimizer steps after timing (expect steps+1):', critic_steps)

  times = np.array(times)
  print(f'RESULT size={args.size} batch={B}x{T} build_s={t_build:.2f} '
        f'compile_first_call_s={t_first:.2f} steps={args.steps} '
        f'mean_s_per_update={times.mean():.4f} '
        f'median_s={np.median(times):.4f} min_s={times.min():.4f} '
        f'params={total}')


if __name__ == '__main__':
  main()
