"""Trains a dreamerjax agent.

    python scripts/train.py --config=experiments/classic.py:task=CartPole-v1 --workdir=runs/cartpole
    python scripts/train.py --config=experiments/atari100k.py:task=Pong-v5,size=12m \
        --config.run.train_ratio=256 --workdir=runs/pong

Running the same command again on the same workdir resumes the run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dreamerjax import train  # noqa: E402
from dreamerjax.logger import quiet_library_logs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment file and options, e.g. experiments/classic.py:task=CartPole-v1.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the run (created; resumed if it '
                               'holds one).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  summary = train.run(_CONFIG.value, _WORKDIR.value)
  logging.info('Done: %s', summary)


if __name__ == '__main__':
  app.run(main)
