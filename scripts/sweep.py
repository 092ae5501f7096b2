"""Runs a sweep: every grid point of a sweep file as its own training run under --root.

    python scripts/sweep.py --sweep=experiments/sweeps/classic_debug.py --root=/tmp/sweep \
        --workers=2
    python scripts/sweep.py --sweep=experiments/sweeps/atari100k.py --root=runs/atari100k --dry_run

Finished runs are skipped and unfinished ones resumed, so the same command continues a sweep.
Each run logs to <root>/<name>/train.log; failed runs are listed at the end (exit status 1).
On a multi-host TPU slice run it on every worker (see dreamerjax/run/sweeps.py for the command).
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.run import cli, sweeps  # noqa: E402

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file, e.g. experiments/sweeps/atari100k.py.')
_ROOT = flags.DEFINE_string('root', None, 'Sweep folder; each run gets <root>/<name>.')
_WORKERS = flags.DEFINE_integer('workers', 1, 'Runs trained at the same time on this host.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the plan (name, status, command) only.')
_PROCESS_INDEX = flags.DEFINE_integer(
    'process_index', None, 'This host\'s index; default: from the TPU slice, else 0.')
_PROCESS_COUNT = flags.DEFINE_integer(
    'process_count', None,
    'Number of hosts sharing the sweep; default: from the TPU slice, else 1.')
_PYTHON = flags.DEFINE_string('python', sys.executable, 'Python interpreter for the runs.')
flags.mark_flags_as_required(['sweep', 'root'])


def _resolve(path: str) -> str:
    """A path as given if it exists, else relative to the repository root."""
    if os.path.exists(path):
        return path
    return os.path.join(sweeps.REPOSITORY_ROOT, path)


def _process() -> tuple[int, int]:
    index, count = _PROCESS_INDEX.value, _PROCESS_COUNT.value
    if (index is None) != (count is None):
        raise app.UsageError('pass both --process_index and --process_count, or neither')
    return (index, count) if index is not None else sweeps.detect_process()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f'signal {signum}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    sweep = sweeps.load_sweep(_resolve(_SWEEP.value))
    process_index, process_count = _process()
    runs = sweeps.expand(sweep, _ROOT.value, _PYTHON.value)
    mine = sweeps.shard(runs, process_index, process_count)
    steps = sweeps.budget_override(sweep)
    print(f'Sweep {_SWEEP.value}: {len(runs)} runs; process {process_index} of {process_count} '
          f'takes {len(mine)}; root {os.path.abspath(_ROOT.value)}', flush=True)
    if _DRY_RUN.value:
        print('\n'.join(sweeps.describe(mine, steps)))
        return 0
    suite = os.path.join(sweeps.REPOSITORY_ROOT, sweep['suite'])
    if not os.path.exists(suite):
        raise app.UsageError(f'the sweep\'s suite {sweep["suite"]!r} does not exist ({suite})')
    sweeps.write_plan(_ROOT.value, _SWEEP.value, sweep, runs, process_count)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        failures = sweeps.launch(mine, _WORKERS.value, steps,
                                 echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print('Interrupted: the running trainers were stopped (they save a checkpoint). Run the '
              'same command to resume the sweep.', flush=True)
        return 130
    done = len(mine) - len(failures)
    print(f'{done} of {len(mine)} runs of this process finished.', flush=True)
    if failures:
        print(f'{len(failures)} failed:')
        for failure in failures:
            print(f'  {failure.run.name}: {failure.reason}; log: {failure.log}')
        return 1
    return 0


if __name__ == '__main__':
    cli.run(lambda argv: sys.exit(main(argv)))
