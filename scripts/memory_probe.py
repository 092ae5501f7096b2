"""Cue probes for the memory suite: of a trained run, or of a world model alone (the cheap tier).

    # every seed of a trained experiments/memory.py run: <workdir>/memory_probe.json
    python scripts/memory_probe.py --workdir=runs/memory/jax-CueRecall-30__rssm__seed0
    # world model only, on random-policy data: <out>/memory_world_model.json
    python scripts/memory_probe.py --config=experiments/memory.py:task=CueRecall-30,arm=rssm \
        --out=runs/memory_wm/CueRecall-30__rssm --updates=1000

The world-model tier trains no actor or critic: `--updates` world-model updates of the arm's
`run.batch_size x run.batch_length` on random-policy streams, then probes the cue at delays
0, L/2 and L (`--delays` to choose). See dreamerjax/analysis/memory_probe.py.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dreamerjax.analysis import memory_probe  # noqa: E402
from dreamerjax.run import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run to probe (every seed).')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file (world-model tier).')
_OUT = flags.DEFINE_string('out', None, 'World-model tier: folder for memory_world_model.json.')
_UPDATES = flags.DEFINE_integer('updates', 1000, 'World-model tier: world-model updates.')
_ENVS = flags.DEFINE_integer('envs', 16, 'Envs of the random-policy streams (tier) or of the '
                             "run's own policy (--workdir: 8 is used if this is left at 16).")
_STEPS = flags.DEFINE_integer('steps', 0, 'Steps per env collected (0: 40 episodes per env for '
                              'the tier, 1000 for a run).')
_DELAYS = flags.DEFINE_list('delays', [], 'World-model tier: delays d to probe (default 0, L/2, '
                            'L).')
_PROBE_STEPS = flags.DEFINE_integer('probe_steps', 1000, 'Adam steps per probe.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the streams, the world model and the probes.')


def main(argv):
  cli.start(argv)
  if (_WORKDIR.value is None) == (_CONFIG.value is None):
    raise app.UsageError('give one of --workdir (a trained run) or --config (world-model tier)')
  if _WORKDIR.value:
    result = memory_probe.probe_run(_WORKDIR.value, _STEPS.value or 1000,
                                    8 if _ENVS.value == 16 else _ENVS.value, _PROBE_STEPS.value,
                                    12345 + _SEED.value)
  else:
    result = memory_probe.world_model_tier(
        _CONFIG.value, _UPDATES.value, _ENVS.value, _STEPS.value or None,
        [int(d) for d in _DELAYS.value] or None, _PROBE_STEPS.value, _SEED.value, _OUT.value)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  cli.run(main)
