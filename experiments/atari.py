"""Atari at larger budgets (default 10M agent steps, sticky actions as in Machado et al. 2018).

    python scripts/train.py --config=experiments/atari.py:task=Breakout-v5,size=50m \
        --workdir=runs/breakout
"""

from dreamerjax.run import configs

SUITE = {
    'task': 'Breakout-v5',
    'size': '50m',
    'env': dict(sticky=True, noop_max=0),
    'run': dict(steps=10_000_000, train_ratio=64.0, envs=16, replay_capacity=5_000_000,
                prefill=20_000, log_every=20_000, eval_every=250_000, eval_episodes=8),
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
