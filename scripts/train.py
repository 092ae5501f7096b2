"""Trains a dreamerjax agent.

    python scripts/train.py --config=experiments/classic.py:task=CartPole-v1 --workdir=runs/cartpole
    python scripts/train.py --config=experiments/atari100k.py:task=Pong-v5,size=12m \
        --config.run.train_ratio=256 --workdir=runs/pong

Running the same command again on the same workdir resumes the run. A workdir holds one live
run. A bad option is one line on stderr with exit status 2 (`--verbose` adds the traceback).

Several hosts (each runs the same command with its own --process_id; on a Cloud TPU pod no flag is
needed, JAX finds the other hosts itself):

    python scripts/train.py --config=... --workdir=/shared/run --coordinator_address=10.0.0.1:1234 \
        --num_processes=2 --process_id=0
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dreamerjax.run import cli, configs, validation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment file and options, e.g. experiments/classic.py:task=CartPole-v1.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the run (created; resumed if it '
                               'holds one).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 of a '
                                   'multi-process run (same on every process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.start(argv)
  # A value out of its range is refused before the slow imports (jax, the models, envpool); the
  # run checks the config against its devices once they are known.
  validation.validate(configs.resolve(_CONFIG.value))
  from dreamerjax.run import parallel, train

  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  summary = train.run(_CONFIG.value, _WORKDIR.value)
  logging.info('Done: %s', summary)


if __name__ == '__main__':
  cli.run(main)
