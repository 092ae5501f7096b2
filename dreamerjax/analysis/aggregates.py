"""Aggregates of scores over tasks and seeds, and their stratified bootstrap intervals, after
Agarwal et al. 2021 ("rliable"). A task's scores are an array over seeds, which may have leading
batch axes: shape (..., seeds)."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95


def interquartile_mean(values) -> np.ndarray:
  """Mean of the middle 50% along the last axis: sorted, ``floor(n / 4)`` values cut from each
  end (as ``scipy.stats.trim_mean(x, 0.25)``)."""
  values = np.sort(np.asarray(values, np.float64), axis=-1)
  count = values.shape[-1]
  cut = int(0.25 * count)
  return values[..., cut:count - cut].mean(axis=-1)


def aggregate_mean(per_task: list[np.ndarray]) -> np.ndarray:
  """Mean over tasks of the per-task mean over seeds."""
  return np.mean(np.stack([np.mean(x, axis=-1) for x in per_task], axis=-1), axis=-1)


def aggregate_median(per_task: list[np.ndarray]) -> np.ndarray:
  """Median over tasks of the per-task mean over seeds."""
  return np.median(np.stack([np.mean(x, axis=-1) for x in per_task], axis=-1), axis=-1)


def aggregate_iqm(per_task: list[np.ndarray]) -> np.ndarray:
  """Interquartile mean of all run x task scores pooled together."""
  return interquartile_mean(np.concatenate([np.asarray(x, np.float64) for x in per_task],
                                           axis=-1))


STATISTICS = {'mean': aggregate_mean, 'median': aggregate_median, 'IQM': aggregate_iqm}


def stratified_bootstrap(per_task: list, statistic, reps: int = BOOTSTRAP_REPS, seed: int = 0,
                         confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Percentile interval of ``statistic`` over ``reps`` resamples that draw each task's seeds
  with replacement, independently per task (as many draws as the task has seeds)."""
  rng = np.random.default_rng(seed)
  resampled = []
  for scores in per_task:
    scores = np.asarray(scores, np.float64)
    resampled.append(scores[rng.integers(0, len(scores), size=(reps, len(scores)))])
  values = statistic(resampled)
  tail = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(values, [tail, 100.0 - tail])
  return float(low), float(high)
