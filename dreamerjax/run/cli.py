"""What the entry scripts share: errors a user can fix as one line on stderr, not a traceback.

    from dreamerjax.run import cli
    ...
    if __name__ == '__main__':
      cli.run(main)

A bad flag or `--config.*` value, and any `errors.ConfigError`, prints `<script>: error: ...` and
exits with status 2; the other `errors.UserError`s (a busy workdir, no checkpoint that restores,
a full disk) and a diverged run (FloatingPointError) print the same way and exit with status 1.
`--verbose` shows the traceback as well. Storage faults in background threads are kept quiet and
raised once (`errors.install_fault_hooks`).
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from typing import Callable

from absl import app, flags, logging

from dreamerjax.run import errors
from dreamerjax.run.logger import quiet_library_logs

_VERBOSE = flags.DEFINE_bool('verbose', False, 'Show the traceback of an error, not only its '
                             'one-line message.')


def _one_line(message: str) -> str:
  return ' '.join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(message: str, exit_code: int) -> None:
  """Prints `<script>: error: <message>` on stderr (one line) and exits with `exit_code`."""
  sys.stderr.flush()
  print(f'{os.path.basename(sys.argv[0])}: error: {_one_line(message)}', file=sys.stderr,
        flush=True)
  sys.exit(exit_code)


def _unknown_option(argv: list[str]) -> str | None:
  """The first `--config.<path>` of `argv` that names no option, with close matches."""
  from dreamerjax.run import configs, validation

  known = validation.all_options(configs.base())
  for argument in argv[1:]:
    if argument.startswith('--config.'):
      path = argument[len('--config.'):].split('=', 1)[0]
      if path not in known and not any(k.startswith(path + '.') for k in known):
        close = difflib.get_close_matches(path, known, n=3, cutoff=0.6)
        hint = f'; did you mean {", ".join("--config." + c for c in close)}?' if close else ''
        return f'--config.{path} is not an option{hint}'
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override as one line and status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001 - anything raised here comes from the input
    if '--verbose' in argv:
      traceback.print_exc()
    message = (_unknown_option(argv) if isinstance(error, (AttributeError, KeyError)) else None)
    fail(message or str(error), 2)
    raise  # not reached


def start(argv: list[str]) -> None:
  """The start of every entry script's `main`: no positional arguments, INFO logs, and the
  libraries' own chatter quieted."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()


def run(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` with the error handling described above."""

  def guarded(argv):
    errors.install_fault_hooks()
    try:
      return main(argv)
    except Exception as error:
      if isinstance(error, (errors.UserError, FloatingPointError)):  # diverged: says what to do
        known = error
      else:
        known = errors.storage_error(error, 'writing the run')
      if known is None:  # a bug: keep the traceback
        raise
      if _VERBOSE.value:
        traceback.print_exc()
      fail(str(known), getattr(known, 'exit_code', 1))

  app.run(guarded, flags_parser=parse_flags)
