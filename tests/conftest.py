"""Shared test helpers."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Tests run tiny shapes, where XLA's compile time dominates: skip LLVM's expensive passes (about
# 2x faster compiles) and share compiled programs between test processes and subprocesses.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
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
