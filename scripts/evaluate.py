"""Evaluates the newest checkpoint of a run on `--episodes` episodes (the policy mode, as the
run's own evaluations) and prints, or appends to `--out`, one JSON row: its returns, mean and
standard deviation.

    python scripts/evaluate.py --workdir=runs/dmc_b4/ReacherEasy-v1__seed0 --episodes=32
    python scripts/evaluate.py --workdir=runs/x --episodes=64 --seed=1000 --out=results/eval.jsonl
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # re-executes under jemalloc, else glibc huge pages: faster steps

from absl import flags, logging  # noqa: E402

from dreamerjax.run import cli, evaluation  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (its newest checkpoint).')
_EPISODES = flags.DEFINE_integer('episodes', 32, 'Episodes, one per eval env, all in parallel.')
_SEED = flags.DEFINE_integer('seed', 1_000_000, 'Seed of the first eval env (env i: seed + i); '
                             'the default is apart from the seeds the run evaluated on.')
_OUT = flags.DEFINE_string('out', None, 'JSON lines file to append the row to (else printed).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.start(argv)
  row = evaluation.checkpoint_returns(_WORKDIR.value, _EPISODES.value, _SEED.value)
  logging.info('%s at env step %d: mean return %.1f (std %.1f) over %d episodes.',
               row['task'], row['env_step'], row['mean'], row['std'], row['episodes'])
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'a') as file:
      file.write(json.dumps(row) + '\n')
  else:
    print(json.dumps(row))


if __name__ == '__main__':
  cli.run(main)
