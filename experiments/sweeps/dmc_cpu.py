"""Two DMC proprio tasks at a CPU budget: the run of docs/evidence.md (1 seed each, tiny preset).

    python scripts/sweep.py --sweep=experiments/sweeps/dmc_cpu.py --root=runs/dmc_cpu --workers=2
    python scripts/table.py --root=runs/dmc_cpu --include_partial --key=eval/episode/return
    python scripts/plot.py --root=runs/dmc_cpu --key=eval/episode/return

DreamerV3's DMC recipe (12m, 16 x 64 batches, train ratio 512 = 2 env steps per update) makes about
1 env step/s here. This keeps the recipe's losses and hyperparameters but uses the `tiny` preset,
16 x 32 batches and train ratio 64 (8 env steps per update), so that 60k env steps fit in about
an hour per run on 2 cores.
"""


def get_sweep():
    return {
        'suite': 'experiments/dmc_proprio.py',
        'base': {'size': 'tiny'},
        'grid': {'task': ['CartpoleBalance-v1', 'ReacherEasy-v1'], 'seed': [0]},
        'overrides': {'run.train_ratio': 64.0, 'run.batch_length': 32, 'run.steps': 60_000,
                      'run.eval_every': 5_000, 'run.log_every': 1_000, 'run.prefill': 2_500},
    }
