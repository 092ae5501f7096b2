"""The memory table and plot of a sweep folder of experiments/memory.py runs (docs/memory.md).

Rows are the memory span (L of CueRecall-L, k of RepeatPrevious-k), columns the arms; per cell:

* success: the score of each seed (`tables.score_run` on `eval/success`: its mean over the
  evaluations in the last 10% of the budget), as the mean over seeds with a 95% percentile
  bootstrap interval (seeds resampled, `aggregates.stratified_bootstrap`);
* probe: the accuracy of what the task asks to recall (the cue; the suit k cards back) from the
  world model's filtered features at delay L or k, mean over seeds (`memory_probe.probe_run`, read
  from `<run>/memory_probe.json`; '-' if not probed);
* steps to 90%: the median over seeds of the first env step whose evaluation reached 0.9 success
  ('never' when most seeds did not; the count that did in brackets);
* s/update: wall seconds per update of all seeds together over the training part of the run
  (acting between updates included), from the `run/` rows;
* minutes: the run's wall minutes, or for a run that has not reached its budget the minutes
  projected at the budget from its rate since training began (marked `~`).

The world-model-only tier (`memory_probe.world_model_tier`, one `memory_world_model.json` per
folder, one per seed) gets a table per task family, seeds aggregated: recall accuracy at delays
0, L/2 and L and the reward choice per dynamics, and a plot of both against L.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os

import numpy as np

from dreamerjax.analysis import aggregates, memory_probe, tables
from dreamerjax.data import memory
from dreamerjax.run import configs, sweeps

SUCCESS_KEY = 'eval/success'
THRESHOLD = 0.9
EXPERIMENT = os.path.join(sweeps.REPOSITORY_ROOT, 'experiments', 'memory.py')
# What a policy or probe that knows nothing scores, per task family: a coin flip on the cue; one
# of four suits.
CHANCE = {'CueRecall': 0.5, 'RepeatPrevious': 0.25}


def experiment():
  """experiments/memory.py as a module (its ARMS and `arm_of`)."""
  return configs.load_file(EXPERIMENT)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One arm at one span: per-seed scores and what the columns show."""
  family: str
  span: int
  arm: str
  budget: int
  scores: tuple[float, ...]
  reached: tuple[int | None, ...]
  probe: tuple[float, ...] = ()
  seconds_per_update: float | None = None
  seconds: float | None = None
  projected: bool = False

  @property
  def mean(self) -> float | None:
    return float(np.mean(self.scores)) if self.scores else None


def bootstrap_interval(scores, reps: int = aggregates.BOOTSTRAP_REPS, seed: int = 0,
                       confidence: float = aggregates.CONFIDENCE) -> tuple[float, float]:
  """95% percentile bootstrap interval of the mean of `scores` (seeds resampled)."""
  return aggregates.stratified_bootstrap([np.asarray(scores, np.float64)],
                                         aggregates.aggregate_mean, reps, seed, confidence)


def steps_to_threshold(reached) -> tuple[int | None, int]:
  """Median over seeds of the step each first reached the threshold (None: never, counted as
  infinitely late), None when that median is never; and how many seeds reached it."""
  values = [math.inf if step is None else float(step) for step in reached]
  if not values:
    return None, 0
  median = float(np.median(values))
  return (None if math.isinf(median) else int(median)), sum(step is not None for step in reached)


def run_seconds(rows: list[dict]) -> list[dict]:
  """The rows that carry `run/seconds`, with it made cumulative over resumes: a resumed process
  counts from 0 again, so each drop adds the seconds the run had when it was resumed."""
  marks, offset, last = [], 0.0, 0.0
  for row in rows:
    if 'run/seconds' not in row:
      continue
    if row['run/seconds'] < last:
      offset += last
    last = row['run/seconds']
    marks.append({**row, 'run/seconds': row['run/seconds'] + offset})
  return marks


def seconds_per_update(rows: list[dict]) -> float | None:
  """Wall seconds per update between the first `run/` row with updates and the last one."""
  marks = [(row['run/seconds'], row['run/updates']) for row in run_seconds(rows)
           if row.get('run/updates')]
  if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
    return None
  return (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1])


def projected_seconds(rows: list[dict], budget: int) -> float | None:
  """Wall seconds of a run at env step `budget`: the `run/seconds` of its first row there, or
  an extrapolation at the rate (seconds per env step) between the first row with updates (the
  second row, for runs without updates) and the last row."""
  marks = run_seconds(rows)
  if not marks:
    return None
  done = [row for row in marks if row['step'] >= budget]
  if done:
    return float(done[0]['run/seconds'])
  start = next((row for row in marks if row.get('run/updates')), marks[min(1, len(marks) - 1)])
  last = marks[-1]
  if last['step'] <= start['step']:
    return None
  rate = (last['run/seconds'] - start['run/seconds']) / (last['step'] - start['step'])
  return float(last['run/seconds'] + (budget - last['step']) * rate)


def family_of(task: str) -> str:
  """`CueRecall` for `jax:CueRecall-30` and `CueRecallOracle-30`, `RepeatPrevious` for
  `RepeatPrevious-8`."""
  return task.removeprefix('jax:').rpartition('-')[0].replace('Oracle', '')


def read_cell(workdir: str, arm_of=None) -> Cell:
  """The cell of one run folder (every seed of it)."""
  with open(os.path.join(workdir, tables.CONFIG_FILE), encoding='utf-8') as f:
    config = json.load(f)
  arm = (arm_of or experiment().arm_of)(config)
  task = config['task'].removeprefix('jax:')
  family = family_of(task)
  scored = tables.score_run(workdir, key=SUCCESS_KEY, threshold=THRESHOLD)
  histories = tables.seed_histories(workdir)
  probe = ()
  path = os.path.join(workdir, memory_probe.PROBE_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      found = json.load(f)
    probe = tuple(seed[str(found['span'])] for seed in found['accuracy']
                  if seed.get(str(found['span'])) is not None)
  rows = histories[0][1] if histories else []
  budget = int(config['run']['steps'])
  return Cell(family, memory.span(task), arm, budget,
              tuple(run.score for run in scored if run.score is not None),
              tuple(run.reached_step for run in scored), probe, seconds_per_update(rows),
              projected_seconds(rows, budget), not all(run.finished for run in scored))


def collect(root: str) -> list[Cell]:
  """The cells of every run folder under `root`."""
  arm_of = experiment().arm_of
  return [read_cell(folder, arm_of) for folder in tables.run_folders(root)]


def _cell_text(cell: Cell | None) -> list[str]:
  if cell is None:
    return ['', '', '', '', '']
  if cell.scores:
    low, high = bootstrap_interval(cell.scores)
    success = (f'{cell.mean:.2f} [{low:.2f}, {high:.2f}] ({len(cell.scores)})')
  else:
    success = '-'
  probe = f'{np.mean(cell.probe):.2f}' if cell.probe else '-'
  median, count = steps_to_threshold(cell.reached)
  steps = (f'{median:,}' if median is not None else 'never') + f' ({count}/{len(cell.reached)})'
  seconds = f'{cell.seconds_per_update:.2f}' if cell.seconds_per_update else '-'
  minutes = ('-' if cell.seconds is None else
             f'{"~" if cell.projected else ""}{cell.seconds / 60:.1f}')
  return [success, probe, steps, seconds, minutes]


def markdown(cells: list[Cell], tiers: list[dict] | None = None, root: str = '') -> str:
  """The tables as Markdown: one per task family (rows: span; per arm four columns)."""
  arms_order = experiment().ARMS
  lines = [f'# Memory experiment: {root}', '',
           f'success: `{SUCCESS_KEY}` over the last 10% of the budget, mean over seeds '
           f'[95% bootstrap interval, {aggregates.BOOTSTRAP_REPS} resamples] (seeds); probe: '
           'accuracy of the cue (CueRecall; 0.5 is chance) or of the suit k cards back '
           '(RepeatPrevious; 0.25) from the filtered features at delay L or k; steps to 90%: '
           'median over seeds of the first evaluation with success >= 0.9 (seeds that got there); '
           's/update: wall seconds per update of all seeds, acting included; minutes: wall minutes '
           'of the run (~: projected at the budget from an unfinished run).', '']
  for family in sorted({cell.family for cell in cells}):
    members = [cell for cell in cells if cell.family == family]
    arms = [arm for arm in arms_order if any(cell.arm == arm for cell in members)]
    by_key = {(cell.span, cell.arm): cell for cell in members}
    header = ['L'] + [f'{arm}: {column}' for arm in arms
                      for column in ('success', 'probe', 'steps to 90%', 's/update',
                                     'minutes')]
    lines += [f'## {family}', '', '| ' + ' | '.join(header) + ' |',
              '|' + '---|' * len(header)]
    for span in sorted({cell.span for cell in members}):
      row = [str(span)]
      for arm in arms:
        row += _cell_text(by_key.get((span, arm)))
      lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
  if tiers:
    lines += tier_markdown(tiers)
  return '\n'.join(lines)


def read_tiers(root: str) -> list[dict]:
  """Every `memory_world_model.json` in `root` or its subfolders."""
  found = []
  for folder in [root] + [os.path.join(root, name) for name in sorted(os.listdir(root))]:
    path = os.path.join(folder, memory_probe.TIER_FILE)
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        found.append(json.load(f))
  return found


TIER_ORDER = ('rssm', 'transformer (context 8)', 'transformer (context L+1)', 'ssm',
              'oracle (rssm, cue in every step)')


def tier_label(result: dict) -> str:
  """The dynamics of a tier result, named as its arm is: a context of L + 1 is one series."""
  if 'Oracle' in result.get('task', ''):
    return f'oracle ({result["dynamics"]}, cue in every step)'
  context = result.get('context')
  if not context:
    return result['dynamics']
  return f'{result["dynamics"]} (context {"L+1" if context == result["span"] + 1 else context})'


def _tier_rank(label: str) -> tuple:
  return (TIER_ORDER.index(label) if label in TIER_ORDER else len(TIER_ORDER), label)


def tier_family(result: dict) -> str:
  """The task family of a tier result (results written without a task were CueRecall's)."""
  return family_of(result.get('task', 'CueRecall-0'))


def tier_groups(tiers: list[dict]) -> dict[tuple[str, int, int], list[dict]]:
  """Tier results of one task family grouped by (dynamics label, span, updates): one entry per
  seed."""
  grouped = collections.defaultdict(list)
  for result in tiers:
    grouped[(tier_label(result), result['span'], result['updates'])].append(result)
  return grouped


def by_family(items, family_of_item) -> dict[str, list]:
  """`items` split by task family, families in name order."""
  split = collections.defaultdict(list)
  for item in items:
    split[family_of_item(item)].append(item)
  return dict(sorted(split.items()))


def tier_accuracy(results: list[dict]) -> dict[int, list[float]]:
  """Delay -> the accuracy of each seed that probed it."""
  by_delay = collections.defaultdict(list)
  for result in results:
    for delay, value in result['accuracy'].items():
      if value is not None:
        by_delay[int(delay)].append(value)
  return dict(sorted(by_delay.items()))


def _spread(values: list[float]) -> str:
  """`mean [lowest, highest]` of per-seed values (the mean alone for one seed; '-' for none)."""
  if not values:
    return '-'
  spread = f' [{min(values):.2f}, {max(values):.2f}]' if len(values) > 1 else ''
  return f'{np.mean(values):.2f}{spread}'


def reward_choices(results: list[dict]) -> list[float]:
  """The imagined reward choice of each seed that measured it."""
  return [result['reward_accuracy']['imagined'] for result in results
          if (result.get('reward_accuracy') or {}).get('imagined') is not None]


TIER_TEXT = {
    'CueRecall': 'Cue accuracy of a probe on the filtered features at delay d (0.5 is chance); '
                 'reward choice: the share of query steps where one imagined step values the '
                 'answer that names the cue above the other',
    'RepeatPrevious': 'Accuracy of a probe on the filtered features naming the suit of the card '
                      'seen d steps before (0.25 is chance); reward choice: the share of scored '
                      'steps where one imagined step values the suit k cards back above the '
                      'other three'}


def tier_markdown(tiers: list[dict]) -> list[str]:
  """The world-model-only tier, one table per task family: recall accuracy at 0, L/2 and L and
  the reward choice per dynamics (mean over seeds, with the lowest and highest seed when there
  are several), and its cost."""
  lines = []
  for family, results_of_family in by_family(tiers, tier_family).items():
    chance = CHANCE.get(family, 0.5)
    lines += [f'## World model only (random-policy data): {family}', '',
              f'{TIER_TEXT.get(family, TIER_TEXT["CueRecall"])} '
              f'(`memory_probe.reward_choice_accuracy`; {chance:g} is chance, what the actor can '
              'learn from); mean over seeds [lowest, highest seed].', '',
              '| dynamics | L | updates | seeds | accuracy at d = 0 / L/2 / L | reward choice | '
              's/update | total s |',
              '|---|---|---|---|---|---|---|---|']
    grouped = tier_groups(results_of_family)
    for label, span, updates in sorted(grouped, key=lambda key: (_tier_rank(key[0]), *key[1:])):
      results = grouped[(label, span, updates)]
      cells = [_spread(values) for values in tier_accuracy(results).values()]
      choice = _spread(reward_choices(results))
      seconds = np.mean([result['seconds_per_update'] for result in results])
      total = np.mean([result['total_seconds'] for result in results])
      lines.append(f'| {label} | {span} | {updates} | {len(results)} | {" / ".join(cells)} | '
                   f'{choice} | {seconds:.3f} | {total:.0f} |')
    lines.append('')
  return lines


def _span_axes(families: list[str], columns: int = 1):
  """A figure with a row of `columns` axes per task family, for quantities against the memory
  span L or k (log scale), each with the family's chance level dotted; axes keyed by (family,
  column)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5 * columns + 4, 4 * len(families)), dpi=100)
  FigureCanvasAgg(fig)
  axes = {}
  for row, family in enumerate(families):
    for column in range(columns):
      ax = fig.add_subplot(len(families), columns, row * columns + column + 1)
      ax.set_xscale('log')
      ax.set_xlabel(f'memory span {"k" if family == "RepeatPrevious" else "L"} (steps), '
                    f'{family}')
      ax.axhline(CHANCE.get(family, 0.5), color='gray', lw=0.8, ls=':')
      ax.grid(alpha=0.3)
      axes[(family, column)] = ax
  return fig, axes


def _save(fig, axes: dict, path: str) -> str:
  """Each axes' spans as its ticks, the legend beside the last axes of each row, then `fig` as a
  PNG at `path`."""
  last_column = max(column for _, column in axes)  # every row has the same columns
  for (_, column), ax in axes.items():
    spans = sorted({float(x) for line in ax.get_lines() if not line.get_label().startswith('_')
                    for x in line.get_xdata()})  # the series; not the chance line
    if spans:
      ax.set_xticks(spans, [f'{x:g}' for x in spans])
      ax.minorticks_off()
    if column == last_column and ax.get_legend_handles_labels()[0]:
      ax.legend(loc='upper left', bbox_to_anchor=(1.02, 1.0), fontsize='small')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format='png')
  return path


# The tier plot's columns: what is drawn against L and how it is read from a group's results.
TIER_PANELS = (('probe accuracy at delay L', lambda results, span:
                tier_accuracy(results).get(span, [])),
               ('reward choice (imagined)', lambda results, span: reward_choices(results)))


def tier_plot(tiers: list[dict], path: str) -> str:
  """World-model tier against L per dynamics and update count, one row per task family: the
  recall probe at delay L and the reward choice (each seed a dot, the mean a line; dashed:
  update counts other than the most common), PNG."""
  families = by_family(tiers, tier_family)
  fig, axes = _span_axes(list(families), len(TIER_PANELS))
  for family, results in families.items():
    grouped = tier_groups(results)
    usual = collections.Counter(updates for _, _, updates in grouped).most_common(1)[0][0]
    series = sorted({(label, updates) for label, _, updates in grouped},
                    key=lambda item: (item[1] != usual, _tier_rank(item[0]), item[1]))
    labels = sorted({label for label, _ in series}, key=_tier_rank)
    for column, (name, values_of) in enumerate(TIER_PANELS):
      ax = axes[(family, column)]
      for label, updates in series:
        color = f'C{labels.index(label)}'
        points = []
        for span in sorted(span for key, span, count in grouped
                           if (key, count) == (label, updates)):
          values = values_of(grouped[(label, span, updates)], span)
          if values:
            points.append((span, float(np.mean(values))))
            ax.scatter([span] * len(values), values, color=color, s=12, alpha=0.5)
        if points:
          spans, means = zip(*points, strict=True)
          ax.plot(spans, means, 'o-' if updates == usual else 's--', color=color,
                  label=f'{label}, {updates} updates')
      ax.set_ylabel(name)
      ax.set_ylim(CHANCE.get(family, 0.5) - 0.2, 1.05)
      ax.set_title(f'World model only, random-policy data: {family}', fontsize='medium')
  return _save(fig, axes, path)


def plot(cells: list[Cell], path: str) -> str:
  """Success against L (or k) per arm, one axes per task family (mean over seeds, bootstrap
  interval as error bars), PNG."""
  families = by_family([cell for cell in cells if cell.scores], lambda cell: cell.family)
  fig, axes = _span_axes(list(families))
  arms = [arm for arm in experiment().ARMS if any(cell.arm == arm for cell in cells)]
  for family, members in families.items():
    for index, arm in enumerate(arms):
      points = sorted((cell.span, cell.mean, *bootstrap_interval(cell.scores))
                      for cell in members if cell.arm == arm)
      if not points:
        continue
      spans, means, lows, highs = (np.asarray(column) for column in zip(*points, strict=True))
      axes[(family, 0)].errorbar(spans, means, yerr=[means - lows, highs - means], fmt='o-',
                                 capsize=3, color=f'C{index}', label=arm)
    axes[(family, 0)].set_ylabel(f'success ({SUCCESS_KEY})')
    axes[(family, 0)].set_ylim(-0.05, 1.05)
  return _save(fig, axes, path)


def write(root: str, out: str | None = None) -> dict:
  """Writes `<out>.md`, `<out>.png` and, with tier results, `<out>_world_model.png` (default
  `<root>/memory_table`); returns the paths."""
  out = out or os.path.join(root, 'memory_table')
  cells, tiers = collect(root), read_tiers(root)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(f'{out}.md', 'w', encoding='utf-8') as f:
    f.write(markdown(cells, tiers, os.path.abspath(root)))
  paths = {'markdown': f'{out}.md'}
  if any(cell.scores for cell in cells):
    paths['plot'] = plot(cells, f'{out}.png')
  if tiers:
    paths['world_model_plot'] = tier_plot(tiers, f'{out}_world_model.png')
  return paths
