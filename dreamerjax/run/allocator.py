"""Runs the entry scripts under jemalloc when it is installed (`apt install libjemalloc2`).

XLA:CPU takes each execution's temporary buffer (3.4 GB for the 12m image train step) from malloc
and frees it when the step ends. glibc serves a request that large with a fresh mmap and returns
it with munmap, so every step faults about a million zeroed pages back in: 3-4 s of kernel time per
12m step on a 2-core host. jemalloc, told never to purge freed pages (`MALLOC_CONF` below), hands
the same pages to the next step. docs/benchmarks.md ("Allocator") has the figures.

An allocator can only be swapped at process start (`LD_PRELOAD`), so `use_jemalloc()` re-executes
the script once with the library preloaded; call it first thing in an entry script, before jax is
imported. It does nothing when jemalloc is not found, when it is already loaded, off Linux, or with
`DREAMERJAX_ALLOCATOR=system`. `DREAMERJAX_JEMALLOC=/path/libjemalloc.so.2` names the library when
it is not in a standard place. A `MALLOC_CONF` the user set is kept as is.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Mapping

SWITCH = 'DREAMERJAX_ALLOCATOR'   # 'jemalloc' (the default: use it when found) or 'system'
LIBRARY = 'DREAMERJAX_JEMALLOC'   # explicit path of libjemalloc.so.2
# Keep freed pages mapped (no decay-driven purging): the next step reuses them without faults.
MALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1'
SEARCH = ('/usr/lib/*-linux-gnu/libjemalloc.so.2', '/usr/lib64/libjemalloc.so.2',
          '/usr/local/lib/libjemalloc.so.2', '/usr/lib/libjemalloc.so.2')


def find_jemalloc(environ: Mapping[str, str] = os.environ) -> str | None:
  """Path of the jemalloc shared library: `$DREAMERJAX_JEMALLOC`, then `$CONDA_PREFIX/lib`, then
  the system library directories; None when there is none."""
  if environ.get(LIBRARY):
    path = environ[LIBRARY]
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{LIBRARY}={path} is not a file: point it at libjemalloc.so.2 '
                              f'or unset it')
    return path
  patterns = list(SEARCH)
  if environ.get('CONDA_PREFIX'):
    patterns.insert(0, os.path.join(environ['CONDA_PREFIX'], 'lib', 'libjemalloc.so.2'))
  for pattern in patterns:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  return None


def active(environ: Mapping[str, str] = os.environ) -> str:
  """'jemalloc' when the process runs with it preloaded, else 'system'."""
  return 'jemalloc' if 'jemalloc' in environ.get('LD_PRELOAD', '') else 'system'


def preload_environ(environ: Mapping[str, str], library: str | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None when the process should run as it is."""
  choice = environ.get(SWITCH, 'jemalloc')
  if choice not in ('jemalloc', 'system'):
    raise ValueError(f'{SWITCH}={choice!r}: use jemalloc (the default) or system')
  if choice == 'system' or library is None or active(environ) == 'jemalloc':
    return None
  new = dict(environ)
  new['LD_PRELOAD'] = ':'.join(filter(None, [library, environ.get('LD_PRELOAD', '')]))
  new.setdefault('MALLOC_CONF', MALLOC_CONF)
  return new


def use_jemalloc() -> None:
  """Re-executes this process under jemalloc when `preload_environ` says so (does not return
  then); otherwise returns and the process goes on with the allocator it has."""
  if not sys.platform.startswith('linux'):
    return
  environ = preload_environ(os.environ, find_jemalloc())
  if environ is None:
    return
  argv = list(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
