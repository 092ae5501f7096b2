"""Result tables of a sweep folder: per-task scores over seeds, aggregates, published baselines.

Protocol (stated in every table): the score of a run is the mean ``episode/return`` over the
episodes that ended in the last ``final_fraction`` (default 10%) of its budget, i.e. at
``step > (1 - final_fraction) * run.steps``; a task's score is the mean and sample standard
deviation over seeds. Atari scores are also human-normalized, ``(score - random) / (human -
random)``. Aggregates (module `aggregates`) follow Agarwal et al. 2021 ("rliable"): mean and
median over tasks of the per-task mean, and the interquartile mean (IQM: mean of the middle 50%
of all run x task scores), each with a 95% stratified bootstrap percentile interval (seeds
resampled with replacement within each task). Atari aggregates use human-normalized scores, DMC
aggregates raw returns (all tasks score in [0, 1000]); other tasks get no aggregate.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os

import numpy as np

from dreamerjax.analysis import aggregates, published
from dreamerjax.run.logger import METRICS_FILE, RETURN_KEY, read_metrics

CONFIG_FILE = 'config.json'
FINAL_FRACTION = 0.1
FAMILY_TITLES = {'atari': 'Atari 100k', 'dmc': 'DMC', 'other': 'Other tasks'}


@dataclasses.dataclass(frozen=True)
class RunScore:
    """One run folder: what it ran, how far it got, and its score (None when no episode ended
    in the scoring window)."""
    name: str
    workdir: str
    task: str
    method: str
    seed: int
    budget: int
    last_step: int
    finished: bool
    score: float | None
    episodes: int
    from_pixels: bool
    best: float | None = None              # the highest value of the key over the run
    reached_step: int | None = None        # first step with key >= threshold (None: never)
    reached_seconds: float | None = None   # wall-clock seconds of training at that step


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """Scores of one method on one task over its seeds."""
    family: str
    task: str
    method: str
    budget: int
    runs: int
    finished: int
    seeds: tuple[int, ...]
    scores: tuple[float, ...]
    from_pixels: bool = False

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.scores)) if self.scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (ddof=1); None with fewer than 2 seeds."""
        return float(np.std(self.scores, ddof=1)) if len(self.scores) > 1 else None

    @property
    def normalized(self) -> tuple[float, ...] | None:
        """Human-normalized scores of an Atari task, else None."""
        if self.family != 'atari':
            return None
        return tuple(published.human_normalized(self.task, score) for score in self.scores)


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """An aggregate statistic of one method over the tasks of a family; ``low``/``high`` is the
    bootstrap interval (None for published baselines, which have only per-task means)."""
    family: str
    method: str
    published: bool
    statistic: str
    value: float | None
    low: float | None
    high: float | None
    tasks: int
    runs: int


@dataclasses.dataclass(frozen=True)
class Table:
    """Everything a result table shows."""
    root: str
    key: str
    final_fraction: float
    bootstrap_reps: int
    bootstrap_seed: int
    include_partial: bool
    threshold: float | None
    runs: tuple[RunScore, ...]
    rows: tuple[TaskRow, ...]
    aggregates: tuple[Aggregate, ...]


# ---------------------------------------------------------------------------------------------
# Reading runs.


def method_label(config: dict) -> str:
    """``'dreamerv3 (12m)'``: the variant and model size of a run's config (``'dreamerv3 (12m,
    pixels)'`` for DMC from pixels)."""
    pixels = ', pixels' if config.get('env', {}).get('from_pixels') else ''
    return f'{config.get("variant", "?")} ({config.get("size", "?")}{pixels})'


def drop_superseded(rows: list[dict]) -> list[dict]:
    """Rows of metrics.jsonl without those a resumed run wrote again: when ``step`` goes back to
    ``s`` (the run restarted from an older checkpoint), earlier rows with ``step >= s`` are
    dropped (the last writer wins)."""
    kept: list[dict] = []
    largest = -math.inf
    for row in rows:
        step = row.get('step')
        if step is None:
            continue
        if step < largest:
            kept = [old for old in kept if old['step'] < step]
            largest = max((old['step'] for old in kept), default=-math.inf)
        kept.append(row)
        largest = max(largest, step)
    return kept


def final_score(rows: list[dict], budget: float, final_fraction: float = FINAL_FRACTION,
                key: str = RETURN_KEY) -> tuple[float | None, int]:
    """Mean of ``key`` over rows with ``step > (1 - final_fraction) * budget``, and how many rows
    that is; ``(None, 0)`` if none."""
    if not 0.0 < final_fraction <= 1.0:
        raise ValueError(f'final_fraction must be in (0, 1], got {final_fraction}')
    start = (1.0 - final_fraction) * budget
    values = [row[key] for row in rows if row.get(key) is not None and row['step'] > start]
    return (float(np.mean(values)) if values else None), len(values)


def first_reach(rows: list[dict], key: str, threshold: float) -> tuple[int | None, float | None]:
    """The first step at which ``key >= threshold``, and the training seconds by then: the
    ``run/seconds`` of the first log row at or after that step (an upper bound; None if none)."""
    step = next((row['step'] for row in rows if row.get(key) is not None
                 and row[key] >= threshold), None)
    if step is None:
        return None, None
    # The first such row in the file: a resumed run restarts its clock, so later rows may
    # carry fewer seconds.
    seconds = next((row['run/seconds'] for row in rows
                    if 'run/seconds' in row and row['step'] >= step), None)
    return int(step), (None if seconds is None else float(seconds))


def seed_histories(workdir: str) -> list[tuple[int, list[dict]]]:
    """``[(seed, rows)]`` of a run folder, rows as ``drop_superseded`` leaves them: one entry for a
    run of one seed; for a run that trained ``num_seeds = K`` agents side by side, one per seed
    ``config.seed + k``, with the rows tagged ``"seed": k`` and the untagged ones (the ``run/``
    rows every seed shares)."""
    with open(os.path.join(workdir, CONFIG_FILE), encoding='utf-8') as f:
        config = json.load(f)
    rows = []
    if os.path.exists(os.path.join(workdir, METRICS_FILE)):
        rows = drop_superseded(read_metrics(workdir))
    seed, count = int(config.get('seed', 0)), int(config.get('num_seeds', 1))
    if count == 1:
        return [(seed, rows)]
    return [(seed + k, [row for row in rows if row.get('seed', k) == k]) for k in range(count)]


def score_run(workdir: str, final_fraction: float = FINAL_FRACTION,
              key: str = RETURN_KEY, threshold: float | None = None) -> list[RunScore]:
    """Reads a run folder (config.json and metrics.jsonl) and scores each seed it trained (one
    unless ``num_seeds > 1``); with a ``threshold``, also when ``key`` first reached it."""
    with open(os.path.join(workdir, CONFIG_FILE), encoding='utf-8') as f:
        config = json.load(f)
    budget = int(config['run']['steps'])
    name = os.path.basename(os.path.normpath(workdir))
    histories = seed_histories(workdir)
    scores = []
    for seed, rows in histories:
        last_step = int(max((row['step'] for row in rows), default=0))
        score, episodes = final_score(rows, budget, final_fraction, key)
        values = [row[key] for row in rows if row.get(key) is not None]
        reached = first_reach(rows, key, threshold) if threshold is not None else (None, None)
        scores.append(RunScore(
            name=name if len(histories) == 1 else f'{name}/seed{seed}', workdir=workdir,
            task=config['task'], method=method_label(config), seed=seed, budget=budget,
            last_step=last_step, finished=last_step >= budget, score=score, episodes=episodes,
            from_pixels=bool(config.get('env', {}).get('from_pixels', False)),
            best=float(max(values)) if values else None, reached_step=reached[0],
            reached_seconds=reached[1]))
    return scores


def run_folders(root: str) -> list[str]:
    """The run folders of a sweep folder: its subfolders holding a config.json, sorted."""
    return sorted(os.path.join(root, name) for name in os.listdir(root)
                  if os.path.isfile(os.path.join(root, name, CONFIG_FILE)))


def collect(root: str, final_fraction: float = FINAL_FRACTION,
            key: str = RETURN_KEY, threshold: float | None = None) -> list[RunScore]:
    """Scores every run (every seed of every run folder) of ``root``, sorted by method, task and
    seed."""
    runs = [run for folder in run_folders(root)
            for run in score_run(folder, final_fraction, key, threshold)]
    return sorted(runs, key=lambda run: (run.method, run.task, run.seed, run.name))


def _our_aggregates(family: str, method: str, rows: list[TaskRow], reps: int,
                    seed: int) -> list[Aggregate]:
    rows = [row for row in rows if row.scores]
    if not rows:
        return []
    per_task = [np.asarray(row.normalized if family == 'atari' else row.scores) for row in rows]
    runs = sum(len(row.scores) for row in rows)
    result = []
    for name, statistic in aggregates.STATISTICS.items():
        low, high = aggregates.stratified_bootstrap(per_task, statistic, reps, seed)
        result.append(Aggregate(family, method, False, name, float(statistic(per_task)), low,
                                high, len(rows), runs))
    return result


def _published_aggregates(family: str, tasks: list[str], budget: int,
                          from_pixels: bool) -> list[Aggregate]:
    """Mean and median of published per-task means over ``tasks`` (no IQM: it needs per-seed
    scores, which the reference data does not hold)."""
    columns: dict[str, list[float]] = collections.defaultdict(list)
    for task in tasks:
        for label, value in baselines(family, task, budget, from_pixels).items():
            if value is not None:
                columns[label].append(published.human_normalized(task, value)
                                      if family == 'atari' else value)
    result = []
    for label, values in columns.items():
        if len(values) != len(tasks):
            continue
        per_task = [np.asarray([value]) for value in values]
        for name in ('mean', 'median'):
            point = float(aggregates.STATISTICS[name](per_task))
            result.append(Aggregate(family, label, True, name, point, None, None, len(tasks), 0))
        result.append(Aggregate(family, label, True, 'IQM', None, None, None, len(tasks), 0))
    return result


def baselines(family: str, task: str, budget: int,
              from_pixels: bool = False) -> dict[str, float | None]:
    """Published scores shown next to a task: the Atari CSV's methods, or DreamerV3's DMC proprio
    summary at the column nearest to ``budget`` (None for runs from pixels: no summary)."""
    if family == 'atari':
        return {label: published.atari_baseline(task, label) for label in
                published.ATARI_BASELINES}
    if family == 'dmc':
        found = None if from_pixels else published.dmc_baseline(task, budget)
        return {published.DMC_BASELINE: found[0] if found else None}
    return {}


# ---------------------------------------------------------------------------------------------
# Building and writing.


def build_table(root: str, final_fraction: float = FINAL_FRACTION,
                bootstrap_reps: int = aggregates.BOOTSTRAP_REPS, bootstrap_seed: int = 0,
                include_partial: bool = False, key: str = RETURN_KEY,
                threshold: float | None = None) -> Table:
    """Scores every run of a sweep folder and computes per-task rows and aggregates. Only
    finished runs count unless ``include_partial``. With a ``threshold``, the runs section also
    says when each run first reached it."""
    runs = collect(root, final_fraction, key, threshold)
    groups: dict[tuple[str, str], list[RunScore]] = collections.defaultdict(list)
    for run in runs:
        groups[(run.method, run.task)].append(run)
    rows = []
    for (method, task), members in sorted(groups.items()):
        counted = [run for run in members if (run.finished or include_partial)
                   and run.score is not None]
        rows.append(TaskRow(
            family=published.family(task), task=task, method=method,
            budget=max(run.budget for run in members), runs=len(members),
            finished=sum(run.finished for run in members),
            seeds=tuple(run.seed for run in counted),
            scores=tuple(run.score for run in counted),
            from_pixels=any(run.from_pixels for run in members)))
    summaries = []
    for family in ('atari', 'dmc'):
        family_rows = [row for row in rows if row.family == family]
        methods = sorted({row.method for row in family_rows})
        for method in methods:
            method_rows = [row for row in family_rows if row.method == method]
            summaries += _our_aggregates(family, method, method_rows, bootstrap_reps,
                                         bootstrap_seed)
        if family_rows:
            tasks = sorted({row.task for row in family_rows if row.scores})
            if tasks:
                budget = max(row.budget for row in family_rows)
                from_pixels = any(row.from_pixels for row in family_rows)
                summaries += _published_aggregates(family, tasks, budget, from_pixels)
    return Table(root=os.path.normpath(root), key=key, final_fraction=final_fraction,
                 bootstrap_reps=bootstrap_reps, bootstrap_seed=bootstrap_seed,
                 include_partial=include_partial, threshold=threshold, runs=tuple(runs),
                 rows=tuple(rows), aggregates=tuple(summaries))


# ---------------------------------------------------------------------------------------------
# Formatting.


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return '-'
    if digits == 1 and abs(value) >= 1000:
        return f'{value:,.0f}'
    return f'{value:.{digits}f}'


def _score_cell(row: TaskRow | None) -> str:
    if row is None:
        return ''
    if not row.scores:
        return f'- (0 of {row.runs})'
    spread = f' ± {_number(row.std)}' if row.std is not None else ''
    return f'{_number(row.mean)}{spread} ({len(row.scores)})'


def _protocol(table: Table) -> list[str]:
    percent = f'{100 * table.final_fraction:g}%'
    which = ('every run (finished or not)' if table.include_partial else
             'finished runs only (those whose metrics reached `run.steps`)')
    return [
        f'Protocol: the score of a run is the mean `{table.key}` over the episodes that ended in '
        f'the last {percent} of its budget of env steps (`step > {1 - table.final_fraction:g} x '
        f'run.steps`; env steps are summed over parallel envs and count agent steps, so 100k = '
        f'400k Atari frames). Per task: mean ± sample standard deviation over seeds, (n) = seeds '
        f'scored; {which}.',
        '',
        f'Atari: human-normalized score (HNS) {published.HUMAN_NORMALIZED}, random and human '
        f'from the `atari57_gamer` set. Aggregates as in Agarwal et al. 2021 (rliable): mean and '
        f'median over tasks of the per-task mean, IQM = mean of the middle 50% of all run x task '
        f'scores; [95% stratified bootstrap percentile interval: seeds resampled within each '
        f'task, {table.bootstrap_reps} resamples, seed {table.bootstrap_seed}]. DMC aggregates '
        f'use raw returns.',
    ]


def _family_section(table: Table, family: str) -> list[str]:
    rows = [row for row in table.rows if row.family == family]
    if not rows:
        return []
    methods = sorted({row.method for row in rows})
    tasks = sorted({row.task for row in rows})
    by_key = {(row.method, row.task): row for row in rows}
    budget = max(row.budget for row in rows)
    labels = list(baselines(family, tasks[0], budget))
    header = ['task']
    for method in methods:
        header += [method] + (['HNS'] if family == 'atari' else [])
    header += labels + (['random', 'human'] if family == 'atari' else [])
    lines = [f'## {FAMILY_TITLES[family]}: per task', '']
    if family == 'dmc':
        found = next(filter(None, (published.dmc_baseline(task, budget) for task in tasks)), None)
        if any(row.from_pixels for row in rows):
            lines += [f'{published.DMC_BASELINE}: no published summary for DMC from pixels '
                      f'(see the curves); the proprio summary is not shown.', '']
        elif found:
            lines += [f'{published.DMC_BASELINE}: the summary column at {found[1]:,} steps, '
                      f'nearest (log scale) to our budget of {budget:,} env steps; that file '
                      f'counts steps as its code does (see caveats).', '']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for task in tasks:
        cells = [task]
        for method in methods:
            row = by_key.get((method, task))
            cells.append(_score_cell(row))
            if family == 'atari':
                cells.append(_number(float(np.mean(row.normalized)), 3)
                             if row and row.scores else '-')
        members = [row for row in rows if row.task == task]
        scores = baselines(family, task, max(row.budget for row in members),
                           any(row.from_pixels for row in members))
        cells += [_number(value) for value in scores.values()]
        if family == 'atari':
            reference = published.atari_scores()[published.reference_name(task)]
            cells += [_number(reference['random']), _number(reference['human'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines + [''] + _aggregate_section(table, family)


def _aggregate_section(table: Table, family: str) -> list[str]:
    summaries = [item for item in table.aggregates if item.family == family]
    if not summaries:
        return []
    unit = 'human-normalized' if family == 'atari' else 'raw return'
    lines = [f'## {FAMILY_TITLES[family]}: aggregates ({unit})', '',
             '| method | tasks | runs | mean [95% CI] | median [95% CI] | IQM [95% CI] |',
             '|---|---|---|---|---|---|']
    digits = 3 if family == 'atari' else 1
    grouped: dict[tuple[str, bool], dict[str, Aggregate]] = collections.defaultdict(dict)
    for item in summaries:
        grouped[(item.method, item.published)][item.statistic] = item
    for (method, is_published), items in grouped.items():
        first = next(iter(items.values()))
        cells = [f'{method} (published per-task means)' if is_published else f'ours: {method}',
                 str(first.tasks), str(first.runs) if not is_published else '-']
        for name in aggregates.STATISTICS:
            item = items.get(name)
            if item is None or item.value is None:
                cells.append('n/a')
            elif item.low is None:
                cells.append(_number(item.value, digits))
            else:
                cells.append(f'{_number(item.value, digits)} [{_number(item.low, digits)}, '
                             f'{_number(item.high, digits)}]')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines + ['', 'Published rows: mean and median over the same tasks of the per-task means '
                    'in the reference data; their IQM needs per-seed scores, which it does not '
                    'hold (n/a).', '']


def _runs_section(table: Table) -> list[str]:
    header = '| run | task | method | seed | step / budget | episodes scored | score | best |'
    rule = '|---|---|---|---|---|---|---|---|'
    if table.threshold is not None:
        header += f' first >= {_number(table.threshold)}: step (minutes) |'
        rule += '---|'
    lines = ['## Runs', '', header, rule]
    for run in table.runs:
        state = '' if run.finished else ' (unfinished)'
        line = (f'| {run.name} | {run.task} | {run.method} | {run.seed} | '
                f'{run.last_step:,} / {run.budget:,}{state} | {run.episodes} | '
                f'{_number(run.score)} | {_number(run.best)} |')
        if table.threshold is not None:
            minutes = ('' if run.reached_seconds is None
                       else f' ({run.reached_seconds / 60:.1f})')
            line += (' never |' if run.reached_step is None
                     else f' {run.reached_step:,}{minutes} |')
        lines.append(line)
    return lines + ['']


def _sources(table: Table) -> list[str]:
    families = {row.family for row in table.rows}
    lines = ['## Sources and caveats', '']
    if 'atari' in families:
        lines += [f'- {published.ATARI_SOURCE}', f'- {published.CAVEAT_STORM}',
                  f'- {published.CAVEAT_DREAMERV3_VERSION}', f'- {published.ATARI_PROTOCOL}']
    if 'dmc' in families:
        lines += [f'- {published.DMC_SOURCE}', f'- {published.CAVEAT_DMC_X_AXIS}']
        if 'atari' not in families:
            lines.append(f'- {published.CAVEAT_DREAMERV3_VERSION}')
    if families <= {'other'}:
        lines.append('- No published reference for these tasks.')
    return lines + ['']


def markdown(table: Table) -> str:
    """The table as Markdown: protocol, per-family task tables and aggregates, runs, sources."""
    lines = [f'# Results: {table.root}', ''] + _protocol(table) + ['']
    for family in ('atari', 'dmc', 'other'):
        lines += _family_section(table, family)
    lines += _runs_section(table) + _sources(table)
    return '\n'.join(lines)


def task_rows(table: Table) -> tuple[list[str], list[list]]:
    """CSV header and rows: one per method x task with scores, HNS and published baselines."""
    labels = list(dict.fromkeys([*published.ATARI_BASELINES, published.DMC_BASELINE]))
    header = ['family', 'task', 'method', 'budget', 'runs', 'finished', 'seeds_scored',
              'score_mean', 'score_std', 'scores', 'hns_mean', 'random', 'human',
              'reference_budget', *labels]
    lines = []
    for row in table.rows:
        found = baselines(row.family, row.task, row.budget, row.from_pixels)
        reference = (published.atari_scores()[published.reference_name(row.task)]
                     if row.family == 'atari' else {})
        dmc = (published.dmc_baseline(row.task, row.budget)
               if row.family == 'dmc' and not row.from_pixels else None)
        lines.append([
            row.family, row.task, row.method, row.budget, row.runs, row.finished,
            len(row.scores), row.mean, row.std, ';'.join(f'{x:g}' for x in row.scores),
            float(np.mean(row.normalized)) if row.normalized else None,
            reference.get('random'), reference.get('human'), dmc[1] if dmc else None,
            *[found.get(label) for label in labels]])
    return header, lines


def aggregate_rows(table: Table) -> tuple[list[str], list[list]]:
    """CSV header and rows: one per family x method x statistic."""
    header = ['family', 'method', 'published', 'statistic', 'value', 'low', 'high', 'tasks',
              'runs']
    return header, [[item.family, item.method, item.published, item.statistic, item.value,
                      item.low, item.high, item.tasks, item.runs] for item in table.aggregates]


def write_table(table: Table, out: str) -> list[str]:
    """Writes ``<out>.md``, ``<out>.csv`` (one row per method x task) and
    ``<out>_aggregates.csv``; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    paths = [f'{out}.md', f'{out}.csv', f'{out}_aggregates.csv']
    with open(paths[0], 'w', encoding='utf-8') as f:
        f.write(markdown(table))
    for path, (header, lines) in zip(paths[1:], (task_rows(table), aggregate_rows(table)),
                                     strict=True):
        with open(path, 'w', encoding='utf-8', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(lines)
    return paths
