"""Records an offline dataset (chunked .npz + manifest.json; see dreamerjax/data/dataset.py).

    # a random policy on an experiment's task
    python scripts/record.py --source=random --config=experiments/classic.py:task=CartPole-v1 \
        --steps=20000 --out=datasets/cartpole_random
    # a trained agent (the newest checkpoint of a finished or running run)
    python scripts/record.py --source=checkpoint --workdir=runs/cartpole --steps=40000 \
        --out=datasets/cartpole_expert
    # what an online run's replay holds
    python scripts/record.py --source=replay --workdir=runs/cartpole --out=datasets/cartpole_replay

Then train offline: `python scripts/train.py --config=experiments/classic.py:variant=dreamerv4
--config.run.dataset=datasets/cartpole_expert --workdir=runs/cartpole_offline`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dreamerjax.run import cli, configs, record  # noqa: E402

_SOURCE = flags.DEFINE_enum('source', 'random', ['random', 'checkpoint', 'replay'],
                            'What produces the trajectories.')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file (--source=random).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (--source=checkpoint or replay).')
_OUT = flags.DEFINE_string('out', None, 'Dataset directory to create.')
_STEPS = flags.DEFINE_integer('steps', 20_000, 'Env steps to record, over all envs.')
_ENVS = flags.DEFINE_integer('envs', 4, 'Envs stepped in parallel.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the envs and the policy.')
_CHUNK_STEPS = flags.DEFINE_integer('chunk_steps', 1000, 'Steps (of all envs) per chunk file.')
_MODE = flags.DEFINE_enum('policy_mode', 'train', ['train', 'eval'],
                          'checkpoint: sample actions (train) or take the most likely (eval).')
_EPSILON = flags.DEFINE_float('epsilon', 0.0, 'checkpoint: probability of a uniformly random '
                              'action instead of the policy\'s, per env step.')
flags.mark_flags_as_required(['out'])


def main(argv):
  cli.start(argv)
  if _SOURCE.value == 'random':
    if _CONFIG.value is None:
      raise app.UsageError('--source=random needs --config=<experiment file>')
    manifest = record.random_policy(configs.resolve(_CONFIG.value), _OUT.value, _STEPS.value,
                                    _ENVS.value, _SEED.value, _CHUNK_STEPS.value)
  elif _WORKDIR.value is None:
    raise app.UsageError(f'--source={_SOURCE.value} needs --workdir=<run directory>')
  elif _SOURCE.value == 'checkpoint':
    manifest = record.checkpoint_policy(_WORKDIR.value, _OUT.value, _STEPS.value, _ENVS.value,
                                        _SEED.value, _CHUNK_STEPS.value, _MODE.value,
                                        _EPSILON.value)
  else:
    manifest = record.replay_of_run(_WORKDIR.value, _OUT.value, _CHUNK_STEPS.value)
  logging.info('Wrote %s: %d steps x %d envs, %d episodes, return %s.', _OUT.value,
               manifest['steps'], manifest['envs'], manifest['episodes'],
               manifest['episode_return'])


if __name__ == '__main__':
  cli.run(main)
