"""Runs the entry scripts with an allocator that does not fault XLA:CPU's buffers in every step.

XLA:CPU takes each execution's temporary buffer (3.4 GB for the 12m image train step) from malloc
and frees it when the step ends. glibc serves a request that large with a fresh mmap and returns
it with munmap, so every step faults about a million zeroed 4 KB pages back in: 3-4 s of kernel
time per 12m image step on a 2-core host, 0.2-0.3 s of a 12m vector step's 1.8 s.

- jemalloc (`apt install libjemalloc2`, or `make jemalloc` without root), told never to purge
  freed pages (`MALLOC_CONF` below), hands the same pages to the next step: no faults at all.
- Without jemalloc, glibc with `glibc.malloc.hugetlb=1` (glibc >= 2.35) asks for transparent huge
  pages on its mmap'd chunks where the kernel gives them only on request
  (`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise`, a common default): the same buffer
  is faulted in as 2 MB pages, 1/512 as many faults.

docs/benchmarks.md ("Allocator") has the figures.

An allocator can only be chosen at process start (`LD_PRELOAD`, `GLIBC_TUNABLES`), so
`use_fast_allocator()` re-executes the script once with the new environment; call it first thing
in an entry script, before jax is imported. It does nothing when neither applies, when the process
already runs with it, off Linux, or with `DREAMERJAX_ALLOCATOR=system`; a process the user
started with jemalloc preloaded but no `MALLOC_CONF` re-executes once with `MALLOC_CONF` added.
`DREAMERJAX_JEMALLOC=/path/libjemalloc.so.2` names the library when it is not in a standard place.
A `MALLOC_CONF` or `GLIBC_TUNABLES` the user set is kept.
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
# glibc: transparent huge pages for the chunks it maps (ignored by glibc before 2.35).
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
SEARCH = ('/usr/lib/*-linux-gnu/libjemalloc.so.2', '/usr/lib64/libjemalloc.so.2',
          '/usr/local/lib/libjemalloc.so.2', '/usr/lib/libjemalloc.so.2')


def find_jemalloc(environ: Mapping[str, str] = os.environ, prefix: str = sys.prefix) -> str | None:
  """Path of the jemalloc shared library: `$DREAMERJAX_JEMALLOC`, then `$CONDA_PREFIX/lib`, then
  `lib/` of the running Python environment (`prefix`; where `make jemalloc` puts it), then the
  system library directories; None when there is none."""
  if environ.get(LIBRARY):
    path = environ[LIBRARY]
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{LIBRARY}={path} is not a file: point it at libjemalloc.so.2 '
                              f'or unset it')
    return path
  patterns = [os.path.join(prefix, 'lib', 'libjemalloc.so.2'), *SEARCH]
  if environ.get('CONDA_PREFIX'):
    patterns.insert(0, os.path.join(environ['CONDA_PREFIX'], 'lib', 'libjemalloc.so.2'))
  for pattern in patterns:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  return None


def huge_pages_offered(path: str = THP_MODE) -> bool:
  """Whether the kernel gives transparent huge pages to the regions that ask for them and only
  to those (mode `madvise`, the bracketed word in `path`): there glibc's `HUGE_PAGES` makes the
  difference. In mode `always` every large region gets them already, and glibc asks for none."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return False
  return '[madvise]' in text


def active(environ: Mapping[str, str] = os.environ) -> str:
  """'jemalloc' when the process runs with it preloaded, 'glibc-huge-pages' under glibc with
  `HUGE_PAGES`, else 'system'."""
  if 'jemalloc' in environ.get('LD_PRELOAD', ''):
    return 'jemalloc'
  return 'glibc-huge-pages' if HUGE_PAGES in environ.get('GLIBC_TUNABLES', '') else 'system'


def preload_environ(environ: Mapping[str, str], library: str | None,
                    huge_pages: bool = False) -> dict[str, str] | None:
  """The environment to re-execute with, or None when the process should run as it is: jemalloc
  when `library` is given, else glibc's huge pages when the kernel offers them (`huge_pages`)."""
  choice = environ.get(SWITCH, 'jemalloc')
  if choice not in ('jemalloc', 'system'):
    raise ValueError(f'{SWITCH}={choice!r}: use jemalloc (the default) or system')
  if choice == 'system':
    return None
  new = dict(environ)
  if active(environ) == 'jemalloc':
    # Preloaded by the user without `MALLOC_CONF`: jemalloc's default purging (dirty pages kept
    # 10 s, then handed back) faults large buffers in again, about 5% of a 1m vector update.
    if 'MALLOC_CONF' in environ:
      return None
    new['MALLOC_CONF'] = MALLOC_CONF
    return new
  if library is not None:
    new['LD_PRELOAD'] = ':'.join(filter(None, [library, environ.get('LD_PRELOAD', '')]))
    new.setdefault('MALLOC_CONF', MALLOC_CONF)
    return new
  if not huge_pages or 'glibc.malloc.hugetlb' in environ.get('GLIBC_TUNABLES', ''):
    return None
  new['GLIBC_TUNABLES'] = ':'.join(filter(None, [environ.get('GLIBC_TUNABLES', ''), HUGE_PAGES]))
  return new


def use_fast_allocator() -> None:
  """Re-executes this process under jemalloc, or glibc with huge pages, when `preload_environ`
  says so (does not return then); otherwise returns and the process goes on as it is."""
  if not sys.platform.startswith('linux'):
    return
  environ = preload_environ(os.environ, find_jemalloc(), huge_pages_offered())
  if environ is None:
    return
  argv = list(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], environ)
