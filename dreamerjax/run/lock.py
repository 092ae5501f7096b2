"""One live run per workdir: a lock file, `<workdir>/run.lock`, that works on shared filesystems.

The lock is created with `O_CREAT | O_EXCL` (atomic on local disks and NFS) and holds who took
it: host, boot id, PID, the process's start time, when it was taken, and a random token. While
the run lives, a daemon thread touches the file every `HEARTBEAT_SECONDS`. A lock is stale, and
is taken over with a warning in the log, when

* its process is gone: same host and boot, and the PID no longer runs (or now names another
  process, whose start time differs);
* its host has rebooted since (same host name, another boot id);
* it was taken on another host and its heartbeat is older than `STALE_MINUTES`.

Any other holder refuses the run with one line naming its host and PID. Should the heartbeat find
the file taken over by another process (a run that was suspended longer than `STALE_MINUTES`),
the run stops at its next step (`errors.raise_pending`) rather than write beside the other one.
In a multi-process run only process 0 takes the lock (see `common.prepare_workdir`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from dreamerjax.run import errors

LOCK_FILE = 'run.lock'
HEARTBEAT_SECONDS = 30.0
STALE_MINUTES = 10.0
# A lock file that cannot be read is being written (milliseconds) or was left half-written.
_UNREADABLE_GRACE_SECONDS = 10.0


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read().strip()
  except OSError:
    return None


def boot_id() -> str:
  """Changes when the machine reboots (Linux); '' where unknown."""
  return _read_text('/proc/sys/kernel/random/boot_id') or ''


def process_start(pid: int) -> str:
  """The start time of process `pid` in clock ticks since boot (Linux); '' where unknown."""
  stat = _read_text(f'/proc/{pid}/stat')
  if not stat or ')' not in stat:
    return ''
  fields = stat.rsplit(')', 1)[1].split()
  return fields[19] if len(fields) > 19 else ''


def _running(pid: int, start: str) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  current = process_start(pid)
  return not (start and current and current != start)


def describe(holder: dict) -> str:
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
  return f"process {holder.get('pid')} on host {holder.get('host')} (since {started})"


class WorkdirLock:
  """The lock of one workdir; `acquire` it before writing there and `release` it at the end."""

  def __init__(self, workdir: str, stale_minutes: float = STALE_MINUTES,
               heartbeat_seconds: float = HEARTBEAT_SECONDS):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.stale_seconds = 60.0 * stale_minutes
    self.heartbeat_seconds = heartbeat_seconds
    self.owner = {'host': socket.gethostname(), 'boot_id': boot_id(), 'pid': os.getpid(),
                  'process_start': process_start(os.getpid()), 'started': time.time(),
                  'token': uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _holder(self) -> tuple[dict | None, float | None]:
    """The holder written in the lock file (None if unreadable) and the file's age in seconds
    (None if there is no file)."""
    try:
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return None, None
    try:
      with open(self.path) as f:
        holder = json.load(f)
      return (holder if isinstance(holder, dict) else None), age
    except (OSError, ValueError):
      return None, age

  def _stale(self, holder: dict | None, age: float) -> str | None:
    """Why the lock of `holder` is stale, or None if its run may be alive."""
    if holder is None:
      return 'its file cannot be read' if age > _UNREADABLE_GRACE_SECONDS else None
    same_host = holder.get('host') == self.owner['host']
    if same_host and holder.get('boot_id') == self.owner['boot_id']:
      if holder.get('pid') == os.getpid():
        return 'this process took it before and did not release it'
      if not _running(int(holder.get('pid', -1)), str(holder.get('process_start', ''))):
        return f"process {holder.get('pid')} on this host is no longer running"
      return None
    if same_host and holder.get('boot_id'):
      return f"host {holder.get('host')} has rebooted since"
    if age > self.stale_seconds:
      return f"host {holder.get('host')} has not refreshed it for {age / 60:.0f} minutes"
    return None

  def _create(self) -> bool:
    """Creates the lock file holding `owner`; False if a lock file exists."""
    try:
      descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(descriptor, 'w') as f:
      json.dump(self.owner, f)
      f.flush()
      os.fsync(f.fileno())
    return True

  def acquire(self) -> None:
    """Takes the lock, or raises `errors.WorkdirBusy` naming the live holder."""
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(100):
      if self._create():
        self._start_heartbeat()
        return
      holder, age = self._holder()
      if age is None:
        continue  # released meanwhile
      reason = self._stale(holder, age)
      if reason is None and holder is None:  # being written right now
        time.sleep(0.05)
      elif reason is None:
        raise errors.WorkdirBusy(
            f'{self.workdir} is in use by the run of {describe(holder)}: stop that run, or use '
            f'another --workdir (if it is gone, delete {self.path})')
      else:
        logging.warning('Taking over the lock of %s from %s: %s.', self.workdir,
                        describe(holder) if holder else 'an unknown process', reason)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
    raise errors.WorkdirBusy(f'could not take the lock {self.path}: other processes keep '
                             'taking it')

  def holds(self) -> bool:
    holder, _ = self._holder()
    return bool(holder) and holder.get('token') == self.owner['token']

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name='dreamerjax-lock-heartbeat',
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      holder, _ = self._holder()
      if holder is not None and holder.get('token') != self.owner['token']:
        errors.report(errors.WorkdirBusy(
            f'{self.workdir} was taken over by the run of {describe(holder)} (this run did not '
            f'refresh its lock for {self.stale_seconds / 60:.0f} minutes); this run stopped '
            'so that the two do not write over each other'))
        return
      try:
        os.utime(self.path)
      except OSError as error:
        errors.record_fault(error, f'refreshing {self.path}')

  def release(self) -> None:
    """Stops the heartbeat and removes the lock file if it is still this run's."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=5.0)
    self._thread = None
    if self.holds():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass


_held: dict[str, WorkdirLock] = {}


def acquire(workdir: str) -> WorkdirLock:
  """Takes the lock of `workdir` for this process (see `WorkdirLock.acquire`)."""
  path = os.path.abspath(workdir)
  if path in _held and _held[path].holds():
    raise errors.WorkdirBusy(f'{path} is in use by another run of this process')
  lock = WorkdirLock(path)
  lock.acquire()
  _held[path] = lock
  return lock


def release(workdir: str) -> None:
  """Releases the lock this process took on `workdir`, if it took one."""
  lock = _held.pop(os.path.abspath(workdir), None)
  if lock is not None:
    lock.release()
