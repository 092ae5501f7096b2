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

from dreamerjax.run import configs

# The CPU-sized DreamerV3 of experiments/classic.py (see there for why these values).
SUITE = {
    'task': 'gym:CartPole-v1',
    'size': 'tiny',
    'run': dict(steps=40_000, train_ratio=64.0, envs=4, batch_size=16, batch_length=64,
                replay_capacity=100_000, prefill=2_000, log_every=2_000, eval_every=5_000,
                eval_episodes=8, save_every_minutes=5.0),
    'model': dict(encoder_layers=2, decoder_layers=2, units=64),
    'agent': dict(actor_layers=2, critic_layers=2),
    'optim': dict(model_lr=6e-4, actor_lr=1e-4, critic_lr=1e-3),
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
