"""Tiny sweep for tests: CartPole-v1 and Acrobot-v1 x 2 seeds with the `debug` option.

    python scripts/sweep.py --sweep=experiments/sweeps/classic_debug.py --root=/tmp/classic_debug \
        --workers=2
    python scripts/table.py --root=/tmp/classic_debug
    python scripts/plot.py --root=/tmp/classic_debug

A debug run lasts 400 env steps (4 envs x 100 agent steps). Episodes are cut at 45 agent steps so
that Acrobot (500-step episodes otherwise) ends episodes at env steps 180 and 364, inside the last
10% of the budget that the table scores.
"""


def get_sweep():
    return {
        'suite': 'experiments/classic.py',
        'base': 'debug',
        'grid': {'task': ['CartPole-v1', 'Acrobot-v1'], 'seed': [0, 1]},
        'overrides': {'env.max_episode_steps': 45},
    }
