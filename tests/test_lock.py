"""One live run per workdir: the lock file, its heartbeat, stale locks, and signals while saving."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import pytest

from dreamerjax.run import common, errors, lock
from dreamerjax.run.checkpoint import Checkpointer
from tests.conftest import ROOT


def write_lock(workdir, age_seconds=0.0, **holder):
  owner = {'host': socket.gethostname(), 'boot_id': lock.boot_id(), 'pid': 1,
           'process_start': '', 'started': time.time() - age_seconds, 'token': 'other'}
  owner.update(holder)
  path = os.path.join(workdir, lock.LOCK_FILE)
  with open(path, 'w') as f:
    json.dump(owner, f)
  os.utime(path, (time.time() - age_seconds,) * 2)
  return path


def dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


@pytest.fixture
def holder_process(tmp_path):
  """A live process (not this one) that holds the lock of `tmp_path / 'run'`."""
  workdir = tmp_path / 'run'
  code = textwrap.dedent(f'''
      import sys
      sys.path.insert(0, {ROOT!r})
      from dreamerjax.run import lock
      lock.acquire({str(workdir)!r})
      print('held', flush=True)
      sys.stdin.read()
      lock.release({str(workdir)!r})
  ''')
  process = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == 'held'
  yield workdir, process
  process.stdin.close()
  process.wait(timeout=30)
  assert not (workdir / lock.LOCK_FILE).exists()  # released at the end


@pytest.mark.reliability
def test_second_run_on_a_live_workdir_is_refused_naming_host_and_pid(holder_process, figure):
  figure('second run on a live workdir refused')
  workdir, process = holder_process
  with pytest.raises(errors.WorkdirBusy) as error:
    lock.WorkdirLock(str(workdir)).acquire()
  assert f'process {process.pid} on host {socket.gethostname()}' in str(error.value)
  # The same through the entry script: one line on stderr, exit status 1, nothing written.
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'train.py'),
       '--config=experiments/classic.py:debug', f'--workdir={workdir}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  errors_printed = [line for line in result.stderr.splitlines() if 'error:' in line]
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert len(errors_printed) == 1 and f'process {process.pid}' in errors_printed[0]
  assert sorted(os.listdir(workdir)) == [lock.LOCK_FILE]


@pytest.mark.reliability
@pytest.mark.parametrize('case', ['dead_process', 'rebooted_host', 'silent_other_host',
                                  'unreadable'])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, figure, case):
  figure('stale locks taken over')
  if case == 'dead_process':
    write_lock(tmp_path, pid=dead_pid())
  elif case == 'rebooted_host':
    write_lock(tmp_path, pid=os.getppid(), boot_id='an-earlier-boot')
  elif case == 'silent_other_host':
    write_lock(tmp_path, host='elsewhere', age_seconds=60 * lock.STALE_MINUTES + 60)
  else:
    path = write_lock(tmp_path, age_seconds=60)
    with open(path, 'w') as f:
      f.write('{"host": "half-writ')
    os.utime(path, (time.time() - 60,) * 2)
  with caplog.at_level(logging.WARNING):
    taken = lock.WorkdirLock(str(tmp_path))
    taken.acquire()
  assert taken.holds() and 'Taking over the lock' in caplog.text
  taken.release()
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_live_lock_of_another_host_is_respected(tmp_path):
  write_lock(tmp_path, host='elsewhere', pid=4242, age_seconds=60)
  with pytest.raises(errors.WorkdirBusy, match='process 4242 on host elsewhere'):
    lock.WorkdirLock(str(tmp_path)).acquire()


def test_heartbeat_refreshes_the_lock_and_notices_a_takeover(tmp_path):
  held = lock.WorkdirLock(str(tmp_path), heartbeat_seconds=0.05)
  held.acquire()
  os.utime(held.path, (time.time() - 3600,) * 2)
  time.sleep(0.5)
  assert time.time() - os.stat(held.path).st_mtime < 60
  write_lock(tmp_path, host='elsewhere', pid=77)  # another host judged this run dead
  time.sleep(0.5)
  try:
    with pytest.raises(errors.WorkdirBusy, match='taken over by the run of process 77'):
      errors.raise_pending()
  finally:
    errors.clear_pending()
    held.release()
  assert (tmp_path / lock.LOCK_FILE).exists()  # not ours any more: left alone


@pytest.mark.reliability
def test_signals_during_a_save_leave_a_restorable_checkpoint(tmp_path, monkeypatch, figure):
  from orbax.checkpoint._src.path import atomicity

  figure('signals during a save leaving a restorable checkpoint')
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def signalled(self, *args, **kwargs):  # SIGTERM, then SIGINT, while the step is written
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', signalled)
  state = {'weight': jnp.arange(8.0)}
  with common.StopFlag() as stop:
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(5, state, {'step': 5})
    checkpointer.close()
    time.sleep(0.1)  # the handlers run in the main thread, between bytecodes
  assert stop.signal in ('SIGTERM', 'SIGINT') and stop.count >= 2
  monkeypatch.undo()
  reopened = Checkpointer(str(tmp_path))
  step, restored, meta = reopened.restore_latest({'weight': state['weight']})
  assert step == 5 and meta == {'step': 5}
  reopened.close()
