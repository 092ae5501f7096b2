"""The memory experiment (experiments/memory.py): every arm on CueRecall-5, -15 and -30, five
seeds side by side in each run (docs/memory.md has the measured cost; about 10 minutes per run on
2 CPU cores).

    python scripts/sweep.py --sweep=experiments/sweeps/memory.py --root=runs/memory --workers=1
    for run in runs/memory/*/; do python scripts/memory_probe.py --workdir=$run; done
    python scripts/memory_table.py --root=runs/memory

L = 60 and 120 (hours each on CPU): `experiments/sweeps/memory_long.py`.
"""

import os

from dreamerjax.run import configs

ARMS = list(configs.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                                           'memory.py')).ARMS)
LENGTHS = (5, 15, 30)


def get_sweep(lengths=LENGTHS):
    return {
        'suite': 'experiments/memory.py',
        'base': {},
        'grid': {'task': [f'CueRecall-{length}' for length in lengths], 'arm': ARMS,
                 'seed': [0]},
        'overrides': {},
    }
