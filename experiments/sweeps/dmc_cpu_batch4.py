"""DMC proprio on CPU with more, smaller updates: the `make train` preset (read from
`experiments/sweeps/dmc_cpu.py`, so the suites cannot drift apart) with batches of 4 x 64 at
train ratio 128 instead of 16 x 64 at 64. One update of 256 replayed steps per 2 env steps:
28,750 updates in 60k env steps (none in the prefill), 8x the preset's, at 2x its replayed
steps. An update's cost is proportional to its batch at `tiny` on this CPU (0.37 s at 16 x 64,
0.10 s at 4 x 64: `benchmark.train_step_record('tiny', 'vector', batch=b, actions=2)`), so a
run costs 2x the preset's, not 16x. ReacherEasy-v1 reaches 400 here within 60k env steps: the
runs of docs/evidence.md ("DMC with 4 x 64 batches"), seeds 0, 1, 2 as in `dmc_cpu.py`.

    python scripts/sweep.py --sweep=experiments/sweeps/dmc_cpu_batch4.py --root=runs/dmc_b4 \
        --workers=2
    python scripts/table.py --root=runs/dmc_b4 --key=eval/episode/return \
        --out=results/dmc_cpu_batch4/table
    python scripts/plot.py --root=runs/dmc_b4 --key=eval/episode/return \
        --out=results/dmc_cpu_batch4/eval_curves.png
"""

import os

from dreamerjax.run import configs


def get_sweep():
    sweep = configs.load_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           'dmc_cpu.py')).get_sweep()
    sweep['overrides'].update({'run.batch_size': 4, 'run.train_ratio': 128.0})
    return sweep
