"""Side by side with the 2024 public DreamerV3 code; writes benchmarks/public_2024.json.

    python scripts/bench_public.py                               # 1m and 12m, image and vector
    python scripts/bench_public.py --sizes=1m --obs=vector --repeats=2
    python scripts/bench_public.py --source=/path/to/dreamerv3   # a local clone or git dir

Clones the public code at `public_harness.COMMIT` and builds its virtual environment under
--workdir (outside the repository; reused when present), then measures both sides in one run,
alternating (see `dreamerjax/analysis/public_harness.py`, docs/benchmarks.md).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreamerjax.run import allocator  # noqa: E402

allocator.use_fast_allocator()  # both sides' processes inherit the allocator

from absl import flags, logging  # noqa: E402

from dreamerjax.analysis import benchmark, public_harness  # noqa: E402
from dreamerjax.run import cli  # noqa: E402

_OUT = flags.DEFINE_string('out', 'benchmarks/public_2024.json', 'Output JSON file.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/dreamerv3-public',
                               'Scratch folder for the public code and its virtual environment.')
_SOURCE = flags.DEFINE_string('source', public_harness.REPOSITORY,
                              'Where to clone the public code from (URL, clone or git dir).')
_PYTHON = flags.DEFINE_string('python', 'python3.11', 'Interpreter for its environment.')
_SIZES = flags.DEFINE_list('sizes', ['1m', '12m'], 'Size presets.')
_OBS = flags.DEFINE_list('obs', ['image', 'vector'], 'Observation kinds.')
_ROUNDS = flags.DEFINE_integer('rounds', 1, 'Measurements of each side per preset and kind.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (after 2 warm-ups).')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  paths = public_harness.prepare(_WORKDIR.value, _SOURCE.value, _PYTHON.value)
  records = public_harness.compare(paths, _SIZES.value, _OBS.value, _ROUNDS.value,
                                   _REPEATS.value, log=lambda line: logging.info('%s', line))
  result = {'machine': {**benchmark.machine(), **public_harness.machine()},
            'public': {'repository': public_harness.REPOSITORY, **paths},
            'batch': '16 x 64', **public_harness.summarize(records), 'records': records}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as file:
    json.dump(result, file, indent=2)
  logging.info('Wrote %s', _OUT.value)


if __name__ == '__main__':
  cli.run(main)
