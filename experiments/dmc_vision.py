"""DeepMind Control Suite from 64x64 pixels, via envpool with MuJoCo rendering.

    python scripts/train.py --config=experiments/dmc_vision.py:task=WalkerWalk-v1,size=12m \
        --workdir=runs/walker_walk_pixels

Rendering needs an OpenGL library on the machine (Debian: `apt-get install libegl1`, or
`libosmesa6`); the env adapter loads it before MuJoCo renders and says so if it is missing.
On a 2-core CPU, software rendering limits collection to about 100 env steps/s.
"""

from dreamerjax.run import configs

SUITE = {
    'task': 'WalkerWalk-v1',
    'size': '12m',
    'env': dict(from_pixels=True),
    'run': dict(steps=1_000_000, train_ratio=512.0, envs=4, replay_capacity=1_000_000,
                prefill=5_000, log_every=5_000, eval_every=50_000, eval_episodes=4),
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
