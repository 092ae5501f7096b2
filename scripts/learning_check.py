"""Trains a config on several seeds and checks that every run learns and keeps what it learned.

    python scripts/learning_check.py                   # the `make train` default, seeds 0 1 2
    python scripts/learning_check.py --steps=80000 --root=runs/check80k --out=results/check80k
    python scripts/learning_check.py --parallel=3      # all seeds at once
    python scripts/learning_check.py --only_check --root=runs/check   # re-read finished runs
    python scripts/learning_check.py --only_check --steps=40000 --root=runs/check80k  # at 40k

Each seed trains in `<root>/seed<S>` with `scripts/train.py` (an existing workdir resumes), its
output in `<root>/seed<S>.log`. Then each run is checked (see dreamerjax/analysis/
learning_check.py): first evaluation >= --first_return within --first_minutes of training, mean
of the last --last_evals evaluations >= --last_return. Writes table.md, summary.json and
eval_curves.png under --out, prints the table, and exits 1 unless every run passes. Seeds that
run in parallel share the CPU: the minutes then overstate a run's time alone.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dreamerjax.analysis import learning_check  # noqa: E402

DEFAULTS = learning_check.Thresholds()
_CONFIG = flags.DEFINE_string('config', 'experiments/classic.py:task=CartPole-v1',
                              'Experiment file and options; `,seed=S` is appended per seed.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds to train.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Env steps per run (0: the config\'s run.steps); with '
                              '--only_check, check the runs as they stood at this step.')
_ROOT = flags.DEFINE_string('root', 'runs/learning_check', 'Folder of the run workdirs.')
_OUT = flags.DEFINE_string('out', None, 'Where the table goes; default <root>/check.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Runs trained at the same time.')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'Extra train.py flags, e.g. '
                                       '--override=--config.agent.discount=0.99')
_ONLY_CHECK = flags.DEFINE_bool('only_check', False, 'Do not train; check the runs in --root.')
_FIRST_RETURN = flags.DEFINE_float('first_return', DEFAULTS.first_return,
                                   'Return the first evaluation must reach ...')
_FIRST_MINUTES = flags.DEFINE_float('first_minutes', DEFAULTS.first_minutes,
                                    '... within this many minutes of training.')
_LAST_RETURN = flags.DEFINE_float('last_return', DEFAULTS.last_return,
                                  'Least mean of the last --last_evals evaluations.')
_LAST_EVALS = flags.DEFINE_integer('last_evals', DEFAULTS.last_evals,
                                   'Evaluations at the end of a run that must hold.')


def _command(seed: str) -> list[str]:
  config = _CONFIG.value + (',' if ':' in _CONFIG.value else ':') + f'seed={seed}'
  command = [sys.executable, os.path.join(os.path.dirname(__file__), 'train.py'),
             f'--config={config}', f'--workdir={os.path.join(_ROOT.value, f"seed{seed}")}']
  if _STEPS.value:
    command.append(f'--config.run.steps={_STEPS.value}')
  return command + list(_OVERRIDES.value)


def train_all(seeds: list[str]) -> None:
  """Trains the seeds, at most --parallel at a time; raises if a run fails."""
  os.makedirs(_ROOT.value, exist_ok=True)
  waiting, running = list(seeds), {}
  while waiting or running:
    while waiting and len(running) < _PARALLEL.value:
      seed = waiting.pop(0)
      log = open(os.path.join(_ROOT.value, f'seed{seed}.log'), 'ab')
      print(f'seed {seed}: ' + ' '.join(_command(seed)), flush=True)
      running[seed] = (subprocess.Popen(_command(seed), stdout=log, stderr=subprocess.STDOUT), log)
    time.sleep(2.0)
    for seed, (process, log) in list(running.items()):
      if process.poll() is None:
        continue
      log.close()
      del running[seed]
      if process.returncode:
        for other, _ in running.values():
          other.terminate()
        raise SystemExit(f'seed {seed} failed (exit {process.returncode}); see '
                         f'{os.path.join(_ROOT.value, f"seed{seed}.log")}')
      print(f'seed {seed}: done', flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _ONLY_CHECK.value:
    train_all(_SEEDS.value)
  thresholds = learning_check.Thresholds(_FIRST_RETURN.value, _FIRST_MINUTES.value,
                                         _LAST_RETURN.value, _LAST_EVALS.value)
  workdirs = [os.path.join(_ROOT.value, f'seed{seed}') for seed in _SEEDS.value]
  missing = [w for w in workdirs if not os.path.isfile(os.path.join(w, 'config.json'))]
  if missing:
    raise SystemExit(f'no run in {", ".join(missing)}: train it first (drop --only_check)')
  budget = _STEPS.value if _ONLY_CHECK.value and _STEPS.value else None
  checks = [learning_check.check_run(w, thresholds, budget) for w in workdirs]
  out = _OUT.value or os.path.join(_ROOT.value, 'check')
  passed = learning_check.write_report(checks, thresholds, out, title=_CONFIG.value)
  print(learning_check.markdown(checks, thresholds))
  print(f'Wrote {out}/table.md, summary.json, eval_curves.png')
  sys.exit(0 if passed else 1)


if __name__ == '__main__':
  app.run(main)
