"""Errors a user can act on, and storage faults raised far from where they are noticed.

An entry script (see `cli.main`) prints a `UserError` as one line on stderr and exits with its
`exit_code`: 2 for a configuration the run cannot use, 1 for the rest (a workdir that another run
holds, no checkpoint that restores, a full or failing disk). Any other exception is a bug and
keeps its traceback.

A full disk (ENOSPC) or a failing one (EIO) shows itself in whatever writes next: the metrics
file, TensorBoard, a video, or orbax's background threads, where it used to be printed as a
flood of tracebacks from every thread involved. `storage_reason` recognises such an error
wherever it comes from, `install_fault_hooks` keeps the background threads quiet about it and
records it, and the training loops call `raise_pending` every step (in `Checkpointer.check`) to
end the run within a second with one `StorageError`.
"""

from __future__ import annotations

import errno
import logging as pylogging
import sys
import threading

# errno values that mean the storage cannot take more writes; the run cannot go on.
STORAGE_ERRNOS = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
                  errno.EIO: 'input/output error', errno.EROFS: 'read-only file system',
                  errno.EFBIG: 'file too large'}
# The same faults as tensorstore (orbax's writer) words them in its ValueErrors.
_STORAGE_TEXTS = {'No space left on device': STORAGE_ERRNOS[errno.ENOSPC],
                  'Disk quota exceeded': STORAGE_ERRNOS[errno.EDQUOT],
                  'Input/output error': STORAGE_ERRNOS[errno.EIO],
                  'Read-only file system': STORAGE_ERRNOS[errno.EROFS]}


class UserError(Exception):
  """An error the user fixes (not a bug): printed as one line by the entry scripts."""

  exit_code = 1


class ConfigError(UserError, ValueError):
  """A configuration the run cannot use; names the flag to change."""

  exit_code = 2


class CheckpointError(UserError, RuntimeError):
  """No checkpoint of the run restores, or one could not be saved."""


class RunNotFound(UserError, FileNotFoundError):
  """A workdir that holds no run (no config.json) where a tool needs one."""


class WorkdirBusy(UserError):
  """Another live process holds the workdir."""


class StorageError(UserError, OSError):
  """The disk under the run is full or failing; the run stops without writing more. `reason`
  ('no space left on device') and `doing` ('writing metrics.jsonl') make up the message."""

  def __init__(self, message: str, reason: str = '', doing: str = ''):
    super().__init__(message)
    self.reason, self.doing = reason, doing

  def __str__(self) -> str:
    return self.args[0]


def storage_reason(error: BaseException | None) -> str | None:
  """'no space left on device' (etc.) if `error`, or an error it was raised from, is a storage
  fault; None otherwise."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, StorageError):
      return error.reason or str(error)
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return STORAGE_ERRNOS[error.errno]
    text = str(error)
    for pattern, reason in _STORAGE_TEXTS.items():
      if pattern in text:
        return reason
    if 'RESOURCE_EXHAUSTED' in text and ('writ' in text or 'Writ' in text):
      return STORAGE_ERRNOS[errno.ENOSPC]
    error = error.__cause__ or error.__context__
  return None


def storage_error(error: BaseException, doing: str, newest: str = '') -> StorageError | None:
  """The `StorageError` for `error` met while `doing` ('writing metrics.jsonl'), or None if
  `error` is not a storage fault. `newest`: what the run can resume from ('step 300')."""
  reason = storage_reason(error)
  if reason is None:
    return None
  if isinstance(error, StorageError):
    if not newest:
      return error
    doing = error.doing or doing
  resume = f'newest complete checkpoint: {newest}' if newest else 'complete checkpoints are kept'
  return StorageError(f'{reason} while {doing}; the run stopped ({resume}). Free space (or fix '
                      'the disk) and run the same command to resume.', reason, doing)


# ------------------------------------------------------------------ faults in background threads

_pending: list[UserError] = []
_installed = threading.Lock()
_hooks_installed = False


def report(error: UserError) -> None:
  """Keeps `error`, met outside the loop's thread, for `raise_pending` (the first one only)."""
  if not _pending:
    _pending.append(error)


def record_fault(error: BaseException | None, doing: str = 'writing in the background') -> bool:
  """`report`s the storage fault `error`, if it is one; True if it is."""
  fault = storage_error(error, doing) if error is not None else None
  if fault is not None:
    report(fault)
  return fault is not None


def raise_pending() -> None:
  """Raises the error a background thread reported, if any (once). The training loops call it
  every step."""
  if _pending:
    raise _pending.pop()


def clear_pending() -> None:
  _pending.clear()


def _is_noise(error: BaseException | None) -> bool:
  """Errors that only follow a failed orbax operation (its asyncio loop is gone)."""
  return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'


class _QuietFaults(pylogging.Filter):
  """Drops library log records about a storage fault (recording it) and asyncio's leftovers of
  failed orbax operations."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno < pylogging.ERROR:
      return True
    error = record.exc_info[1] if record.exc_info else None
    if _is_noise(error) or record.getMessage().startswith('Task exception was never retrieved'):
      return False
    from_orbax = any(part in record.pathname for part in ('/orbax/', '/tensorstore/'))
    doing = 'writing a checkpoint' if from_orbax else 'writing in the background'
    if record_fault(error, doing):
      return False
    # orbax reports one failed save in several records, some without the error attached.
    return not (from_orbax and (record_fault(Exception(record.getMessage()), doing)
                                or _pending))


def install_fault_hooks() -> None:
  """Routes storage faults of background threads (and what orbax prints about them) to
  `raise_pending` instead of the console. Idempotent; called by the entry scripts."""
  global _hooks_installed
  with _installed:
    if _hooks_installed:
      return
    _hooks_installed = True
  thread_hook, except_hook = threading.excepthook, sys.excepthook

  def on_thread_error(args):
    if not (_is_noise(args.exc_value) or record_fault(args.exc_value)):
      thread_hook(args)

  def on_error(kind, value, traceback):  # tensorstore's callbacks print through here too
    in_background = threading.current_thread() is not threading.main_thread()
    if not (_is_noise(value) or in_background and record_fault(value)):
      except_hook(kind, value, traceback)

  def on_unraisable(unraisable):  # orbax's coroutines, collected after a failed save
    code = getattr(unraisable.object, 'cr_code', None)
    from_orbax = code is not None and '/orbax/' in code.co_filename
    if not (from_orbax or _is_noise(unraisable.exc_value)
            or record_fault(unraisable.exc_value)):
      unraisable_hook(unraisable)

  unraisable_hook = sys.unraisablehook
  threading.excepthook, sys.excepthook = on_thread_error, on_error
  sys.unraisablehook = on_unraisable
  quiet = _QuietFaults()
  for handler in pylogging.getLogger().handlers:
    handler.addFilter(quiet)
  for name in ('absl', 'asyncio'):
    pylogging.getLogger(name).addFilter(quiet)
