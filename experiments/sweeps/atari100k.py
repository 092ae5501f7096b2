"""Atari 100k: the 26 games of the benchmark x 5 seeds, 12M-parameter DreamerV3 (130 runs).

    python scripts/sweep.py --sweep=experiments/sweeps/atari100k.py --root=runs/atari100k
    python scripts/table.py --root=runs/atari100k
    python scripts/plot.py --root=runs/atari100k

The games are those of the bundled reference scores (dreamerjax/reference/atari100k_scores.csv)
as envpool ids (envpool spells James Bond `Jamesbond-v5`).
"""

from dreamerjax.analysis import published


def get_sweep():
    return {
        'suite': 'experiments/atari100k.py',
        'base': {'size': '12m'},
        'grid': {'task': published.atari_tasks(), 'seed': [0, 1, 2, 3, 4]},
        'overrides': {},
    }
