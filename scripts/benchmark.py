"""Benchmarks behind `make bench`; writes JSON under --out (default benchmarks/).

    python scripts/benchmark.py --out=benchmarks                     # everything
    python scripts/benchmark.py --only=train_step --sizes=1m,12m
    python scripts/benchmark.py --only=loop
    python scripts/benchmark.py --only=scaling,seeds --scaling_devices=1,2,4,8 --seeds=1,2,4,8
    python scripts/benchmark.py --only=dynamics --dynamics_size=tiny --dynamics_lengths=64,256
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import flags, logging  # noqa: E402

from dreamerjax.analysis import benchmark  # noqa: E402
from dreamerjax.run import cli, configs  # noqa: E402
from dreamerjax.run.logger import quiet_library_logs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUT = flags.DEFINE_string('out', 'benchmarks', 'Output directory.')
_ONLY = flags.DEFINE_list('only', ['train_step', 'loop', 'scaling', 'seeds', 'dynamics'],
                          'Which benchmarks to run.')
_SIZES = flags.DEFINE_list('sizes', ['1m', '12m'], 'Size presets for the train_step benchmark.')
_ARCH = flags.DEFINE_enum('arch', 'paper', list(configs.ARCHS),
                          'model.arch of the train_step benchmark.')
_PAUSE = flags.DEFINE_float('pause', 0.0, 'Seconds of sleep before each timed train_step call.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed train_step calls per size and kind.')
_OBS = flags.DEFINE_list('obs', ['vector', 'image'], 'Observation kinds for train_step.')
_SCALING_DEVICES = flags.DEFINE_list('scaling_devices', ['1', '2', '4', '8'],
                                     'Device counts of the weak-scaling benchmark (simulated on '
                                     'CPU).')
_SCALING_SIZE = flags.DEFINE_string('scaling_size', 'debug', 'Size preset for scaling.')
_PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', 4, 'Sequences per device (scaling).')
_SEEDS = flags.DEFINE_list('seeds', ['1', '2', '4', '8'], 'Seed counts K of the seeds benchmark.')
_SEEDS_STEPS = flags.DEFINE_integer('seeds_steps', 2000, 'Env steps per seed (seeds benchmark).')
_DYNAMICS_SIZE = flags.DEFINE_string('dynamics_size', 'tiny', 'Size preset of the dynamics '
                                     'benchmark (RSSM vs Transformer).')
_DYNAMICS_LENGTHS = flags.DEFINE_list('dynamics_lengths', ['64', '256'], 'Sequence lengths T.')
_LOOP_TASK_NAMES = ('CartPole-v1', 'Pong-v5')
_LOOP_ACTION_NAMES = ('random', 'policy', 'trained')
_LOOP_TASKS = flags.DEFINE_list('loop_tasks', list(_LOOP_TASK_NAMES),
                                'Tasks of the loop benchmark (CartPole-v1 and/or Pong-v5).')
_LOOP_ACTIONS = flags.DEFINE_list('loop_actions', list(_LOOP_ACTION_NAMES),
                                  'Loop benchmark cases: random actions, the policy without '
                                  'updates, the policy with the suite\'s train ratio.')

for _flag, _allowed in ((_LOOP_TASKS, _LOOP_TASK_NAMES), (_LOOP_ACTIONS, _LOOP_ACTION_NAMES)):
  flags.register_validator(_flag.name, lambda value, allowed=_allowed: set(value) <= set(allowed),
                           f'--{_flag.name} takes a comma-separated subset of '
                           f'{", ".join(_allowed)}')


def _suite(name):
  return configs.load_file(os.path.join(ROOT, 'experiments', f'{name}.py')).SUITE


def _write(name, records):
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, f'{name}.json')
  with open(path, 'w') as f:
    json.dump({'machine': benchmark.machine(), 'records': records}, f, indent=2)
  logging.info('Wrote %s', path)


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  if 'train_step' in _ONLY.value:
    records = []
    for size in _SIZES.value:
      for obs in _OBS.value:
        record = benchmark.train_step_record(size, obs, repeats=_REPEATS.value,
                                             model={'arch': _ARCH.value},
                                             pause_s=_PAUSE.value)
        logging.info('%s', record)
        records.append(record)
        _write('train_step', records)
  if 'loop' in _ONLY.value:
    records = []
    for suite, task, steps in (('classic', 'CartPole-v1', 4000), ('atari100k', 'Pong-v5', 1200)):
      if task not in _LOOP_TASKS.value:
        continue
      config_suite = _suite(suite)
      if suite == 'atari100k':  # the CPU preset, so the loop measures plumbing, not a 12m model
        config_suite = {**config_suite, 'size': 'tiny'}
      default_ratio = config_suite['run']['train_ratio']
      # Random actions, the policy without updates, the suite's train ratio; each with the host
      # loop and the on-device loop back to back.
      cases = {'random': 0.0, 'policy': 'policy', 'trained': default_ratio}
      for ratio in (cases[name] for name in _LOOP_ACTIONS.value):
        for loop in ('host', 'device'):
          record = benchmark.loop_record(config_suite, task, ratio, steps, loop=loop)
          logging.info('%s', record)
          records.append(record)
          _write('loop', records)
  if 'scaling' in _ONLY.value:
    # Weak scaling: a fixed batch per device; the global batch grows with the devices.
    records = benchmark.scaling_records([int(n) for n in _SCALING_DEVICES.value],
                                        per_device_batch=_PER_DEVICE_BATCH.value,
                                        size=_SCALING_SIZE.value)
    for record in records:
      logging.info('%s', record)
    _write('scaling', records)
  if 'seeds' in _ONLY.value:
    # K agents vmapped in one program vs K single-seed processes at once (CartPole, debug size).
    steps = _SEEDS_STEPS.value
    config = configs.resolve(configs.experiment('task=CartPole-v1,debug', _suite('classic')))
    configs.update(config, {'run': dict(steps=steps, prefill=steps // 5, log_every=steps // 10,
                                        eval_every=0, save_every_minutes=1e6, compile_cache='',
                                        replay_capacity=max(4000, 2 * steps))})
    records = []
    for seeds in (int(k) for k in _SEEDS.value):
      record = benchmark.seeds_record(config.to_dict(), seeds)
      logging.info('%s', record)
      records.append(record)
      _write('seeds', records)


  if 'dynamics' in _ONLY.value:
    # Train step of RSSM (dreamerv3) vs Transformer (storm) dynamics at an equal dynamics
    # parameter count (the Transformer's width matched to the RSSM), and imagination steps/s.
    records = []
    matched = benchmark.matched_transformer(_DYNAMICS_SIZE.value)
    logging.info('Transformer keys matching the RSSM parameter count: %s', matched)
    for length in (int(t) for t in _DYNAMICS_LENGTHS.value):
      for variant, model in (('dreamerv3', None), ('storm', matched)):
        record = benchmark.dynamics_record(_DYNAMICS_SIZE.value, variant, length, model=model)
        logging.info('%s', record)
        records.append(record)
        _write('dynamics', records)


if __name__ == '__main__':
  cli.run(main)
