"""Published reference scores and curves bundled in ``dreamerjax/reference/`` (see its README).

Our runs name tasks by envpool id (``Pong-v5``, ``Jamesbond-v5``, ``CartpoleBalance-v1``). The
reference files use the game name in the Atari CSV (``Pong``, ``Jamesbond``), the snake-case task
name in the DMC summary (``cartpole_balance``) and a suite prefix in the curve files
(``atari_pong``, ``dmc_cartpole_balance``). :func:`reference_name` and :func:`envpool_id` map
between the two; :func:`family` says which suite a task belongs to.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.resources
import io
import json
import math
import re

import numpy as np

ATARI_SCORES = 'atari100k_scores.csv'
DMC_SUMMARY = 'dmc_proprio_dreamerv3_2024_summary.csv'
CURVE_FILES = {
    'atari': 'atari100k_dreamerv3_2024_curves.json.gz',
    'dmc': 'dmc_proprio_dreamerv3_2024_curves.json.gz',
    'dmc_vision': 'dmc_vision_dreamerv3_2024_curves.json.gz',
}
# The Atari curves count frames (about 400k for the 100k-step budget); our `step` counts agent
# steps, each of which is 4 frames (frame skip 4 in dreamerjax.data.envs).
ATARI_FRAME_SKIP = 4
CURVE_LABEL = 'DreamerV3 (2024 code)'

# Baselines shown next to our Atari scores: label -> column of ATARI_SCORES.
ATARI_BASELINES = {
    'IRIS': 'iris',
    'STORM': 'storm_json',
    'DIAMOND': 'diamond',
    'DreamerV3 (2024 code)': 'dreamerv3_2024_computed',
}
DMC_BASELINE = 'DreamerV3 (2024 code)'

# Source and caveat text, worded as in the reference README.
HUMAN_NORMALIZED = '`(score - random) / (human - random)`'
ATARI_SOURCE = (
    '`atari100k_scores.csv`: Atari 100k per-game scores: random and human reference scores (the '
    '`atari57_gamer` set), and the mean over seeds of IRIS, STORM, DIAMOND, Delta-IRIS, DreamerV3, '
    'SimPLe, EfficientZero. Source: per-seed result files published in each method\'s repository '
    '(eloialonso/iris `results/data`, weipu-zhang/STORM `results/storm.json`, eloialonso/diamond '
    '`results/data/DIAMOND.json`, vmicheli/delta-iris `results/atari.json`, danijar/dreamerv3 '
    '`scores/atari100k-dreamerv3.json.gz`).')
DMC_SOURCE = (
    '`dmc_proprio_dreamerv3_2024_summary.csv`: mean over seeds of the DMC proprio curves, in '
    'windows ending at 10k ... 500k on the file\'s x axis, computed from '
    '`dmc_proprio_dreamerv3_2024_curves.json.gz` (DreamerV3 DMC proprioceptive curves, 18 tasks '
    'x 5 seeds). Source: danijar/dreamerv3 `scores/` (2024 version of the code).')
CURVES_SOURCE = (
    'DreamerV3 training curves per task and seed (`atari100k_dreamerv3_2024_curves.json.gz`, '
    '`dmc_proprio_dreamerv3_2024_curves.json.gz`, `dmc_vision_dreamerv3_2024_curves.json.gz`). '
    'Source: danijar/dreamerv3 `scores/` (2024 version of the code).')
CAVEAT_STORM = (
    'The STORM file holds Freeway = 0 for every seed while its paper reports a non-zero Freeway '
    'score; its paper\'s aggregate (mean 1.267, median 0.584) does not follow from the file.')
CAVEAT_DREAMERV3_VERSION = (
    'DreamerV3\'s 2023 and 2024 code versions differ (model size, train ratio, precision); the '
    '2024 file gives Pong about -5 while the 2023 paper reports 18. Name the version any '
    'comparison uses.')
CAVEAT_DMC_X_AXIS = (
    'The x axis of the DreamerV3 DMC files counts environment steps as that code counts them; '
    'check its action-repeat convention before comparing curves step by step.')
ATARI_PROTOCOL = (
    'Atari 100k protocol used by these papers: 100k agent steps = 400k frames (frame skip 4), '
    '64x64 RGB, no sticky actions, up to 30 no-op starts; scores are episode returns near the end '
    'of the budget.')


def read_bytes(name: str) -> bytes:
    """Returns the bytes of the bundled reference file ``name``."""
    return importlib.resources.files('dreamerjax').joinpath('reference', name).read_bytes()


def _read_csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_bytes(name).decode('utf-8'))))


def snake_case(name: str) -> str:
    """``'BallInCupCatch'`` -> ``'ball_in_cup_catch'``, ``'UpNDown'`` -> ``'up_n_down'``."""
    return re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()


def camel_case(name: str) -> str:
    """``'ball_in_cup_catch'`` -> ``'BallInCupCatch'`` (inverse of :func:`snake_case`)."""
    return ''.join(part[:1].upper() + part[1:] for part in name.split('_'))


@functools.cache
def atari_scores() -> dict[str, dict[str, float]]:
    """Atari CSV as ``{game: {column: score}}`` (game as in the CSV, e.g. ``'Jamesbond'``)."""
    return {row['game']: {k: float(v) for k, v in row.items() if k != 'game'}
            for row in _read_csv(ATARI_SCORES)}


@functools.cache
def dmc_summary() -> dict[str, dict[int, float]]:
    """DMC proprio summary as ``{task: {budget_steps: DreamerV3 mean score}}``."""
    table = {}
    for row in _read_csv(DMC_SUMMARY):
        budgets = {}
        for column, value in row.items():
            match = re.fullmatch(r'score_at_(\d+)k', column)
            if match:
                budgets[int(match.group(1)) * 1000] = float(value)
        table[row['task']] = budgets
    return table


@functools.cache
def curves(kind: str) -> tuple[dict, ...]:
    """Records (``task``, ``method``, ``seed``, ``xs``, ``ys``) of ``CURVE_FILES[kind]``."""
    return tuple(json.loads(gzip.decompress(read_bytes(CURVE_FILES[kind])).decode('utf-8')))


@functools.cache
def _dmc_names() -> frozenset[str]:
    names = set(dmc_summary())
    for kind in ('dmc', 'dmc_vision'):
        names.update(record['task'].removeprefix('dmc_') for record in curves(kind))
    return frozenset(names)


def atari_tasks() -> list[str]:
    """The 26 Atari 100k games as envpool ids, in the CSV's order."""
    return [f'{game}-v5' for game in atari_scores()]


def dmc_proprio_tasks() -> list[str]:
    """The 18 DreamerV3 DMC proprio tasks as envpool ids, in the summary CSV's order."""
    return [f'{camel_case(task)}-v1' for task in dmc_summary()]


def family(task: str) -> str:
    """``'atari'`` (a game of the Atari CSV), ``'dmc'`` (a DMC task of the reference files) or
    ``'other'`` for an envpool id."""
    base, _, version = task.rpartition('-')
    if version == 'v5' and base in atari_scores():
        return 'atari'
    if version == 'v1' and snake_case(base) in _dmc_names():
        return 'dmc'
    return 'other'


def reference_name(task: str) -> str | None:
    """Envpool id -> name in the reference files: ``'Pong-v5'`` -> ``'Pong'`` (CSV game),
    ``'CartpoleBalance-v1'`` -> ``'cartpole_balance'``; None for other tasks."""
    kind = family(task)
    base = task.rpartition('-')[0]
    if kind == 'atari':
        return base
    if kind == 'dmc':
        return snake_case(base)
    return None


def envpool_id(name: str) -> str:
    """Reference name -> envpool id: ``'atari_up_n_down'`` and ``'UpNDown'`` -> ``'UpNDown-v5'``,
    ``'dmc_ball_in_cup_catch'`` and ``'ball_in_cup_catch'`` -> ``'BallInCupCatch-v1'``."""
    if name.startswith('atari_'):
        return camel_case(name.removeprefix('atari_')) + '-v5'
    if name in atari_scores():
        return f'{name}-v5'
    return camel_case(name.removeprefix('dmc_')) + '-v1'


def human_normalized(task: str, score: float) -> float:
    """Human-normalized score ``(score - random) / (human - random)`` of an Atari task."""
    row = atari_scores()[reference_name(task)]
    return (score - row['random']) / (row['human'] - row['random'])


def atari_baseline(task: str, label: str) -> float:
    """Published mean score of baseline ``label`` (a key of ATARI_BASELINES) on an Atari task."""
    return atari_scores()[reference_name(task)][ATARI_BASELINES[label]]


def nearest_budget(steps: float, budgets) -> int:
    """The budget in ``budgets`` nearest to ``steps`` on a log scale (the summary's columns
    10k, 20k, 50k, ... are roughly geometric)."""
    return min(budgets, key=lambda budget: (abs(math.log(budget / max(steps, 1.0))), budget))


def dmc_baseline(task: str, steps: float) -> tuple[float, int] | None:
    """DreamerV3 (2024 code) summary score of a DMC task at the column nearest to ``steps``, and
    that column's budget; None if the task is not in the summary."""
    row = dmc_summary().get(reference_name(task) or '')
    if not row:
        return None
    budget = nearest_budget(steps, row)
    return row[budget], budget


def reference_curves(task: str, from_pixels: bool = False) -> list[tuple[int, np.ndarray,
                                                                          np.ndarray]]:
    """Published DreamerV3 curves of ``task`` as ``[(seed, steps, returns)]``, steps in our unit
    (agent steps for Atari: the file's frames / 4; DMC x axis as published). Empty if none."""
    kind = family(task)
    if kind == 'atari':
        name, file_kind, scale = 'atari_' + snake_case(reference_name(task)), 'atari', (
            1.0 / ATARI_FRAME_SKIP)
    elif kind == 'dmc':
        name, scale = 'dmc_' + reference_name(task), 1.0
        file_kind = 'dmc_vision' if from_pixels else 'dmc'
    else:
        return []
    return [(int(record['seed']), np.asarray(record['xs'], np.float64) * scale,
             np.asarray(record['ys'], np.float64))
            for record in curves(file_kind) if record['task'] == name]
