"""Run logging: console progress, ``metrics.jsonl``, TensorBoard scalars, GIF videos, plots.

Layout inside a run's workdir::

    metrics.jsonl        one JSON object per line: {"step": 1000, "wm/loss": 0.5, ...}; runs of
                         several seeds add "seed": k to each per-seed row
    tensorboard/         tensorboardX event files
    videos/<name>_<step>.gif
    plots/<key>.png      written by :func:`plot_curve`

``metrics.jsonl`` is appended to, so a resumed run continues the same file: first its rows above
the step the run goes on from (written after the checkpoint it restored) move to a side file,
``metrics.jsonl.cut-<step>-<time>``, so that the history only moves forward; TensorBoard hides
those steps too (`purge_step`). A line cut short by a crash goes with them, and is skipped by
:func:`read_metrics`. Only the process with ``enabled=True`` (JAX process 0) writes anything.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import logging as pylogging
import math
import os
import time
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
from absl import logging as absl_logging

from dreamerjax.run import errors

METRICS_FILE = 'metrics.jsonl'
RETURN_KEY = 'episode/return'
EVAL_RETURN_KEY = 'eval/episode/return'
SUCCESS_KEY = 'eval/success'  # envs with a success(return) score (the memory suite)


def eval_metrics(returns: Any, success: Any = None) -> dict[str, float]:
  """The metrics row of an evaluation: mean and std of the episode `returns` (NaN entries, for
  episodes that did not end, are left out), and with the env's `success(return)` function the
  mean success (`eval/success`)."""
  returns = np.asarray(returns, np.float64)
  row = {EVAL_RETURN_KEY: float(np.nanmean(returns)),
         f'{EVAL_RETURN_KEY}_std': float(np.nanstd(returns))}
  ended = returns[np.isfinite(returns)]
  if success is not None and ended.size:
    row[SUCCESS_KEY] = float(np.mean([success(value) for value in ended]))
  return row


def _to_float(key: str, value: Any) -> float | None:
    """Converts a scalar (python, numpy or jax) to a python float; non-finite -> None."""
    try:
        x = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError) as e:
        raise TypeError(f'metric {key!r} is not a scalar number: {value!r}') from e
    return x if math.isfinite(x) else None


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0.0))))


def _drop_partial_last_line(path: str) -> None:
    """Truncates ``path`` after its last newline (removes a line cut short by a crash)."""
    if not os.path.exists(path):
        return
    with open(path, 'rb+') as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b'\n':
            return
        # Scan back for the last newline.
        pos, block = size, 4096
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b'\n')
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        f.truncate(keep)


@contextlib.contextmanager
def _storage_faults(doing: str) -> Iterator[None]:
    """Turns a full or failing disk met while `doing` into `errors.StorageError`."""
    try:
        yield
    except OSError as error:
        fault = errors.storage_error(error, doing)
        if fault is None:
            raise
        raise fault from error


def _write_lines(path: str, lines: list[str]) -> None:
    """Writes `lines` to `path` and syncs it to disk."""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))
        f.flush()
        os.fsync(f.fileno())


def cut_history(workdir: str, step: int) -> tuple[int, str | None]:
    """Cuts metrics.jsonl back to the rows at or below `step` (where a resumed run goes on
    from), so its history only moves forward. The rows cut (and a line cut short by a crash) go
    to ``metrics.jsonl.cut-<step>-<time>`` beside it, which is written before metrics.jsonl is
    replaced: a crash in between leaves rows in both, never in neither.

    Returns:
        (rows cut, the side file) or (0, None) if nothing was above `step`.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0, None
    with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    lines = text.split('\n')
    keep, cut = [], []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row_step = json.loads(line).get('step') if index < len(lines) - 1 else None
        except (json.JSONDecodeError, AttributeError):
            row_step = None
        ok = isinstance(row_step, (int, float)) and not isinstance(row_step, bool)
        (keep if ok and row_step <= step else cut).append(line)
    if not cut:
        return 0, None
    side = base = f'{path}.cut-{int(step)}-{time.strftime("%Y%m%dT%H%M%S")}'
    for suffix in itertools.count(1):
        if not os.path.exists(side):
            break
        side = f'{base}.{suffix}'
    _write_lines(side, cut)
    _write_lines(path + '.tmp', keep)
    os.replace(path + '.tmp', path)
    return len(cut), side


_event_files = itertools.count()


class _EventFile:
    """TensorBoard events written in the caller's thread.

    tensorboardX's `SummaryWriter` writes from a thread: when the disk fills, that thread dies
    with a traceback and the next writes block on its full queue. Here a failed write raises in
    the loop. ``purge_step`` does what `SummaryWriter(purge_step=...)` does: TensorBoard hides
    the events of earlier files at that step and later ones (those a resumed run writes again).
    """

    def __init__(self, logdir: str, purge_step: int | None = None, flush_secs: float = 30.0):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2

        self._event_pb2 = event_pb2
        os.makedirs(logdir, exist_ok=True)
        # Two files opened in one second would share a name (and the second empty the first).
        self._writer = EventsWriter(os.path.join(logdir, 'events'),
                                    f'.{os.getpid()}.{next(_event_files)}')
        if purge_step is not None:
            self._writer.write_event(event_pb2.Event(step=purge_step,
                                                     file_version='brain.Event:2'))
            self._writer.write_event(event_pb2.Event(step=purge_step, session_log=(
                event_pb2.SessionLog(status=event_pb2.SessionLog.START))))
        self._writer.flush()
        self._flush_secs, self._last_flush = flush_secs, time.monotonic()

    def add(self, summary, step: int) -> None:
        self._writer.write_event(self._event_pb2.Event(summary=summary, step=int(step),
                                                       wall_time=time.time()))
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        self.add(scalar(tag, value), step)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        from tensorboardX.summary import image as image_summary

        self.add(image_summary(tag, image, dataformats='HWC'), step)

    def flush(self) -> None:
        self._writer.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self._writer.close()


def _has_events(logdir: str) -> bool:
    return os.path.isdir(logdir) and any('tfevents' in name for name in os.listdir(logdir))


class Logger:
    """Writes metrics of one run. Every method is a no-op when ``enabled`` is False.

    A full or failing disk raises `errors.StorageError` from the call that met it.
    """

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        enabled: bool = True,
        tensorboard: bool = True,
        console_every_s: float = 10.0,
        unit: str = 'env steps',
        return_key: str = RETURN_KEY,
        resume_step: int | None = None,
    ):
        """``unit`` names what ``step`` counts on the progress line (offline runs count
        updates); ``return_key`` is the metric whose last 10 values the line averages.
        ``resume_step``: the step a run goes on from (its restored checkpoint's; 0 for a run
        that starts over, -1 for one that writes every step again): the history above it is
        cut (`cut_history`) and TensorBoard hides it, before anything new is written."""
        self.workdir = workdir
        self.unit = unit
        self.return_key = return_key
        self.total_steps = int(total_steps)
        self.enabled = enabled
        self.console_every_s = float(console_every_s)
        self._clock = time.monotonic  # replaceable in tests
        self._file = None
        self._writer = None
        self._returns: collections.deque[float] = collections.deque(maxlen=10)
        self._start_time = self._clock()
        self._last: tuple[float, int, int] | None = None  # (time, step, updates) at last print
        self._video_warned = False
        if not enabled:
            return
        with _storage_faults('opening the run\'s logs in ' + workdir):
            self._open(tensorboard, resume_step)

    def _open(self, tensorboard: bool, resume_step: int | None) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        path = os.path.join(self.workdir, METRICS_FILE)
        if resume_step is None:
            _drop_partial_last_line(path)
        else:
            count, side = cut_history(self.workdir, resume_step)
            if count:
                absl_logging.info('The run goes on from step %d: moved the %d rows of %s above '
                                  'it to %s.', resume_step, count, METRICS_FILE,
                                  os.path.basename(side))
        self._file = open(path, 'a', encoding='utf-8')
        if tensorboard:
            logdir = os.path.join(self.workdir, 'tensorboard')
            purge = resume_step + 1 if resume_step is not None and _has_events(logdir) else None
            self._writer = _EventFile(logdir, purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any], seed: int | None = None) -> None:
        """Appends ``{"step": step, **metrics}`` to metrics.jsonl and TensorBoard.

        ``seed`` (runs of several seeds, ``config.num_seeds > 1``) tags the row of one seed:
        ``{"step": step, "seed": seed, **metrics}``, and TensorBoard tags ``<key>/seed<seed>``.
        """
        if not self.enabled or self._file is None:
            return
        if 'step' in metrics or 'seed' in metrics:
            raise ValueError("'step' and 'seed' are reserved in metrics; pass them as arguments")
        step = int(step)
        values = {k: _to_float(k, v) for k, v in metrics.items()}
        row = {'step': step, **({} if seed is None else {'seed': int(seed)}), **values}
        with _storage_faults(f'writing {METRICS_FILE}'):
            self._file.write(json.dumps(row, allow_nan=False) + '\n')
            self._file.flush()
        if values.get(self.return_key) is not None:
            self._returns.append(values[self.return_key])
        if self._writer is not None:
            suffix = '' if seed is None else f'/seed{int(seed)}'
            with _storage_faults('writing TensorBoard events'):
                for k, v in values.items():
                    self._writer.add_scalar(k + suffix, float('nan') if v is None else v, step)

    def progress(self, step: int, updates: int, force: bool = False) -> str | None:
        """Prints one progress line at most every ``console_every_s`` (always when ``force``).

        Rates are measured over the interval since the previously printed line (the first call
        only starts the clock unless ``force``). Returns the printed line, or None.
        """
        if not self.enabled:
            return None
        now = self._clock()
        step, updates = int(step), int(updates)
        if self._last is None and not force:
            self._last = (now, step, updates)
            return None
        if not force and now - self._last[0] < self.console_every_s:
            return None
        steps_rate = updates_rate = None
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            steps_rate = (step - self._last[1]) / dt
            updates_rate = (updates - self._last[2]) / dt
        self._last = (now, step, updates)

        total = max(self.total_steps, 1)
        pct = 100.0 * min(step / total, 1.0)
        elapsed = now - self._start_time
        parts = [f'[{pct:3.0f}%] {step:,}/{self.total_steps:,} {self.unit}']
        if self.unit == 'env steps':  # otherwise steps are updates, the next rate
            parts.append(f'{steps_rate:,.0f} steps/s' if steps_rate is not None else '- steps/s')
        parts.append(f'{updates_rate:.1f} updates/s' if updates_rate is not None else '- updates/s')
        if self._returns:
            mean = sum(self._returns) / len(self._returns)
            parts.append(f'return {mean:.1f} ({len(self._returns)} ep)')
        else:
            parts.append('return - (0 ep)')
        if steps_rate is not None and steps_rate > 0:
            eta = _format_duration(max(self.total_steps - step, 0) / steps_rate)
        elif step >= self.total_steps:
            eta = _format_duration(0)
        else:
            eta = '?'
        parts.append(f'{_format_duration(elapsed)} elapsed, ETA {eta}')
        line = ' | '.join(parts)
        print(line, flush=True)
        return line

    def video(self, step: int, name: str, frames: Any, fps: int = 10) -> str | None:
        """Writes ``frames`` (uint8 ``[T, H, W, C]``, C in {1, 3}) to videos/<name>_<step>.gif."""
        if not self.enabled:
            return None
        try:
            from PIL import Image  # Pillow is a dependency of matplotlib.
        except ImportError:
            if not self._video_warned:
                warnings.warn('Pillow is not installed: videos are not written', stacklevel=2)
                self._video_warned = True
            return None
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
            raise ValueError(f'video frames must be [T, H, W, 1|3], got {frames.shape}')
        if frames.dtype != np.uint8:
            frames = np.clip(frames, 0, 255).astype(np.uint8)
        if frames.shape[-1] == 1:
            frames = frames[..., 0]
        os.makedirs(os.path.join(self.workdir, 'videos'), exist_ok=True)
        path = os.path.join(self.workdir, 'videos', f'{name.replace("/", "_")}_{int(step)}.gif')
        images = [Image.fromarray(f) for f in frames]
        with _storage_faults(f'writing the video {os.path.basename(path)}'):
            images[0].save(
                path, save_all=True, append_images=images[1:],
                duration=max(1, round(1000 / fps)), loop=0,
            )
        return path

    def image(self, step: int, name: str, image: Any) -> None:
        """Writes a uint8 ``[H, W, C]`` image to TensorBoard (e.g. a strip of video frames)."""
        if self._writer is not None:
            with _storage_faults('writing TensorBoard events'):
                self._writer.add_image(name, np.asarray(image), int(step))

    def close(self) -> None:
        """Flushes and closes the files; raises `errors.StorageError` if the disk refuses."""
        file, writer, self._file, self._writer = self._file, self._writer, None, None
        with _storage_faults('closing the run\'s logs'):
            try:
                if file is not None:
                    file.close()
            finally:
                if writer is not None:
                    writer.close()

    def abandon(self) -> None:
        """Closes the files after an error, without raising."""
        try:
            self.close()
        except OSError:
            pass

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path: str) -> list[dict]:
    """Reads metrics.jsonl (``path`` may be the file or the workdir).

    A last line cut short by a crash is skipped; a malformed line elsewhere is skipped with a
    warning.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1:]):
                warnings.warn(f'{path}:{i + 1}: skipping malformed line', stacklevel=2)
    return rows


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r['step'], r[key]) for r in rows if r.get(key) is not None and 'step' in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = np.asarray(pts, dtype=np.float64).T
    return x, y


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` points (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    end = np.arange(1, len(y) + 1)
    start = np.maximum(0, end - window)
    return (c[end] - c[start]) / (end - start)


def plot_curve(workdir: str, key: str = RETURN_KEY, out: str | None = None) -> str:
    """Plots ``key`` (and ``eval/<key>`` if logged) against env steps; returns the PNG path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(workdir)
    if out is None:
        out = os.path.join(workdir, 'plots', key.replace('/', '_') + '.png')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    keys = [key] + ([f'eval/{key}'] if not key.startswith('eval/') else [])
    plotted = False
    for i, k in enumerate(keys):
        x, y = _series(rows, k)
        if len(x) == 0:
            continue
        color = f'C{i}'
        window = max(1, min(20, len(y) // 10 or 1))
        ax.plot(x, y, '.', color=color, alpha=0.3, markersize=3)
        ax.plot(x, _moving_average(y, window), '-', color=color, label=f'{k} (avg {window})')
        plotted = True
    if plotted:
        ax.legend(loc='best', fontsize='small')
    else:
        ax.text(0.5, 0.5, f'no data for {key!r}', ha='center', va='center',
                transform=ax.transAxes)
    ax.set_xlabel('env steps')
    ax.set_ylabel(key)
    ax.set_title(os.path.basename(os.path.normpath(workdir)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format='png')
    return out


class _DropLibraryInfo(pylogging.Filter):
    """Drops INFO records of chatty libraries (orbax logs every save step at INFO; jax says on
    every machine without a TPU that it found none)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno > pylogging.INFO or not any(
            part in record.pathname for part in ('/orbax/', '/etils/', '/jax/_src/xla_bridge'))


def quiet_library_logs() -> None:
    """Keeps absl INFO output to this framework's own messages."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
