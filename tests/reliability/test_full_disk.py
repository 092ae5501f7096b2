"""A disk that fills (ENOSPC) or fails (EIO) under a running debug run: the run ends within
seconds with one line on stderr and exit status 1, without tracebacks from orbax's threads, and
its newest complete checkpoint restores."""

import os
import subprocess
import sys
import time

import pytest

from dreamerjax.run import common
from tests.conftest import ROOT


@pytest.mark.reliability
@pytest.mark.parametrize('where,error_name,after', [('checkpoint', 'ENOSPC', 2),
                                                    ('metrics', 'EIO', 3)])
def test_full_or_failing_disk_ends_the_run_in_one_line(tmp_path, figure, where, error_name,
                                                       after):
  figure('I/O faults ending the run with one clear error')
  workdir, marker = tmp_path / 'run', tmp_path / 'failed_at'
  command = [sys.executable, os.path.join(ROOT, 'tests', 'reliability', 'faulty_train.py'),
             where, error_name, str(after), str(marker),
             '--config=experiments/classic.py:task=CartPole-v1,debug', f'--workdir={workdir}',
             '--config.run.steps=100000', '--config.run.save_every_minutes=0.005']
  result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
  ended = time.time()
  errors_printed = [line for line in result.stderr.splitlines() if 'error:' in line]
  assert result.returncode == 1, result.stderr[-3000:]
  assert len(errors_printed) == 1 and os.strerror(getattr(__import__('errno'), error_name)
                                                  ).lower() in errors_printed[0], errors_printed
  assert 'Traceback' not in result.stderr and 'Exception' not in result.stderr, \
      result.stderr[-3000:]
  assert ended - float(marker.read_text()) < 10  # seconds from the fault to the exit
  if where == 'checkpoint':
    steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
    assert len(steps) == after and f'step {steps[-1]})' in errors_printed[0]
    step, _, _, meta = common.restore(str(workdir))
    assert step == steps[-1] == meta['counters']['env_step']
