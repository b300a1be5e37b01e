"""What an orbax read that failed leaves behind: its reason, and the reads it abandoned.

A checkpoint, best weights or converted weights directory that cannot be read all fail
the same way inside orbax: tensorstore's error, wrapped in one that quotes the store's
whole spec, and reads still in flight that end after the restore gave up.
"""
import os
import sys

ABANDONED_READ = 'Event loop is closed'


def reason(error: BaseException, limit: int) -> str:
  """`Type: message` of a failed read, the message cut to `limit` characters. Orbax wraps
  tensorstore's errors in one whose message is mostly the store's whole spec; the error
  it wraps says what was wrong (the array, the file, the bytes)."""
  if 'See full TensorStore details' in str(error) and error.__cause__ is not None:
    error = error.__cause__
  return f'{type(error).__name__}: {str(error)[:limit]}'


def drop_abandoned_reads() -> None:
  """A restore that failed (a step rotated away while it was read, a broken file) leaves
  tensorstore reads in flight. As each ends, it posts its result to orbax's event loop,
  closed by then, or fails inside orbax's coroutine, which nothing awaits any more; Python
  reports either as unraisable: a traceback after the tool's own lines, with nothing for
  the user to do. Those alone are dropped. Called before a read, not once it has failed:
  orbax closes its loop as the restore gives up, and the first reads end before the
  caller's `except` runs."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable) -> None:
    closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == ABANDONED_READ)
    code = getattr(unraisable.object, 'cr_code', None)  # A read's coroutine, left unfinished.
    if not (closed_loop or (code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename)):
      previous(unraisable)
  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook
