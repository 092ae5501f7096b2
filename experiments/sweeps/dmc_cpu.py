"""Two DMC proprio tasks at a CPU budget, seeds 0, 1, 2: the runs of docs/evidence.md.

    python scripts/sweep.py --sweep=experiments/sweeps/dmc_cpu.py --root=runs/dmc_cpu --workers=2
    python scripts/table.py --root=runs/dmc_cpu --key=eval/episode/return
    python scripts/plot.py --root=runs/dmc_cpu --key=eval/episode/return

DreamerV3's DMC proprio recipe (2024 code: the 1m model, train ratio 1024; 2023 paper: 12m, ratio
512) makes about 1 env step/s here. This keeps the recipe's losses and hyperparameters but uses
the `tiny` preset, 16 x 32 batches and train ratio 64 (8 env steps per update): about 1.5 h per
60k-step run alone on 2 cores. On an accelerator, `--config.num_seeds=3` trains the three seeds of
a task in one program instead (tables and plots score each seed on its own).
"""


def get_sweep():
    return {
        'suite': 'experiments/dmc_proprio.py',
        'base': {'size': 'tiny'},
        'grid': {'task': ['CartpoleBalance-v1', 'ReacherEasy-v1'], 'seed': [0, 1, 2]},
        'overrides': {'run.train_ratio': 64.0, 'run.batch_length': 32, 'run.steps': 60_000,
                      'run.eval_every': 5_000, 'run.log_every': 1_000, 'run.prefill': 2_500,
                      'run.replay_capacity': 100_000},
    }
