"""State probes on a trained run: R^2 of MLP probes from filtered and open-loop latents.

    python scripts/probe.py --workdir=runs/dmc_proprio
    python scripts/probe.py --workdir=runs/cartpole --steps=500 --horizons=1,5,15

Writes probes.md, probes.json and probes.png to <workdir>/probes (or --out).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import app, flags, logging  # noqa: E402

from dreamerjax.analysis import probes  # noqa: E402
from dreamerjax.run import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a trained run (with checkpoints/).')
_OUT = flags.DEFINE_string('out', None, 'Output directory (default: <workdir>/probes).')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Env steps collected per env.')
_ENVS = flags.DEFINE_integer('envs', 4, 'Envs collected from.')
_HORIZONS = flags.DEFINE_list('horizons', ['1', '5', '15'], 'Open-loop horizons k.')
_PROBE_STEPS = flags.DEFINE_integer('probe_steps', 2000, 'Adam steps per probe.')
_SEED = flags.DEFINE_integer('seed', 12345, 'Seed of the collection envs and the probes.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.start(argv)
  horizons = tuple(int(h) for h in _HORIZONS.value)
  if not horizons or min(horizons) < 1:
    raise app.UsageError(f'--horizons must be positive integers, got {_HORIZONS.value}')
  result = probes.run(_WORKDIR.value, _OUT.value, steps=_STEPS.value, num_envs=_ENVS.value,
                      horizons=horizons, probe_steps=_PROBE_STEPS.value, seed=_SEED.value)
  with open(result['paths']['markdown']) as f:
    print(f.read())
  logging.info('Wrote %s', result['paths'])


if __name__ == '__main__':
  cli.run(main)
