"""The accelerator suite (`make bench-accelerator`): update speed of 12m and 50m in float32 and
bfloat16 with peak device memory, K vmapped seeds against one, weak scaling over the devices
present, and one Atari 100k run's projected wall-clock; one JSON (see
dreamerjax/analysis/accelerator.py). Sized for 10 minutes on one GPU:

    python scripts/bench_accelerator.py --out=benchmarks/accelerator.json
    # the plumbing on CPU, with tiny sizes:
    python scripts/bench_accelerator.py --out=/tmp/accelerator.json --sizes=debug \\
        --dtypes=float32 --seeds=2 --seeds_size=debug --scaling_size=debug --atari_size=debug \\
        --per_device_batch=2 --acting_steps=200 --repeats=1 --batch=2 --length=8
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import accelerator  # noqa: E402
from dreamerjax.run.logger import quiet_library_logs  # noqa: E402

_OUT = flags.DEFINE_string('out', 'benchmarks/accelerator.json', 'The JSON to write.')
_SIZES = flags.DEFINE_list('sizes', ['12m', '50m'], 'Size presets of the train_step part.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
_SEEDS = flags.DEFINE_integer('seeds', 8, 'K of the vmapped-seeds part.')
_SEEDS_SIZE = flags.DEFINE_string('seeds_size', '12m', 'Size preset of the seeds part.')
_SCALING_SIZE = flags.DEFINE_string('scaling_size', '12m', 'Size preset of weak scaling.')
_PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', 16, 'Sequences per device (scaling).')
_ATARI_SIZE = flags.DEFINE_string('atari_size', '12m', 'Size preset of the Atari 100k projection.')
_ACTING_STEPS = flags.DEFINE_integer('acting_steps', 2000, 'Env steps of the acting measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Sequences per update (all parts but scaling).')
_LENGTH = flags.DEFINE_integer('length', 64, 'Steps per sequence (all parts but scaling).')
_BUDGET = flags.DEFINE_float('budget_s', 540.0, 'Parts that would start after this are skipped.')


def main(argv):
  del argv
  quiet_library_logs()
  result = accelerator.run_suite(
      _OUT.value, sizes=_SIZES.value, dtypes=_DTYPES.value, seeds=_SEEDS.value,
      seeds_size=_SEEDS_SIZE.value, scaling_size=_SCALING_SIZE.value,
      per_device_batch=_PER_DEVICE_BATCH.value, atari_size=_ATARI_SIZE.value,
      acting_steps=_ACTING_STEPS.value, repeats=_REPEATS.value, budget_s=_BUDGET.value,
      batch=_BATCH.value, length=_LENGTH.value)
  skipped = ', '.join(result['skipped']) or 'none'
  print(f'Wrote {_OUT.value} ({result.get("seconds", 0)} s; skipped: {skipped})')


if __name__ == '__main__':
  app.run(main)
