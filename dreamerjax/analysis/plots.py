"""Learning curves of a sweep folder: one panel per task, each method's mean over seeds with a
band (min-max or ± one standard deviation), next to the published DreamerV3 (2024 code) curves
where the reference data has the task.

Episode returns are averaged per seed in equal-width bins of env steps (bins with no episode are
left out), then across seeds. Atari reference curves are converted from frames to agent steps;
DMC reference curves keep the file's x axis (see dreamerjax/reference/README.md).
"""

from __future__ import annotations

import collections
import math
import os

import numpy as np

from dreamerjax.analysis import published, tables
from dreamerjax.run.logger import RETURN_KEY

BANDS = ('minmax', 'std')


def binned_means(steps, values, edges) -> np.ndarray:
    """Mean of ``values`` whose step lies in ``(edges[i], edges[i + 1]]`` for each bin (the first
    bin also takes ``edges[0]``); NaN for empty bins."""
    steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    inside = (steps >= edges[0]) & (steps <= edges[-1])
    steps, values = steps[inside], values[inside]
    bins = np.clip(np.searchsorted(edges, steps, side='left') - 1, 0, len(edges) - 2)
    sums = np.bincount(bins, weights=values, minlength=len(edges) - 1)
    counts = np.bincount(bins, minlength=len(edges) - 1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def seed_band(curves: np.ndarray, band: str = 'minmax') -> tuple[np.ndarray, ...]:
    """``(mean, low, high)`` over seeds (axis 0) of binned curves, ignoring NaN; the band is the
    min and max, or the mean ± the standard deviation (``band='std'``)."""
    if band not in BANDS:
        raise ValueError(f'band must be one of {BANDS}, got {band!r}')
    curves = np.asarray(curves, np.float64)
    present = ~np.all(np.isnan(curves), axis=0)
    mean = np.full(curves.shape[1], np.nan)
    low, high = mean.copy(), mean.copy()
    if present.any():
        subset = curves[:, present]
        mean[present] = np.nanmean(subset, axis=0)
        if band == 'minmax':
            low[present], high[present] = np.nanmin(subset, axis=0), np.nanmax(subset, axis=0)
        else:
            spread = np.nanstd(subset, axis=0)
            low[present], high[present] = mean[present] - spread, mean[present] + spread
    return mean, low, high


def _run_curves(root: str, key: str) -> dict:
    """``{task: {method: [(steps, values, budget, from_pixels)]}}`` of every run of ``root``."""
    found: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for folder in tables.run_folders(root):
        runs = tables.score_run(folder, key=key)
        for run, (_, rows) in zip(runs, tables.seed_histories(folder), strict=True):
            points = [(row['step'], row[key]) for row in rows if row.get(key) is not None]
            steps, values = (np.asarray(points, np.float64).T if points else (np.zeros(0),) * 2)
            found[run.task][run.method].append((steps, values, run.budget, run.from_pixels))
    return found


def _draw(axes, centers, curves, band, color, label):
    mean, low, high = seed_band(curves, band)
    shown = ~np.isnan(mean)
    if not shown.any():
        return
    # Markers where points are few (sparse evaluations), so that a single point still shows.
    axes.plot(centers[shown], mean[shown], color=color, label=label, linewidth=1.5,
              marker='o' if shown.sum() <= 20 else None, markersize=3)
    axes.fill_between(centers[shown], low[shown], high[shown], color=color, alpha=0.2,
                      linewidth=0)


def plot_learning_curves(root: str, out: str | None = None, key: str = RETURN_KEY,
                         band: str = 'minmax', bins: int = 40, reference: bool = True,
                         columns: int = 4) -> str:
    """Writes a PNG with one panel per task of the sweep folder ``root``; returns its path
    (default ``<root>/curves.png``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = _run_curves(root, key)
    if not runs:
        raise FileNotFoundError(f'no run folders (with {tables.CONFIG_FILE}) under {root}')
    out = out or os.path.join(root, 'curves.png')
    tasks = sorted(runs)
    columns = max(1, min(columns, len(tasks)))
    rows = math.ceil(len(tasks) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.3), dpi=100, layout='constrained')
    FigureCanvasAgg(figure)
    methods = sorted({method for by_method in runs.values() for method in by_method})
    colors = {method: f'C{i}' for i, method in enumerate(methods)}
    notes = set()
    for index, task in enumerate(tasks):
        axes = figure.add_subplot(rows, columns, index + 1)
        budget = max(curve[2] for curves in runs[task].values() for curve in curves)
        edges = np.linspace(0.0, budget, bins + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        for method, curves in sorted(runs[task].items()):
            binned = np.stack([binned_means(steps, values, edges)
                               for steps, values, _, _ in curves])
            _draw(axes, centers, binned, band, colors[method], f'{method} (ours, n={len(curves)})')
        from_pixels = any(curve[3] for curves in runs[task].values() for curve in curves)
        found = published.reference_curves(task, from_pixels) if reference else []
        if found:
            binned = np.stack([binned_means(steps, values, edges) for _, steps, values in found])
            _draw(axes, centers, binned, band, 'black',
                  f'{published.CURVE_LABEL} (n={len(found)})')
            notes.add(published.family(task))
        axes.set_title(task, fontsize='medium')
        axes.set_xlabel('env steps')
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
        axes.legend(loc='best', fontsize='x-small')
    band_text = 'min-max' if band == 'minmax' else '± 1 std'
    text = f'Mean over seeds, band {band_text}; {key} averaged in {bins} equal bins of env steps.'
    if 'atari' in notes:
        text += ' Atari reference x axis: frames / 4.'
    if 'dmc' in notes:
        text += ' DMC reference x axis as published (action repeat not converted).'
    figure.suptitle(text, fontsize='small')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.savefig(out, format='png')
    return out
