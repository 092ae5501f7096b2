"""Pass/fail of finished runs against learning thresholds (`scripts/learning_check.py`).

A run passes when its first evaluation at or above `first_return` came within `first_minutes`
of training (the run's own `run/seconds`), and the mean of its last `last_evals` evaluations is
at least `last_return`: a result counts only if it holds at the end of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dreamerjax.analysis.tables import drop_superseded, first_reach
from dreamerjax.run.logger import read_metrics

EVAL_KEY = 'eval/episode/return'


@dataclasses.dataclass(frozen=True)
class Thresholds:
  first_return: float = 400.0
  first_minutes: float = 15.0
  last_return: float = 450.0
  last_evals: int = 3


@dataclasses.dataclass(frozen=True)
class RunCheck:
  name: str
  seed: int
  budget: int
  last_step: int
  evals: tuple[tuple[int, float], ...]
  first_step: int | None       # first evaluation >= first_return
  first_minutes: float | None  # training minutes by then
  last_mean: float | None      # mean of the last `last_evals` evaluations
  passed_first: bool
  passed_last: bool
  finished: bool

  @property
  def passed(self) -> bool:
    return self.finished and self.passed_first and self.passed_last


def check_run(workdir: str, thresholds: Thresholds, budget: int | None = None) -> RunCheck:
  """Reads `workdir`'s config.json and metrics.jsonl and checks them against `thresholds`;
  with `budget`, as the run stood at that env step (a run later extended past it)."""
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  path = os.path.join(workdir, 'metrics.jsonl')
  rows = drop_superseded(read_metrics(path)) if os.path.exists(path) else []
  if budget is not None:
    rows = [row for row in rows if row['step'] <= budget]
  evals = tuple((int(row['step']), float(row[EVAL_KEY])) for row in rows if EVAL_KEY in row)
  first_step, seconds = first_reach(rows, EVAL_KEY, thresholds.first_return)
  minutes = None if seconds is None else seconds / 60.0
  last = [value for _, value in evals[-thresholds.last_evals:]]
  last_mean = float(np.mean(last)) if len(last) == thresholds.last_evals else None
  budget = int(config['run']['steps']) if budget is None else budget
  last_step = int(max((row['step'] for row in rows), default=0))
  return RunCheck(
      name=os.path.basename(os.path.normpath(workdir)), seed=int(config.get('seed', 0)),
      budget=budget, last_step=last_step, evals=evals, first_step=first_step,
      first_minutes=minutes,
      passed_first=minutes is not None and minutes <= thresholds.first_minutes,
      passed_last=last_mean is not None and last_mean >= thresholds.last_return,
      last_mean=last_mean, finished=last_step >= budget)


def _cell(value, digits=1) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def markdown(checks: list[RunCheck], thresholds: Thresholds) -> str:
  """A table, one row per run, and the verdict."""
  t = thresholds
  lines = [f'| run | seed | env steps | first eval >= {t.first_return:g} (step, min) | '
           f'last {t.last_evals} evals | mean | pass |', '|---|---|---|---|---|---|---|']
  for c in checks:
    last = ' / '.join(f'{value:.0f}' for _, value in c.evals[-t.last_evals:]) or '-'
    first = '-' if c.first_step is None else f'{c.first_step} ({_cell(c.first_minutes)})'
    lines.append(f'| {c.name} | {c.seed} | {c.last_step}/{c.budget} | {first} | {last} | '
                 f'{_cell(c.last_mean)} | {"PASS" if c.passed else "FAIL"} |')
  verdict = 'PASS' if checks and all(c.passed for c in checks) else 'FAIL'
  lines += ['', f'{verdict}: {sum(c.passed for c in checks)}/{len(checks)} runs pass (first '
            f'evaluation >= {t.first_return:g} within {t.first_minutes:g} min of training, mean '
            f'of the last {t.last_evals} evaluations >= {t.last_return:g}, run finished).']
  return '\n'.join(lines) + '\n'


def plot(checks: list[RunCheck], thresholds: Thresholds, out: str, title: str = '') -> None:
  """Every run's evaluation curve in one figure, with the two thresholds."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(figsize=(7, 4))
  for c in checks:
    if c.evals:
      steps, values = zip(*c.evals, strict=True)
      axes.plot(steps, values, marker='o', label=f'{c.name} (last {thresholds.last_evals}: '
                f'{_cell(c.last_mean, 0)})')
  for value, style in ((thresholds.first_return, ':'), (thresholds.last_return, '--')):
    axes.axhline(value, color='gray', linestyle=style, linewidth=1)
  axes.set_xlabel('env steps')
  axes.set_ylabel('evaluation return')
  axes.set_title(title)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out, dpi=120)
  plt.close(figure)


def write_report(checks: list[RunCheck], thresholds: Thresholds, out: str,
                 title: str = '') -> bool:
  """Writes `table.md`, `summary.json` and `eval_curves.png` under `out`; True if all pass."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'table.md'), 'w', encoding='utf-8') as f:
    f.write(markdown(checks, thresholds))
  summary = dict(thresholds=dataclasses.asdict(thresholds),
                 passed=bool(checks) and all(c.passed for c in checks),
                 runs=[{**dataclasses.asdict(c), 'passed': c.passed} for c in checks])
  with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=1)
  plot(checks, thresholds, os.path.join(out, 'eval_curves.png'), title)
  return summary['passed']
