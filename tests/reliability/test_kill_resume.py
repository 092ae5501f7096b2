"""kill -9 at random points of one debug run, resumed each time: nothing is lost beyond the
newest complete checkpoint, the history only moves forward, and the run ends where a run stopped
cleanly at the same steps (and resumed) ends: same counters, replay size, episodes and
parameters. Before the last start the newest checkpoint's parameters are changed after saving
(partly set to 1e30, as a bad copy leaves them): that start resumes from the step before."""

import ast
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dreamerjax.run import logger
from tests.conftest import ROOT
from tests.damage import damage

CYCLES = 5
STEPS = 300  # env steps of 4 envs; the first 100 are prefill
FLAGS = ['--config=experiments/classic.py:task=CartPole-v1,debug', f'--config.run.steps={STEPS}',
         '--config.run.save_every_minutes=0.005', '--config.run.log_every=20']

# Trains the reference run: for each line `<steps>` on stdin, a clean run to that many steps on
# the same workdir (so it stops there, saves and resumes), printing its summary.
REFERENCE = textwrap.dedent('''
    import os, sys
    from dreamerjax.run import configs, train
    suite = configs.load_file(os.path.join({root!r}, 'experiments', 'classic.py'))
    for line in sys.stdin:
      config = suite.get_config('task=CartPole-v1,debug')
      configs.update(config, {{'run': {{'steps': int(line), 'save_every_minutes': 1000.0,
                                        'log_every': 20}}}})
      print('SUMMARY', repr(train.run(config, {workdir!r})), flush=True)
''')


def complete_steps(workdir) -> list[int]:
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def start(workdir, log_path, *extra):
  log = open(log_path, 'w')
  return subprocess.Popen([sys.executable, os.path.join(ROOT, 'scripts', 'train.py'), *FLAGS,
                           f'--workdir={workdir}', *extra], stdout=log, stderr=subprocess.STDOUT,
                          cwd=ROOT), log


def resumed_from(log_path) -> int:
  found = re.findall(r'Resumed from checkpoint at env step (\d+)', open(log_path).read())
  return int(found[0]) if found else 0


def summary_of(log_path) -> dict:
  return ast.literal_eval(re.findall(r'Done: (\{.*\})', open(log_path).read())[-1])


def kill_at_random_point(workdir, log_path, newest: int, rng: random.Random) -> None:
  """Starts a segment and kill -9s it at a random moment: 0 to 0.5 s after it saved a
  checkpoint 4 to 16 env steps past `newest` (it must still be running then)."""
  process, log = start(workdir, log_path)
  target = newest + 4 * rng.randint(1, 4)
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if complete_steps(workdir) and complete_steps(workdir)[-1] >= target:
      break
    time.sleep(0.05)
  time.sleep(rng.uniform(0.0, 0.5))
  assert process.poll() is None, open(log_path).read()[-3000:]  # killed, not finished
  process.send_signal(signal.SIGKILL)
  process.wait()
  log.close()


@pytest.mark.reliability
def test_kill_9_at_random_points_loses_nothing(tmp_path, figure):
  seed = int(os.environ.get('RELIABILITY_SEED', time.time()))
  print(f'kill points drawn with RELIABILITY_SEED={seed}')
  rng = random.Random(seed)
  figure('kill -9 / resume cycles survived', cases=CYCLES)
  workdir, reference_dir = str(tmp_path / 'killed'), str(tmp_path / 'reference')
  # The reference trains beside the killed run, in its own process, as the resume points come.
  reference = subprocess.Popen(
      [sys.executable, '-c', REFERENCE.format(root=ROOT, workdir=reference_dir)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})
  resumed, lost, newest = [], [], 0
  for cycle in range(CYCLES + 1):
    log_path = str(tmp_path / f'segment{cycle}.log')
    if cycle < CYCLES:
      kill_at_random_point(workdir, log_path, newest, rng)
    else:  # the last segment runs to the end, from the step before a damaged newest one
      damaged = complete_steps(workdir)[-1]
      damage(pathlib.Path(workdir) / 'checkpoints', damaged, 'values_set_to_1e30')
      newest = complete_steps(workdir)[-2]
      process, log = start(workdir, log_path)
      assert process.wait(timeout=600) == 0, open(log_path).read()[-3000:]
      log.close()
    if cycle:
      resumed.append(resumed_from(log_path))
      lost.append(newest - resumed[-1])
      reference.stdin.write(f'{resumed[-1]}\n')
      reference.stdin.flush()
    newest = complete_steps(workdir)[-1]
  reference.stdin.write(f'{STEPS}\n')
  reference.stdin.close()
  clean = [ast.literal_eval(line.split(' ', 1)[1]) for line in reference.stdout
           if line.startswith('SUMMARY ')]
  assert reference.wait(timeout=600) == 0 and len(clean) == CYCLES + 1
  figure('steps lost beyond the last checkpoint', cases=0, value=sum(lost))
  print(f'resumed from env steps {resumed}; steps lost {lost}')
  assert lost == [0] * CYCLES

  final_log = str(tmp_path / f'segment{CYCLES}.log')
  output = open(final_log).read()
  figure('corrupt checkpoints recovered')  # the report's case, in a real run
  assert f'Checkpoint step {damaged} in' in output and 'damaged' in output
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', f'{damaged}.corrupt'))
  assert 'FloatingPointError' not in output
  killed = summary_of(final_log)
  for key in ('env_step', 'updates', 'train_credit', 'episodes', 'param_checksum'):
    assert killed[key] == clean[-1][key], (key, killed, clean[-1])
  rows, reference_rows = logger.read_metrics(workdir), logger.read_metrics(reference_dir)
  steps = [row['step'] for row in rows]
  assert steps == sorted(steps)  # the history only moves forward
  size = lambda rows: [r['run/replay_size'] for r in rows if 'run/replay_size' in r]  # noqa: E731
  # Each start adds the envs' first observations: those of the starts the checkpoints kept.
  assert size(rows)[-1] == size(reference_rows)[-1] == STEPS + 4 * (len(set(resumed)) + 1)
  episodes = lambda rows: [(r['step'], r['episode/return']) for r in rows  # noqa: E731
                           if 'episode/return' in r]
  assert episodes(rows) == episodes(reference_rows)
  assert any(name.startswith('metrics.jsonl.cut-') for name in os.listdir(workdir))
