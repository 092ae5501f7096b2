"""The jemalloc re-execution of the entry scripts (dreamerjax/run/allocator.py)."""

import os
import subprocess
import sys

import pytest

from dreamerjax.run import allocator

LIB = '/opt/lib/libjemalloc.so.2'


def test_preload_environ_adds_the_library_once():
  environ = allocator.preload_environ({'PATH': '/bin'}, LIB)
  assert environ == {'PATH': '/bin', 'LD_PRELOAD': LIB, 'MALLOC_CONF': allocator.MALLOC_CONF}
  # Already running under it (e.g. after the re-exec, or a sweep worker): nothing to do.
  assert allocator.preload_environ(environ, LIB) is None


def test_preload_environ_keeps_user_settings():
  environ = allocator.preload_environ({'LD_PRELOAD': 'libfoo.so', 'MALLOC_CONF': 'narenas:2'}, LIB)
  assert environ['LD_PRELOAD'] == f'{LIB}:libfoo.so'
  assert environ['MALLOC_CONF'] == 'narenas:2'


def test_preload_environ_opt_out_and_missing_library():
  assert allocator.preload_environ({allocator.SWITCH: 'system'}, LIB) is None
  assert allocator.preload_environ({}, None) is None
  with pytest.raises(ValueError, match='use jemalloc .* or system'):
    allocator.preload_environ({allocator.SWITCH: 'tcmalloc'}, LIB)


def test_find_jemalloc_explicit_and_conda(tmp_path):
  with pytest.raises(FileNotFoundError, match='DREAMERJAX_JEMALLOC'):
    allocator.find_jemalloc({allocator.LIBRARY: str(tmp_path / 'missing.so')})
  library = tmp_path / 'lib' / 'libjemalloc.so.2'
  library.parent.mkdir()
  library.write_bytes(b'')
  assert allocator.find_jemalloc({allocator.LIBRARY: str(library)}) == str(library)
  assert allocator.find_jemalloc({'CONDA_PREFIX': str(tmp_path)}) == str(library)


_PROBE = ('from dreamerjax.run import allocator; allocator.use_jemalloc(); import sys; '
          'print(int("jemalloc" in open("/proc/self/maps").read()), sys.argv[1:])')


@pytest.mark.skipif(allocator.find_jemalloc() is None or not sys.platform.startswith('linux'),
                    reason='jemalloc is not installed (apt install libjemalloc2)')
@pytest.mark.parametrize('choice,loaded', [('jemalloc', 1), ('system', 0)])
def test_use_jemalloc_reexecutes_with_the_same_arguments(choice, loaded):
  environ = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'MALLOC_CONF')}
  environ[allocator.SWITCH] = choice
  out = subprocess.run([sys.executable, '-c', _PROBE, '--flag=1', 'x'], env=environ, check=True,
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))).stdout
  assert out.strip() == f"{loaded} ['--flag=1', 'x']"
