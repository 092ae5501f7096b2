"""Runs scripts/train.py with a storage fault injected, for the reliability tests:

    python tests/reliability/faulty_train.py <checkpoint|metrics> <errno name> <after> <marker> \
        <train.py flags...>

`checkpoint`: orbax's background commit of every checkpoint step after the first `after` fails (as
it does when the disk fills while a step is written). `metrics`: writes to metrics.jsonl fail after
`after` rows. The time of the first failure is written to the file `marker`.
"""

import errno
import os
import runpy
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def fail(error_number: int, marker: str):
  if not os.path.exists(marker):
    with open(marker, 'w') as f:
      f.write(str(time.time()))
  raise OSError(error_number, os.strerror(error_number))


def inject_checkpoint(error_number: int, after: int, marker: str) -> None:
  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  committed = []

  async def failing(self, *args, **kwargs):
    if self._final_path.name.isdigit():  # a step (not one of its items)
      if len(committed) >= after:
        fail(error_number, marker)
      committed.append(self._final_path.name)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = failing


def inject_metrics(error_number: int, after: int, marker: str) -> None:
  from dreamerjax.run import logger

  class Failing:
    def __init__(self, file):
      self._file, self._left = file, after

    def write(self, text):
      self._left -= 1
      if self._left < 0:
        fail(error_number, marker)
      return self._file.write(text)

    def __getattr__(self, name):
      return getattr(self._file, name)

  logger.open = lambda path, mode='r', **kwargs: (
      Failing(open(path, mode, **kwargs)) if path.endswith('metrics.jsonl') and 'a' in mode
      else open(path, mode, **kwargs))


if __name__ == '__main__':
  where, error_name, after, marker, *flags = sys.argv[1:]
  {'checkpoint': inject_checkpoint, 'metrics': inject_metrics}[where](
      getattr(errno, error_name), int(after), marker)
  sys.argv = [os.path.join(ROOT, 'scripts', 'train.py'), *flags]
  runpy.run_path(sys.argv[0], run_name='__main__')
