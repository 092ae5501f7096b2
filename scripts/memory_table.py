"""Writes the memory table and plot of a sweep folder of experiments/memory.py runs.

    python scripts/memory_table.py --root=runs/memory      # runs/memory/memory_table.md, .png

Columns and protocol: dreamerjax/analysis/memory_table.py (and docs/memory.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import memory_table  # noqa: E402
from dreamerjax.run import cli  # noqa: E402

_ROOT = flags.DEFINE_string('root', None, 'Sweep folder (one run folder per subfolder).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension; default '
                           '<root>/memory_table.')
flags.mark_flags_as_required(['root'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  paths = memory_table.write(_ROOT.value, _OUT.value)
  with open(paths['markdown'], encoding='utf-8') as f:
    print(f.read())
  print('Wrote ' + ', '.join(paths.values()))


if __name__ == '__main__':
  cli.run(main)
