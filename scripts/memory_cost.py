"""Measured cost of experiments/memory.py runs: CPU/wall seconds per update and per acting step,
and the CPU seconds of a whole run extrapolated from them (dreamerjax/analysis/memory_cost.py).

    python scripts/memory_cost.py --tasks=CueRecall-5,CueRecall-120 --arms=rssm,transformer
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import memory_cost  # noqa: E402
from dreamerjax.run import cli, configs  # noqa: E402

_TASKS = flags.DEFINE_list('tasks', ['CueRecall-5'], 'Memory tasks.')
_ARMS = flags.DEFINE_list('arms', ['rssm', 'transformer'], 'Arms of experiments/memory.py.')
_OPTIONS = flags.DEFINE_string('options', '', 'More experiment options (e.g. size=tiny).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed updates (median).')
_OUT = flags.DEFINE_string('out', None, 'Append one JSON line per record to this file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  experiment = configs.load_file(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'experiments', 'memory.py'))
  for task in _TASKS.value:
    for arm in _ARMS.value:
      options = ','.join(filter(None, [f'task={task}', f'arm={arm}', _OPTIONS.value]))
      config = configs.resolve(experiment.get_config(options))
      record = memory_cost.measure(config, _REPEATS.value)
      record.update(arm=arm, run=memory_cost.extrapolate(record, config))
      print(json.dumps(record), flush=True)
      if _OUT.value:
        with open(_OUT.value, 'a') as f:
          f.write(json.dumps(record) + '\n')


if __name__ == '__main__':
  cli.run(main)
