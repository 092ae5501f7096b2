"""DMC proprio: the 18 DreamerV3 proprioceptive DMC tasks x 3 seeds (54 runs).

    python scripts/sweep.py --sweep=experiments/sweeps/dmc_proprio.py --root=runs/dmc_proprio
    python scripts/table.py --root=runs/dmc_proprio
    python scripts/plot.py --root=runs/dmc_proprio

The tasks are those of the bundled DreamerV3 summary
(dreamerjax/reference/dmc_proprio_dreamerv3_2024_summary.csv) as envpool ids
(`ball_in_cup_catch` -> `BallInCupCatch-v1`). Model size and budget come from the suite file.
"""

from dreamerjax.analysis import published


def get_sweep():
    return {
        'suite': 'experiments/dmc_proprio.py',
        'base': {},
        'grid': {'task': published.dmc_proprio_tasks(), 'seed': [0, 1, 2]},
        'overrides': {},
    }
