"""Atari 100k: 100k agent steps (400k frames), 64x64 RGB, no sticky actions, up to 30 no-ops.

    python scripts/train.py --config=experiments/atari100k.py:task=Pong-v5 --workdir=runs/pong
    python scripts/train.py --config=experiments/atari100k.py:task=MsPacman-v5,size=12m,seed=2 \
        --config.run.train_ratio=256 --workdir=runs/mspacman_2

The 26 games are `GAMES`; `experiments/sweeps/atari100k.py` runs all of them over seeds.
"""

from dreamerjax.run import configs

GAMES = ('Alien-v5', 'Amidar-v5', 'Assault-v5', 'Asterix-v5', 'BankHeist-v5', 'BattleZone-v5',
         'Boxing-v5', 'Breakout-v5', 'ChopperCommand-v5', 'CrazyClimber-v5', 'DemonAttack-v5',
         'Freeway-v5', 'Frostbite-v5', 'Gopher-v5', 'Hero-v5', 'Jamesbond-v5', 'Kangaroo-v5',
         'Krull-v5', 'KungFuMaster-v5', 'MsPacman-v5', 'Pong-v5', 'PrivateEye-v5', 'Qbert-v5',
         'RoadRunner-v5', 'Seaquest-v5', 'UpNDown-v5')

SUITE = {
    'task': 'Pong-v5',
    'size': '12m',
    'env': dict(sticky=False, noop_max=30),
    'run': dict(steps=100_000, train_ratio=256.0, envs=1, replay_capacity=100_000, prefill=5_000,
                log_every=2_500, eval_every=0, eval_episodes=4),
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
