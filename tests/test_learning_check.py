"""The learning check's verdicts on constructed runs."""

import json
import os
import subprocess
import sys

from dreamerjax.analysis import learning_check
from tests.conftest import ROOT


def write_run(workdir, evals, seconds_per_step=0.02, steps=40_000, seed=0, resumed_from=None):
  """A run folder: config.json and metrics.jsonl with evaluations `{step: return}` and log rows
  carrying `run/seconds`; `resumed_from` appends rows that a resumed run wrote again."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'seed': seed, 'task': 'CartPole-v1', 'run': {'steps': steps}}, f)
  rows = []
  for step in sorted(set(range(2_000, steps + 1, 2_000)) | set(evals)):
    rows.append({'step': step, 'run/seconds': step * seconds_per_step})
    if step in evals:
      rows.append({'step': step, 'eval/episode/return': evals[step]})
  if resumed_from is not None:  # rows after a checkpoint, written again with other values
    rows += [{'step': s, 'eval/episode/return': 500.0} for s in sorted(evals) if s >= resumed_from]
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(''.join(json.dumps(row) + '\n' for row in rows))


def test_a_run_that_collapses_fails_and_one_that_holds_passes(tmp_path):
  holds = {s: r for s, r in zip(range(5_000, 40_001, 5_000), [300, 420, 480, 500, 470, 500, 490,
                                                              480], strict=True)}
  collapses = {**holds, 30_000: 140.0, 35_000: 120.0, 40_000: 137.0}
  write_run(tmp_path / 'holds', holds)
  write_run(tmp_path / 'collapses', collapses)
  thresholds = learning_check.Thresholds()
  good = learning_check.check_run(str(tmp_path / 'holds'), thresholds)
  assert good.passed and good.first_step == 10_000 and good.last_mean == (500 + 490 + 480) / 3
  assert abs(good.first_minutes - 10_000 * 0.02 / 60) < 1e-9
  bad = learning_check.check_run(str(tmp_path / 'collapses'), thresholds)
  assert bad.passed_first and not bad.passed_last and not bad.passed


def test_slow_unfinished_and_resumed_runs(tmp_path):
  evals = {s: 480.0 for s in range(5_000, 40_001, 5_000)}
  write_run(tmp_path / 'slow', evals, seconds_per_step=0.5)  # first 480 after 83 minutes
  check = learning_check.check_run(str(tmp_path / 'slow'), learning_check.Thresholds())
  assert check.passed_last and not check.passed_first and not check.passed
  write_run(tmp_path / 'short', {5_000: 480.0}, steps=40_000)
  os.remove(tmp_path / 'short' / 'metrics.jsonl')
  check = learning_check.check_run(str(tmp_path / 'short'), learning_check.Thresholds())
  assert not check.finished and check.last_mean is None and not check.passed
  # Rows a resumed run wrote again replace the superseded ones (the last writer wins).
  low = {s: 100.0 for s in range(5_000, 40_001, 5_000)}
  write_run(tmp_path / 'resumed', low, resumed_from=30_000)
  check = learning_check.check_run(str(tmp_path / 'resumed'), learning_check.Thresholds())
  assert [v for _, v in check.evals[-3:]] == [500.0, 500.0, 500.0]
  # A run extended past a budget is checked as it stood there.
  write_run(tmp_path / 'extended', {**evals, 45_000: 100.0, 50_000: 90.0}, steps=50_000)
  at_budget = learning_check.check_run(str(tmp_path / 'extended'), learning_check.Thresholds(),
                                       budget=40_000)
  assert at_budget.passed and at_budget.last_step == 40_000 and at_budget.budget == 40_000
  assert not learning_check.check_run(str(tmp_path / 'extended'),
                                      learning_check.Thresholds()).passed


def test_script_reports_and_exits_by_verdict(tmp_path):
  evals = {s: 490.0 for s in range(5_000, 40_001, 5_000)}
  for seed in (0, 1):
    write_run(tmp_path / f'seed{seed}', evals, seed=seed)
  command = [sys.executable, os.path.join(ROOT, 'scripts', 'learning_check.py'), '--only_check',
             f'--root={tmp_path}', '--seeds=0,1', f'--out={tmp_path / "out"}']
  done = subprocess.run(command, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert 'PASS: 2/2' in done.stdout
  for name in ('table.md', 'summary.json', 'eval_curves.png'):
    assert (tmp_path / 'out' / name).exists()
  done = subprocess.run(command + ['--last_return=495'], capture_output=True, text=True)
  assert done.returncode == 1 and 'FAIL: 0/2' in done.stdout
  done = subprocess.run(command + ['--seeds=0,7'], capture_output=True, text=True)
  assert done.returncode != 0 and 'seed7' in done.stderr
