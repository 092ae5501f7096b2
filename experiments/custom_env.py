"""Your own environment: a gymnasium env (`gym:`) or a pure-JAX env (`jax:`), CPU-sized DreamerV3.

    python scripts/train.py --config=experiments/custom_env.py --workdir=runs/gym_cartpole
    python scripts/train.py --config=experiments/custom_env.py:task=gym:my_pkg.envs:MyEnv \
        --workdir=runs/mine
    python scripts/train.py --config=experiments/custom_env.py:task=jax:CueRecall-15 \
        --workdir=runs/cue15
    python scripts/train.py --config=experiments/custom_env.py:task=jax:my_pkg.envs:make,debug \
        --workdir=/tmp/x --config.env.max_episode_steps=200

Task names (docs/environments.md has the details and a worked example):

    gym:<id>                       a registered gymnasium id, e.g. gym:CartPole-v1
    gym:<module>:<class|factory>   an env class or a function returning a gymnasium.Env
    jax:<memory env>               jax:CueRecall-L, jax:RepeatPrevious-k, jax:DiscountingChain-m
    jax:<module>:<class|factory>   a pure-JAX env: reset(key), step(key, state, action)

`<module>` must be importable (installed, or on PYTHONPATH). `--config.task=...` works as well as
the `task=` option. The default is gymnasium's own CartPole-v1, a check against envpool's
(`experiments/classic.py`) with the same settings.
"""

import os

from dreamerjax.run import configs

# The CPU-sized DreamerV3 of experiments/classic.py (see there for why these values).
_CLASSIC = configs.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'classic.py'))
SUITE = {**_CLASSIC.SUITE, 'task': 'gym:CartPole-v1'}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
