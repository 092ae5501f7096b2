"""The embedded default (`make train`: DreamerV3, tiny preset, CartPole-v1) over 3 seeds.

    python scripts/sweep.py --sweep=experiments/sweeps/cartpole_seeds.py --root=runs/cartpole_seeds
    python scripts/table.py --root=runs/cartpole_seeds
    python scripts/plot.py --root=runs/cartpole_seeds

Run with one worker (the default) so that each run has the CPU to itself: docs/evidence.md reports
the wall-clock minutes at which each seed first reached a return of 400.
"""


def get_sweep():
    return {
        'suite': 'experiments/classic.py',
        'base': {},
        'grid': {'seed': [0, 1, 2]},
        'overrides': {},
    }
