"""Two DMC proprio tasks with the classic suite's CPU preset, seeds 0, 1, 2: the runs of
docs/evidence.md ("DMC at the `make train` preset").

    python scripts/sweep.py --sweep=experiments/sweeps/dmc_cpu.py --root=runs/dmc_cpu --workers=2
    python scripts/table.py --root=runs/dmc_cpu --key=eval/episode/return
    python scripts/plot.py --root=runs/dmc_cpu --key=eval/episode/return

DreamerV3's DMC proprio recipe (2024 code: the 1m model, train ratio 1024; 2023 paper: 12m, ratio
512) makes about 1 env step/s here. These runs keep the recipe's losses but take every setting of
the `make train` preset (`experiments/classic.py`: `tiny`, 16 x 64 batches, train ratio 64, its
learning rates and layers), read from that file, so CartPole, Pendulum and DMC share one CPU
preset: about 3,600 updates in 60k env steps, 70 min per run with two runs sharing 2 cores. On an
accelerator, `--config.num_seeds=3` trains the three seeds of a task in one program instead.
"""

import os

from dreamerjax.run import configs

# Run-length keys that stay DMC's own (1000-step episodes, a 60k budget).
_OWN = {'steps', 'eval_every', 'log_every', 'eval_episodes', 'prefill', 'save_every_minutes'}


def cpu_preset() -> tuple[dict, str]:
    """The classic suite's preset as `--config.<key>` overrides (run length excluded), and its
    size preset."""
    suite = configs.load_file(os.path.join(os.path.dirname(__file__), '..', 'classic.py')).SUITE
    overrides = {}
    for section, values in suite.items():
        if isinstance(values, dict):
            overrides.update({f'{section}.{key}': value for key, value in values.items()
                              if not (section == 'run' and key in _OWN)})
    return overrides, suite['size']


def get_sweep():
    overrides, size = cpu_preset()
    return {
        'suite': 'experiments/dmc_proprio.py',
        'base': {'size': size},
        'grid': {'task': ['CartpoleBalance-v1', 'ReacherEasy-v1'], 'seed': [0, 1, 2]},
        'overrides': {**overrides, 'run.steps': 60_000, 'run.eval_every': 5_000,
                      'run.log_every': 1_000, 'run.prefill': 2_500, 'run.eval_episodes': 4},
    }
