"""Classic control from envpool: CartPole-v1, Acrobot-v1, Pendulum-v1, MountainCar-v0.

    python scripts/train.py --config=experiments/classic.py:task=CartPole-v1 --workdir=runs/cartpole
    python scripts/train.py --config=experiments/classic.py:task=Pendulum-v1,seed=1 --workdir=...
    python scripts/train.py --config=experiments/classic.py:task=CartPole-v1,debug --workdir=/tmp/x
    python scripts/train.py --config=experiments/classic.py:variant=planet --workdir=runs/planet
    python scripts/train.py --config=experiments/classic.py:variant=worldmodels --workdir=runs/wm

The default is the CPU-sized DreamerV3 run that `make train` launches (CartPole to a return of
about 400 or more in under 15 minutes on 2 CPU cores).
"""

from dreamerjax.run import configs

TASKS = ('CartPole-v1', 'Acrobot-v1', 'Pendulum-v1', 'MountainCar-v0')

# CPU-sized DreamerV3: a `tiny` model, 4 envs, train ratio 64 (one update of 16 x 64 replayed
# steps per 16 env steps) and the actor/critic learning rates below (higher than the paper's:
# ~40k env steps on 2 CPU cores). Discount (1 - 1/333) and sequence length (64) are the paper's;
# the continue probability in imagination and the replay-return critic loss (agent.imag_cont,
# agent.replay_critic) are the 2024 code's. Why each matters: README, "CartPole: the default run".
SUITE = {
    'task': 'CartPole-v1',
    'size': 'tiny',
    'run': dict(steps=40_000, train_ratio=64.0, envs=4, batch_size=16, batch_length=64,
                replay_capacity=100_000, prefill=2_000, log_every=2_000, eval_every=5_000,
                eval_episodes=8, save_every_minutes=5.0),
    'model': dict(encoder_layers=2, decoder_layers=2, units=64),
    'agent': dict(actor_layers=2, critic_layers=2),
    'optim': dict(model_lr=6e-4, actor_lr=1e-4, critic_lr=1e-3),
}

# Suite values of the other variants (applied over SUITE when `variant=` names them).
VARIANTS = {
    # PlaNet on CPU: a small model and a cheaper CEM (the paper's 1000 candidates x 10 iterations
    # cost ~50x more per env step). CartPole's reward is +1 per step, so the planner learns to
    # keep the predicted continue probability high.
    'planet': {
        'size': 'debug',
        'run': dict(steps=12_000, train_ratio=128.0, prefill=1_000, eval_every=3_000,
                    batch_length=16),
        'planner': dict(horizon=12, candidates=128, elites=12, iterations=4, explore=0.1),
    },
    # World Models: stages from random rollouts, then CMA-ES in the dream.
    'worldmodels': {
        'size': 'debug',
        'run': dict(batch_length=16),
        'model': dict(stoch=8, deter=64),
        'worldmodels': dict(episodes=400, vae_steps=2_000, rnn_steps=3_000, generations=40,
                            population=24, rollouts=8, dream_horizon=300, eval_episodes=8),
    },
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE, variants=VARIANTS)
