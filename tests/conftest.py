"""Shared test helpers."""

import importlib.metadata
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
ROOT = str(REPOSITORY_ROOT)  # the same, as a string: subprocess arguments and generated code

# Tests run tiny shapes, where XLA's compile time dominates: skip LLVM's expensive passes (about
# 2x faster compiles), emit fusions the older way (another 30-50% off a debug train step's
# compile at that level), and share compiled programs between test processes and subprocesses.
# Both flags are for tests only: at full optimization the older emitters compile the 1m image
# update slower and run it slower (docs/benchmarks.md, "Compile time in the test suite").
# jaxlib 0.11 has only the new emitters and aborts on the flag ("Unknown flag in XLA_FLAGS").
_JAXLIB = tuple(int(part) for part in importlib.metadata.version('jaxlib').split('.')[:2])
TEST_XLA_FLAGS = ' '.join(['--xla_backend_optimization_level=0',
                           *(['--xla_cpu_use_fusion_emitters=false'] if _JAXLIB < (0, 11) else [])])
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(REPOSITORY_ROOT / '.pytest_cache' / 'xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')


def run_python(code: str, device_count: int = 8, timeout: float = 300) -> str:
    """Runs ``code`` in a fresh interpreter with ``device_count`` simulated CPU devices.

    XLA_FLAGS must be set before jax initialises, hence the subprocess. Fails the test with the
    child's output if it exits non-zero; returns its stdout.
    """
    environment = dict(os.environ)
    environment['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={device_count} '
                                f'{TEST_XLA_FLAGS}')
    environment['JAX_PLATFORMS'] = 'cpu'
    environment['PYTHONPATH'] = os.pathsep.join(
        filter(None, [str(REPOSITORY_ROOT), environment.get('PYTHONPATH')]))
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=environment,
                            cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f'subprocess exited with {result.returncode}\n--- stdout ---\n'
                    f'{result.stdout}\n--- stderr ---\n{result.stderr[-6000:]}')
    return result.stdout


@pytest.fixture
def run_with_devices():
    """`run_python` as a fixture: ``run_with_devices(code, device_count=8) -> stdout``."""
    return run_python


# Reliability figures --------------------------------------------------------------------------
# Tests marked `reliability` record what they tried with the `figure` fixture; the summary at the
# end of the session prints, per figure, the cases that passed out of those tried (the counts in
# the README's reliability table and docs/reliability.md). `pytest -m reliability tests` runs
# only them. The records travel in the test reports, so pytest-xdist workers' count too.

FIGURE_PROPERTY = 'reliability_figure'


def pytest_configure(config):
    config.addinivalue_line('markers', 'reliability: the reliability suite (figures printed at '
                                       'the end; see docs/reliability.md)')


@pytest.fixture
def figure(record_property):
    """`figure(name, cases=1, value=None)`: this test tries `cases` cases of figure `name` (they
    count as passed if the test passes); `value` adds a number to the figure (e.g. steps lost)."""
    def record(name: str, cases: int = 1, value: float | None = None):
        record_property(FIGURE_PROPERTY, (name, cases, value))
    return record


def pytest_terminal_summary(terminalreporter):
    figures = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, 'when', None) != 'call':
                continue
            for name, value in getattr(report, 'user_properties', ()):
                if name != FIGURE_PROPERTY:
                    continue
                figure_name, cases, number = value
                entry = figures.setdefault(figure_name, [0, 0, None])
                entry[1] += cases
                entry[0] += cases if report.passed else 0
                if number is not None:
                    entry[2] = (entry[2] or 0) + number
    if not figures:
        return
    terminalreporter.section('reliability figures')
    for figure_name, (passed, tried, number) in sorted(figures.items()):
        extra = f' (total {number:g})' if number is not None else ''
        terminalreporter.write_line(f'{figure_name}: {passed} of {tried}{extra}')
