"""The allocator re-execution of the entry scripts (dreamerjax/run/allocator.py): jemalloc, else
glibc with transparent huge pages."""

import os
import subprocess
import sys

import pytest

from dreamerjax.run import allocator
from tests.conftest import REPOSITORY_ROOT

LIB = '/opt/lib/libjemalloc.so.2'
needs_jemalloc = pytest.mark.skipif(
    allocator.find_jemalloc() is None or not sys.platform.startswith('linux'),
    reason='jemalloc is not installed (apt install libjemalloc2)')


def test_preload_environ_adds_the_library_once():
  environ = allocator.preload_environ({'PATH': '/bin'}, LIB)
  assert environ == {'PATH': '/bin', 'LD_PRELOAD': LIB, 'MALLOC_CONF': allocator.MALLOC_CONF}
  # Already running under it (e.g. after the re-exec, or a sweep worker): nothing to do.
  assert allocator.preload_environ(environ, LIB) is None
  # Preloaded by the user without MALLOC_CONF: once more with it, the library not added again.
  preloaded = {'PATH': '/bin', 'LD_PRELOAD': LIB}
  assert allocator.preload_environ(preloaded, LIB) == environ
  assert allocator.preload_environ({**preloaded, 'MALLOC_CONF': 'narenas:2'}, LIB) is None


def test_preload_environ_keeps_user_settings():
  environ = allocator.preload_environ({'LD_PRELOAD': 'libfoo.so', 'MALLOC_CONF': 'narenas:2'}, LIB)
  assert environ['LD_PRELOAD'] == f'{LIB}:libfoo.so'
  assert environ['MALLOC_CONF'] == 'narenas:2'


def test_preload_environ_opt_out_and_missing_library():
  assert allocator.preload_environ({allocator.SWITCH: 'system'}, LIB) is None
  assert allocator.preload_environ({}, None) is None
  with pytest.raises(ValueError, match='use jemalloc .* or system'):
    allocator.preload_environ({allocator.SWITCH: 'tcmalloc'}, LIB)


def test_preload_environ_huge_pages_without_jemalloc():
  environ = allocator.preload_environ({'PATH': '/bin'}, None, huge_pages=True)
  assert environ == {'PATH': '/bin', 'GLIBC_TUNABLES': allocator.HUGE_PAGES}
  assert allocator.active(environ) == 'glibc-huge-pages'
  assert allocator.preload_environ(environ, None, huge_pages=True) is None  # after the re-exec
  # The user's tunables stay, and theirs win when they set the same one.
  environ = allocator.preload_environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, None, True)
  assert environ['GLIBC_TUNABLES'] == f'glibc.malloc.arena_max=2:{allocator.HUGE_PAGES}'
  assert allocator.preload_environ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, None, True) is None
  # jemalloc first; nothing when the kernel offers no huge pages or the user opts out.
  assert 'GLIBC_TUNABLES' not in allocator.preload_environ({}, LIB, huge_pages=True)
  assert allocator.preload_environ({}, None, huge_pages=False) is None
  assert allocator.preload_environ({allocator.SWITCH: 'system'}, None, huge_pages=True) is None


@pytest.mark.parametrize('text,offered', [('always [madvise] never\n', True),
                                          ('[always] madvise never\n', False),
                                          ('always madvise [never]\n', False)])
def test_huge_pages_offered_reads_the_kernel_mode(tmp_path, text, offered):
  (tmp_path / 'enabled').write_text(text)
  assert allocator.huge_pages_offered(str(tmp_path / 'enabled')) is offered
  assert allocator.huge_pages_offered(str(tmp_path / 'missing')) is False


def test_find_jemalloc_explicit_conda_and_environment(tmp_path):
  with pytest.raises(FileNotFoundError, match='DREAMERJAX_JEMALLOC'):
    allocator.find_jemalloc({allocator.LIBRARY: str(tmp_path / 'missing.so')})
  library = tmp_path / 'lib' / 'libjemalloc.so.2'
  library.parent.mkdir()
  library.write_bytes(b'')
  assert allocator.find_jemalloc({allocator.LIBRARY: str(library)}) == str(library)
  assert allocator.find_jemalloc({'CONDA_PREFIX': str(tmp_path)}) == str(library)
  # `make jemalloc` unpacks it into the virtualenv's lib/: found there without any variable.
  assert allocator.find_jemalloc({}, prefix=str(tmp_path)) == str(library)
  # An explicit path wins over the environment's copy.
  other = tmp_path / 'other.so.2'
  other.write_bytes(b'')
  explicit = {allocator.LIBRARY: str(other)}
  assert allocator.find_jemalloc(explicit, prefix=str(tmp_path)) == str(other)


_PROBE = ('from dreamerjax.run import allocator; allocator.use_fast_allocator(); import sys; '
          'print(int("jemalloc" in open("/proc/self/maps").read()), sys.argv[1:])')


@needs_jemalloc
@pytest.mark.parametrize('choice,loaded', [('jemalloc', 1), ('system', 0)])
def test_use_fast_allocator_reexecutes_with_the_same_arguments(choice, loaded):
  environ = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'MALLOC_CONF')}
  environ[allocator.SWITCH] = choice
  out = subprocess.run([sys.executable, '-c', _PROBE, '--flag=1', 'x'], env=environ, check=True,
                       capture_output=True, text=True, cwd=REPOSITORY_ROOT).stdout
  assert out.strip() == f"{loaded} ['--flag=1', 'x']"


@needs_jemalloc
def test_use_fast_allocator_adds_malloc_conf_to_a_preloaded_jemalloc():
  """Started with jemalloc preloaded by hand and no MALLOC_CONF: one re-execution adds it."""
  environ = {k: v for k, v in os.environ.items() if k not in ('MALLOC_CONF', allocator.SWITCH)}
  environ['LD_PRELOAD'] = allocator.find_jemalloc()
  probe = ('from dreamerjax.run import allocator; allocator.use_fast_allocator(); import os; '
           'print(os.environ.get("MALLOC_CONF"))')
  out = subprocess.run([sys.executable, '-c', probe], env=environ, check=True, capture_output=True,
                       text=True, cwd=REPOSITORY_ROOT).stdout
  assert out.strip() == allocator.MALLOC_CONF


# Takes 256 MB from glibc's malloc directly (numpy asks for huge pages itself) and reports
# whether the kernel was asked to back that mapping with huge pages: the `hg` flag
# (MADV_HUGEPAGE) in its /proc/self/smaps entry, which does not depend on free memory.
_HUGE_PROBE = (
    'from dreamerjax.run import allocator; allocator.use_fast_allocator(); import ctypes\n'
    'libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n'
    'p = libc.malloc(256 << 20); libc.memset(ctypes.c_void_p(p), 1, 256 << 20)\n'
    'advised = None\n'
    'for line in open("/proc/self/smaps"):\n'
    '  head = line.split()[0]\n'
    '  if "-" in head and ":" not in head:\n'
    '    start, end = (int(a, 16) for a in head.split("-")); inside = start <= p < end\n'
    '  elif head == "VmFlags:" and inside:\n'
    '    advised = "hg" in line.split()[1:]\n'
    'print(allocator.active(), int(bool(advised)))\n')


@pytest.mark.skipif(not sys.platform.startswith('linux') or allocator.find_jemalloc() is not None
                    or not allocator.huge_pages_offered()
                    or not os.path.exists('/proc/self/smaps'),
                    reason='needs Linux without jemalloc, transparent huge pages on request')
def test_use_fast_allocator_falls_back_to_glibc_huge_pages():
  environ = {k: v for k, v in os.environ.items()
             if k not in ('LD_PRELOAD', 'MALLOC_CONF', 'GLIBC_TUNABLES', allocator.SWITCH)}

  def run(env):
    return subprocess.run([sys.executable, '-c', _HUGE_PROBE], env=env, check=True,
                          capture_output=True, text=True, cwd=REPOSITORY_ROOT).stdout.strip()

  assert run(environ) == 'glibc-huge-pages 1'
  assert run({**environ, allocator.SWITCH: 'system'}) == 'system 0'
