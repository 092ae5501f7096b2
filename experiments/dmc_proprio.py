"""DeepMind Control Suite from proprioceptive observations (the 18 DreamerV3 tasks), via envpool.

    python scripts/train.py --config=experiments/dmc_proprio.py:task=CartpoleBalance-v1 \
        --workdir=runs/cartpole_balance
    python scripts/train.py --config=experiments/dmc_proprio.py:task=WalkerWalk-v1,size=12m,seed=1 \
        --workdir=runs/walker_walk_1

DreamerV3 counts 500k env steps with action repeat 2 for DMC; envpool's DMC tasks step once per
agent step (frame skip 1) here, so `run.steps` counts agent steps.
"""

from dreamerjax.run import configs

TASKS = ('AcrobotSwingup-v1', 'BallInCupCatch-v1', 'CartpoleBalance-v1',
         'CartpoleBalanceSparse-v1', 'CartpoleSwingup-v1', 'CartpoleSwingupSparse-v1',
         'CheetahRun-v1', 'FingerSpin-v1', 'FingerTurnEasy-v1', 'FingerTurnHard-v1', 'HopperHop-v1',
         'HopperStand-v1', 'PendulumSwingup-v1', 'ReacherEasy-v1', 'ReacherHard-v1', 'WalkerRun-v1',
         'WalkerStand-v1', 'WalkerWalk-v1')

SUITE = {
    'task': 'CartpoleBalance-v1',
    'size': '12m',
    'run': dict(steps=500_000, train_ratio=512.0, envs=4, replay_capacity=1_000_000,
                prefill=5_000, log_every=5_000, eval_every=25_000, eval_episodes=4),
}


def get_config(arg=None):
  return configs.experiment(arg, SUITE)
