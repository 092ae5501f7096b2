"""Pendulum-v1 with the classic suite's defaults (the `make train` preset), seeds 0, 1, 2: the
continuous-action check of the default recipe (docs/evidence.md).

    python scripts/sweep.py --sweep=experiments/sweeps/pendulum_seeds.py --root=runs/pendulum
    python scripts/table.py --root=runs/pendulum --key=eval/episode/return
    python scripts/plot.py --root=runs/pendulum --key=eval/episode/return
"""


def get_sweep():
    return {
        'suite': 'experiments/classic.py',
        'base': {},
        'grid': {'task': ['Pendulum-v1'], 'seed': [0, 1, 2]},
        'overrides': {'run.eval_every': 2_500},
    }
