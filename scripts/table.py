"""Writes the result table of a sweep folder: Markdown and CSV, with published baselines.

    python scripts/table.py --root=runs/atari100k                 # runs/atari100k/table.md, .csv
    python scripts/table.py --root=runs/atari100k --final_fraction=0.05 --out=/tmp/table

The protocol (score = mean episode return over the last 10% of the budget, mean and std over
seeds, stratified bootstrap intervals) is stated in the table; see dreamerjax/analysis/tables.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import aggregates, tables  # noqa: E402
from dreamerjax.run import cli  # noqa: E402
from dreamerjax.run.logger import RETURN_KEY  # noqa: E402

_ROOT = flags.DEFINE_string('root', None, 'Sweep folder (one run folder per subfolder).')
_OUT = flags.DEFINE_string('out', None, 'Output path without extension; default <root>/table.')
_FINAL_FRACTION = flags.DEFINE_float(
    'final_fraction', tables.FINAL_FRACTION, 'Score episodes ending in this last fraction of the '
    'budget.')
_BOOTSTRAP_REPS = flags.DEFINE_integer('bootstrap_reps', aggregates.BOOTSTRAP_REPS,
                                       'Bootstrap resamples for the confidence intervals.')
_BOOTSTRAP_SEED = flags.DEFINE_integer('bootstrap_seed', 0, 'Seed of the bootstrap.')
_INCLUDE_PARTIAL = flags.DEFINE_bool('include_partial', False,
                                     'Also score runs that have not reached run.steps.')
_KEY = flags.DEFINE_string('key', RETURN_KEY, 'Metric to score (e.g. eval/episode/return).')
_THRESHOLD = flags.DEFINE_float('threshold', None, 'Also report when each run first reached '
                                'this value of --key (env step and training minutes).')
flags.mark_flags_as_required(['root'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    table = tables.build_table(_ROOT.value, _FINAL_FRACTION.value, _BOOTSTRAP_REPS.value,
                               _BOOTSTRAP_SEED.value, _INCLUDE_PARTIAL.value, _KEY.value,
                               _THRESHOLD.value)
    paths = tables.write_table(table, _OUT.value or os.path.join(_ROOT.value, 'table'))
    print(tables.markdown(table))
    print('Wrote ' + ', '.join(paths))


if __name__ == '__main__':
    cli.run(main)
