"""DreamerV1 vs DreamerV2 vs DreamerV3 on CartPole-v1 (classic suite defaults) x 3 seeds.

    python scripts/sweep.py --sweep=experiments/sweeps/variants_cartpole.py \
        --root=runs/variants_cartpole --workers=1
    python scripts/table.py --root=runs/variants_cartpole
    python scripts/plot.py --root=runs/variants_cartpole
"""


def get_sweep():
    return {
        'suite': 'experiments/classic.py',
        'base': {'task': 'CartPole-v1'},
        'grid': {'variant': ['dreamerv1', 'dreamerv2', 'dreamerv3'], 'seed': [0, 1, 2]},
        'overrides': {},
    }
