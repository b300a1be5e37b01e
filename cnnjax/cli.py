"""How the command-line tools report what the user got wrong: one line, exit status 2.

Errors in what the user gave (a config, a workdir, data, a weights file, an
image; every `cnnjax.errors.UserError`) are printed as
`<tool>: error: <message>` without a traceback; any other exception is a bug
and keeps its traceback.
"""
import contextlib
import sys
from typing import Iterator

from cnnjax.errors import UserError


@contextlib.contextmanager
def reporting_user_errors(tool: str) -> Iterator[None]:
  """Turns a user error raised inside into one line on stderr and exit status 2."""
  try:
    yield
  except UserError as error:
    print(f'{tool}: error: {error}', file=sys.stderr, flush=True)
    sys.exit(2)


def quiet_console_by_default() -> None:
  """Library logging (orbax's per-save lines, jax's backend probing, TensorFlow's C++ logs)
  stays off unless asked for: without --verbosity, absl logs warnings only; --verbosity=0
  (or 1) brings the INFO (and debug) lines back. The run's own lines are printed, not logged.
  Call it from an absl `main`, once the flags are parsed."""
  from absl import flags
  if not flags.FLAGS['verbosity'].present:
    flags.FLAGS.verbosity = -1  # absl's WARNING.
