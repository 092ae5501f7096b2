"""Sweeps: a grid of training runs, each in its own workdir under one sweep folder.

A sweep file (``experiments/sweeps/*.py``) defines ``get_sweep()`` returning::

    {'suite': 'experiments/atari100k.py',         # experiment file given to scripts/train.py
     'base': {'size': '12m'},                     # options every run gets (dict or 'a=b,debug')
     'grid': {'task': [...], 'seed': [0, 1, 2]},  # experiment options to cross
     'overrides': {'run.train_ratio': 256}}       # --config.<key>=<value> for every run

An experiment file may accept options of its own beside ``task``, ``variant``, ``size``,
``seed`` and ``debug`` (its ``OPTIONS`` set, e.g. experiments/memory.py's ``arm``); the grid and
the base may name them.

Each grid point is a run named from its grid values (``task=Pong-v5,seed=0`` ->
``Pong-v5__seed0``; task, variant and arm values bare, other options as ``<option><value>``), run by
``python scripts/train.py --config=<suite>:<options> --workdir=<root>/<name> --config.<k>=<v>``
from the repository root. Runs are ordered seed-major (every task of seed 0 before seed 1; then
by task, variant, size), so an unfinished sweep holds complete seeds first. Process ``p`` of
``P`` takes runs ``i`` with ``i % P == p``.

A run is *finished* when the largest ``step`` in its ``metrics.jsonl`` reached ``run.steps``
(from its ``config.json``, or from the sweep's ``run.steps`` override when given), *partial*
when its workdir holds a config or metrics but is not finished, else *new*. Finished runs are
skipped; partial runs are launched with the same command, which resumes them.

Local::

    python scripts/sweep.py --sweep=experiments/sweeps/atari100k.py --root=runs/atari100k \\
        --workers=1 [--dry_run]

On every worker of a multi-host TPU slice (each host runs its share of the runs as single-host
jobs; the process index and count come from the TPU metadata, no flags needed)::

    gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd dreamerjax && \\
        python scripts/sweep.py --sweep=experiments/sweeps/atari100k.py --root=runs/atari100k"

Use ``--workers=1`` on accelerator hosts: concurrent runs would compete for the same chips.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

from dreamerjax.run import configs
from dreamerjax.run.logger import METRICS_FILE, read_metrics

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = 'scripts/train.py'
CONFIG_FILE = 'config.json'
LOG_FILE = 'train.log'
PLAN_FILE = 'sweep.json'
SWEEP_KEYS = ('suite', 'base', 'grid', 'overrides')
# Order of options in run names and option strings; seed sorts first (see module docstring).
NAME_ORDER = ('task', 'variant', 'arm', 'size', 'seed', 'debug')
SORT_ORDER = ('seed', 'task', 'variant', 'arm', 'size', 'debug')
BARE_NAME_OPTIONS = ('task', 'variant', 'arm')


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its position in the sweep, name, experiment options, workdir and the
    train command (run from the repository root)."""
    index: int
    name: str
    options: dict
    workdir: str
    command: tuple[str, ...]

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A run that exited non-zero (``returncode``) or exited without finishing."""
    run: Run
    returncode: int
    reason: str

    @property
    def log(self) -> str:
        return os.path.join(self.run.workdir, LOG_FILE)


def parse_options(options: str | dict | None, extra: frozenset = frozenset()) -> dict:
    """Options string ``'size=12m,debug'`` or dict -> dict (bare words -> True), validated
    against the options experiment files accept (and a suite's ``extra`` ones)."""
    known = configs.OPTIONS | set(extra)
    if isinstance(options, dict):
        unknown = set(options) - known
        if unknown:
            raise ValueError(f'unknown experiment options {sorted(unknown)}; known: '
                             f'{sorted(known)}')
        return dict(options)
    return configs.parse_options(options, known)


def suite_options(suite: str) -> frozenset:
    """The options a suite file accepts on top of ``configs.OPTIONS`` (its ``OPTIONS`` set, e.g.
    experiments/memory.py's ``arm``); empty when the file defines none or is not there."""
    path = suite if os.path.isabs(suite) else os.path.join(REPOSITORY_ROOT, suite)
    if not os.path.isfile(path):
        return frozenset()
    return frozenset(getattr(configs.load_file(path), 'OPTIONS', ()))


def _option_rank(order: tuple[str, ...], key: str) -> tuple[int, str]:
    return (order.index(key) if key in order else len(order), key)


def format_options(options: dict) -> str:
    """Dict -> the experiment options string (``task=Pong-v5,size=12m,seed=0,debug``); keys in a
    fixed order, True as a bare word, False dropped."""
    parts = []
    for key in sorted(options, key=lambda k: _option_rank(NAME_ORDER, k)):
        value = options[key]
        if value is True:
            parts.append(key)
        elif value is not False and value is not None:
            parts.append(f'{key}={value}')
    return ','.join(parts)


def run_name(values: dict) -> str:
    """Folder name of a run from its grid values: ``{'task': 'Pong-v5', 'seed': 0}`` ->
    ``'Pong-v5__seed0'``. Characters other than letters, digits, ``.``, ``_``, ``-`` become
    ``-``."""
    parts = []
    for key in sorted(values, key=lambda k: _option_rank(NAME_ORDER, k)):
        value = values[key]
        if value is True:
            text = key
        elif key in BARE_NAME_OPTIONS:
            text = str(value)
        else:
            text = f'{key}{value}'
        parts.append(re.sub(r'[^A-Za-z0-9._-]', '-', text))
    return '__'.join(parts) or 'run'


def _sort_key(values: dict) -> tuple:
    """Seed-major order; integers compare as numbers (seed 10 after seed 2)."""
    key = []
    for name in sorted(values, key=lambda k: _option_rank(SORT_ORDER, k)):
        value = values[name]
        number = isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        key.append((0, int(value), '') if number else (1, 0, str(value)))
    return tuple(key)


def load_sweep(path: str) -> dict:
    """Imports a sweep file and returns its validated ``get_sweep()`` with ``base`` as a dict."""
    return validate_sweep(configs.load_file(path).get_sweep())


def validate_sweep(sweep: dict) -> dict:
    """Checks a sweep dict's keys and option names; returns a normalized copy."""
    unknown = set(sweep) - set(SWEEP_KEYS)
    if unknown or 'suite' not in sweep or 'grid' not in sweep:
        raise ValueError(f'a sweep needs keys suite and grid (optional: base, overrides); got '
                         f'{sorted(sweep)}')
    grid = {key: list(values) for key, values in sweep['grid'].items()}
    extra = suite_options(str(sweep['suite']))
    parse_options({key: True for key in grid}, extra)
    empty = [key for key, values in grid.items() if not values]
    if empty:
        raise ValueError(f'grid entries without values: {empty}')
    overrides = {key.removeprefix('--').removeprefix('config.'): value
                 for key, value in (sweep.get('overrides') or {}).items()}
    return {'suite': str(sweep['suite']), 'base': parse_options(sweep.get('base'), extra),
            'grid': grid, 'overrides': overrides}


def expand(sweep: dict, root: str, python: str = sys.executable) -> list[Run]:
    """The runs of a sweep: the grid's cartesian product over ``base``, in seed-major order, each
    with workdir ``<root>/<name>`` and its train command."""
    sweep = validate_sweep(sweep)
    root = os.path.abspath(root)
    keys = list(sweep['grid'])
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(
        *(sweep['grid'][key] for key in keys))]
    points.sort(key=_sort_key)
    overrides = [f'--config.{key}={value}' for key, value in sorted(sweep['overrides'].items())]
    runs, names = [], set()
    for index, values in enumerate(points):
        name = run_name(values)
        if name in names:
            raise ValueError(f'two runs of the sweep are both named {name!r}')
        names.add(name)
        options = {**sweep['base'], **values}
        workdir = os.path.join(root, name)
        command = (python, TRAIN_SCRIPT, f'--config={sweep["suite"]}:{format_options(options)}',
                   f'--workdir={workdir}', *overrides)
        runs.append(Run(index, name, options, workdir, command))
    return runs


def shard(runs: list[Run], process_index: int, process_count: int) -> list[Run]:
    """The runs process ``process_index`` of ``process_count`` takes: ``index % count ==
    process_index``."""
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    return [run for run in runs if run.index % process_count == process_index]


def run_progress(workdir: str, steps: int | None = None) -> tuple[int | None, int | None]:
    """``(largest step in metrics.jsonl or None, budget)`` of a workdir; the budget is ``steps``
    if given, else ``run.steps`` from its config.json (None if neither)."""
    if steps is None:
        config_path = os.path.join(workdir, CONFIG_FILE)
        if os.path.exists(config_path):
            with open(config_path, encoding='utf-8') as f:
                steps = json.load(f).get('run', {}).get('steps')
    last = None
    if os.path.exists(os.path.join(workdir, METRICS_FILE)):
        last = max((row['step'] for row in read_metrics(workdir) if 'step' in row), default=None)
    return last, steps


def run_status(workdir: str, steps: int | None = None) -> str:
    """``'finished'``, ``'partial'`` or ``'new'`` (see the module docstring)."""
    last, budget = run_progress(workdir, steps)
    if last is not None and budget is not None and last >= budget:
        return 'finished'
    if last is not None or os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        return 'partial'
    return 'new'


def budget_override(sweep: dict) -> int | None:
    """The sweep's ``run.steps`` override as an int, if it sets one."""
    value = validate_sweep(sweep)['overrides'].get('run.steps')
    return None if value is None else int(float(value))


def write_plan(root: str, sweep_path: str, sweep: dict, runs: list[Run],
               process_count: int) -> str:
    """Writes ``<root>/sweep.json`` (the sweep, and each run's name, options, workdir, command
    and process) atomically; returns its path."""
    os.makedirs(root, exist_ok=True)
    plan = {
        'sweep': sweep_path, **validate_sweep(sweep), 'root': os.path.abspath(root),
        'cwd': str(REPOSITORY_ROOT), 'process_count': process_count,
        'runs': [{'index': run.index, 'name': run.name, 'options': run.options,
                  'workdir': run.workdir, 'command': run.command_line,
                  'process': run.index % process_count} for run in runs],
    }
    path = os.path.join(root, PLAN_FILE)
    temporary = f'{path}.{os.getpid()}.tmp'
    with open(temporary, 'w', encoding='utf-8') as f:
        json.dump(plan, f, indent=2)
    os.replace(temporary, path)
    return path


def describe(runs: list[Run], steps: int | None = None) -> list[str]:
    """One line per run: name, status (with progress for partial runs) and command."""
    lines = []
    for run in runs:
        status = run_status(run.workdir, steps)
        if status == 'partial':
            last, budget = run_progress(run.workdir, steps)
            status = f'partial ({last or 0}/{budget if budget is not None else "?"})'
        lines.append(f'{run.name}  [{status}]\n    {run.command_line}')
    return lines


def _start(run: Run, cwd: str) -> tuple[subprocess.Popen, object]:
    os.makedirs(run.workdir, exist_ok=True)
    log = open(os.path.join(run.workdir, LOG_FILE), 'a', encoding='utf-8')
    log.write(f'=== {datetime.datetime.now().isoformat(timespec="seconds")} '
              f'{run.command_line}\n')
    log.flush()
    environment = dict(os.environ, PYTHONUNBUFFERED='1')
    process = subprocess.Popen(run.command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=environment)
    return process, log


def launch(runs: list[Run], workers: int = 1, steps: int | None = None,
           cwd: str | None = None, poll_seconds: float = 1.0, echo=print) -> list[Failure]:
    """Runs every unfinished run of ``runs`` with at most ``workers`` at a time, each logging to
    ``<workdir>/train.log``; returns the failures (non-zero exit, or exit before the budget) in
    the order of ``runs``, whichever finished first.

    On KeyboardInterrupt the running trainers get SIGTERM (they checkpoint and stop), are waited
    for, and the interrupt is raised again.
    """
    cwd = cwd or str(REPOSITORY_ROOT)
    pending = []
    for run in runs:
        if run_status(run.workdir, steps) == 'finished':
            echo(f'skip {run.name} (finished)')
        else:
            pending.append(run)
    running: dict[int, tuple[Run, subprocess.Popen, object, float]] = {}
    failures = []
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                run = pending.pop(0)
                echo(f'start {run.name} ({run_status(run.workdir, steps)}): {run.command_line}')
                process, log = _start(run, cwd)
                running[run.index] = (run, process, log, time.monotonic())
            time.sleep(poll_seconds if running else 0.0)
            for index, (run, process, log, started) in list(running.items()):
                returncode = process.poll()
                if returncode is None:
                    continue
                log.close()
                del running[index]
                minutes = (time.monotonic() - started) / 60
                last, budget = run_progress(run.workdir, steps)
                if returncode != 0:
                    failures.append(Failure(run, returncode, f'exit code {returncode}'))
                elif run_status(run.workdir, steps) != 'finished':
                    failures.append(Failure(run, returncode, f'exited at step {last} of {budget}'))
                echo(f'end {run.name}: exit {returncode}, step {last}/{budget}, '
                     f'{minutes:.1f} min')
    except KeyboardInterrupt:
        for _, process, _, _ in running.values():
            process.terminate()
        for _, process, log, _ in running.values():
            process.wait()
            log.close()
        raise
    return sorted(failures, key=lambda failure: failure.run.index)


def _is_cloud_tpu_cluster(cluster) -> bool:
    return cluster.__module__.endswith('cloud_tpu_cluster')


def detect_process() -> tuple[int, int]:
    """``(process_index, process_count)`` of this host in a multi-host Cloud TPU slice, read from
    the TPU environment / metadata server as ``jax.distributed`` would; ``(0, 1)`` elsewhere.

    ``jax.process_index()`` itself cannot be used: it would initialize the TPU backend in this
    driver and hold the chips the training subprocesses need.
    """
    try:
        from jax._src.clusters import ClusterEnv
        for cluster in ClusterEnv._cluster_types:
            if _is_cloud_tpu_cluster(cluster) and cluster.is_env_present():
                return int(cluster.get_process_id()), int(cluster.get_process_count())
    except Exception:  # private API: any failure means "not a slice"
        pass
    return 0, 1
