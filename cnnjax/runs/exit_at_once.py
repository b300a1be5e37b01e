"""Stop signals that end the process at once, with one line: for a tool's first moments
(imports, flag parsing) and for work with nothing to save.

This module imports only what Python has loaded before any script runs, so that a command
line can install its handler as its very first statement. The rest of the signal handling
(`preemption`) needs `logging` and `typing`: on a slow machine their import alone is a window
of tens of milliseconds in which a Ctrl-C would end in a KeyboardInterrupt traceback.
"""
import atexit
import os
import signal
import warnings
from collections.abc import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT) + ((signal.SIGHUP,) if hasattr(signal, 'SIGHUP')
                                             else ())
# How a run stopped before training started ends its line: its workdir was not touched.
NOTHING_STARTED = 'before training started: nothing to save. Run the same command again.'
# How a tool that writes nothing (predict, diagnose) ends its line when stopped.
WRITES_NOTHING = 'before it finished (it writes nothing).'


def stop_message(signum: int, detail: str) -> str:
  """What a stop by signal `signum` says, `detail` its end (`preemption.StopRequested`'s
  message too)."""
  return f'Stopped by {signal.Signals(signum).name} {detail}'


def stop_line(detail: str) -> Callable[[int], str]:
  """The line of a stop by signal `signum`, `detail` its end."""
  return lambda signum: stop_message(signum, detail)


def measuring_stopped(tool: str) -> Callable[[int], str]:
  """The line of a benchmark script (`tool`) stopped by a signal: it has nothing to save."""
  return lambda signum: (f'{tool}: stopped by {signal.Signals(signum).name}; nothing is '
                         'reported (a benchmark has nothing to save). Run it again to measure.')


def exiting(line: Callable[[int], str], fd: int = 1) -> Callable[[int, object], None]:
  """A handler that writes `line(signum)` to `fd` and ends the process with exit status
  128 + the signal. It exits rather than raises: an exception from a signal handler can land
  in a garbage-collection callback, which prints it and carries on."""
  def stop(signum, frame):
    del frame
    say(fd, line(signum))
    os._exit(128 + signum)
  return stop


def say(fd: int, line: str) -> None:
  """`line` on `fd` if it still leads somewhere (a closed terminal: the exit matters more)."""
  try:
    os.write(fd, f'{line}\n'.encode('utf-8', 'backslashreplace'))  # A path in any bytes.
  except OSError:
    pass


def from_now(line: Callable[[int], str], fd: int = 1) -> None:
  """For a tool's first moments (imports, flag parsing: a second or so), until a guard
  takes over: a stop signal ends the process at once, writing `line(signum)` to `fd`
  (`exiting`). Signals the process was started with ignored stay ignored. From the first
  call on, the process's last moments are covered too (`_ignored_while_python_ends`)."""
  global _last_moments_covered
  if not _last_moments_covered:  # The first exit callback registered is the last one run.
    atexit.register(_ignored_while_python_ends)
    _last_moments_covered = True
  for s in SIGNALS:
    if signal.getsignal(s) is not signal.SIG_IGN:
      signal.signal(s, exiting(line, fd))


_last_moments_covered = False


def _ignored_while_python_ends() -> None:
  """Stop signals ignored once every other exit callback has run. Python then puts back
  the default action of each signal it had a handler for, before it tears its modules down
  (half a second with jax loaded), and a stop signal in that window ended the process with
  no line and the signal's status, after a run that had finished and saved all. The tool's
  work is done by then, and its status already set: what is left is Python's own cleanup,
  which the signal could only cut short. Python leaves an ignored signal ignored.

  Warnings are off too (`after_the_last_line`), for an end that said no last line."""
  for s in SIGNALS:
    signal.signal(s, signal.SIG_IGN)
  after_the_last_line()


def after_the_last_line() -> None:
  """Warnings off, once a tool has printed its last line (an error, a stop): what the
  process finds as it ends would print after it. A checkpoint write refused in orbax's
  threads leaves a coroutine never awaited, whose two-line RuntimeWarning came after the
  one-line error; multiprocessing's exit callback, run before this module's, warned that
  'ResourceTracker called reentrantly' after a benchmark's stop line."""
  warnings.simplefilter('ignore')
