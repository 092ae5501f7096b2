"""Plots the learning curves of a sweep folder, one panel per task, with the published DreamerV3
curves where the reference data has the task.

    python scripts/plot.py --root=runs/atari100k                  # runs/atari100k/curves.png
    python scripts/plot.py --root=runs/dmc_proprio --band=std --out=/tmp/dmc.png
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import plots  # noqa: E402
from dreamerjax.run import cli  # noqa: E402
from dreamerjax.run.logger import RETURN_KEY  # noqa: E402

_ROOT = flags.DEFINE_string('root', None, 'Sweep folder (one run folder per subfolder).')
_OUT = flags.DEFINE_string('out', None, 'PNG path; default <root>/curves.png.')
_KEY = flags.DEFINE_string('key', RETURN_KEY, 'Metric to plot (e.g. eval/episode/return).')
_BAND = flags.DEFINE_enum('band', 'minmax', plots.BANDS, 'Band over seeds: min-max or ± std.')
_BINS = flags.DEFINE_integer('bins', 40, 'Env-step bins per panel.')
_REFERENCE = flags.DEFINE_bool('reference', True, 'Draw the published DreamerV3 curves.')
_COLUMNS = flags.DEFINE_integer('columns', 4, 'Panels per row.')
flags.mark_flags_as_required(['root'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    path = plots.plot_learning_curves(_ROOT.value, _OUT.value, _KEY.value, _BAND.value,
                                      _BINS.value, _REFERENCE.value, _COLUMNS.value)
    print(f'Wrote {path}')


if __name__ == '__main__':
    cli.run(main)
