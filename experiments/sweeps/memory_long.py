"""The memory experiment at L = 60 and 120 (experiments/memory.py; sequences of 2 (L + 1) steps).
Measured cost per run in docs/memory.md (hours on 2 CPU cores; an accelerator is the place).

    python scripts/sweep.py --sweep=experiments/sweeps/memory_long.py --root=runs/memory \
        --workers=1
    python scripts/memory_table.py --root=runs/memory
"""

import os

from dreamerjax.run import configs

_SHORT = configs.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'memory.py'))


def get_sweep():
    return _SHORT.get_sweep(lengths=(60, 120))
