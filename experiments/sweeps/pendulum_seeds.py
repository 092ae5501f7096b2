"""Pendulum-v1 with the classic suite's defaults (the `make train` preset), 3 seeds trained side
by side in one program (`num_seeds=3`): a continuous-action check of the default recipe.

    python scripts/sweep.py --sweep=experiments/sweeps/pendulum_seeds.py --root=runs/pendulum
    python scripts/table.py --root=runs/pendulum --key=eval/episode/return
    python scripts/plot.py --root=runs/pendulum --key=eval/episode/return
"""


def get_sweep():
    return {
        'suite': 'experiments/classic.py',
        'base': {},
        'grid': {'task': ['Pendulum-v1'], 'seed': [0]},
        'overrides': {'num_seeds': 3, 'run.eval_every': 2_500},
    }
