"""Aggregates over tasks and seeds and their bootstrap intervals, against hand-computed values."""

import numpy as np
import pytest

from dreamerjax.analysis import aggregates


def test_interquartile_mean_by_hand():
  assert aggregates.interquartile_mean(np.arange(1, 9)) == 4.5            # mean of 3, 4, 5, 6
  assert aggregates.interquartile_mean(np.arange(10)) == 4.5              # cuts 2 each end
  assert aggregates.interquartile_mean([9.0, -3.0, 1.0]) == pytest.approx(7.0 / 3)  # cuts none
  assert aggregates.interquartile_mean([100.0, 0.0, 1.0, 2.0]) == 1.5     # cuts 1 each end


def test_aggregates_by_hand():
  per_task = [np.array([0.5, 1.0]), np.array([0.25, 2.0]), np.array([0.0, 0.2])]
  assert aggregates.aggregate_mean(per_task) == pytest.approx((0.75 + 1.125 + 0.1) / 3)
  assert aggregates.aggregate_median(per_task) == pytest.approx(0.75)
  # Pooled sorted: 0, 0.2, 0.25, 0.5, 1.0, 2.0; cut 1 each end.
  assert aggregates.aggregate_iqm(per_task) == pytest.approx((0.2 + 0.25 + 0.5 + 1.0) / 4)


def test_bootstrap_collapses_with_one_seed_per_task():
  per_task = [np.array([0.3]), np.array([1.7]), np.array([0.9]), np.array([4.0])]
  for statistic in aggregates.STATISTICS.values():
    point = float(statistic(per_task))
    assert aggregates.stratified_bootstrap(per_task, statistic, reps=200) == pytest.approx(
        (point, point))


def test_bootstrap_interval_by_hand():
  # Task A has seeds [0, 1]: a resample's mean is 0, 0.5 or 1 (prob. 1/4, 1/2, 1/4); task B
  # has one seed [5]. So the mean over tasks is 2.5, 2.75 or 3.0 and the 95% percentile
  # interval is [2.5, 3.0]; the IQM pools 3 scores (no cut): 5/3, 2 or 7/3.
  per_task = [np.array([0.0, 1.0]), np.array([5.0])]
  mean = aggregates.stratified_bootstrap(per_task, aggregates.aggregate_mean, reps=4000, seed=1)
  assert mean == pytest.approx((2.5, 3.0))
  iqm = aggregates.stratified_bootstrap(per_task, aggregates.aggregate_iqm, reps=4000, seed=1)
  assert iqm == pytest.approx((5.0 / 3, 7.0 / 3))
  assert aggregates.stratified_bootstrap(per_task, aggregates.aggregate_mean, 50, 7) == \
      aggregates.stratified_bootstrap(per_task, aggregates.aggregate_mean, 50, 7)


def test_bootstrap_resamples_within_tasks():
  # Strata never mix: task B's seeds are all 10, so every resample's mean over tasks is
  # (A's resampled mean + 10) / 2, within [5, 7] around the point estimate 6.
  per_task = [np.array([0.0, 2.0, 4.0]), np.array([10.0, 10.0])]
  low, high = aggregates.stratified_bootstrap(per_task, aggregates.aggregate_mean, reps=2000)
  assert 5.0 <= low < 6.0 < high <= 7.0
