"""SIGTERM/SIGINT/SIGHUP handling: stop where nothing is lost, then exit cleanly.

Colab and preemptible VMs send SIGTERM shortly before a machine goes away, a
user's Ctrl-C sends SIGINT, a closed terminal or SSH session SIGHUP; any of
them can come at any moment of a run. The first signal only sets a flag;
what it leads to depends on where the run is (`SignalGuard.note`, which the
run updates as it goes):

- before training starts (reading data, compiling): the run stops at the
  next check, with nothing new to save;
- while training: the loop checks the flag after each step and at each
  epoch's end (after its validation), and saves the state there, a
  consistent one;
- after training (the test evaluation and the report): the training is
  already saved, so these finish and the run ends with its results.

A second signal exits at once; the last saved checkpoint stands. A signal
that the run was started with ignored (a background job of a script) stays
ignored, as Python itself leaves it.
"""
import contextlib
import logging
import os
import signal
import threading
from typing import Any, Callable, Iterable, Iterator

from cnnjax.runs import exit_at_once
from cnnjax.runs.exit_at_once import SIGNALS

# What the first signal leads to, by where the run is (`SignalGuard.note`).
BEFORE_TRAINING = 'stopping before training starts (nothing new to save)'
WHILE_TRAINING = 'saving a checkpoint at the end of this step, then exiting'
AFTER_TRAINING = 'the training is saved; finishing the test evaluation and the report first'
WHILE_CACHING = 'stopping the caching of the backbone features after this batch'
# How a run stopped while caching features ends its line: its training is where it was saved.
CACHING_STOPPED = ("while caching the backbone features: nothing new to save. Run the same "
                   'command again to continue.')
_active: 'SignalGuard | None' = None  # The guard installed now, if any (guards nest).


class StopRequested(Exception):
  """The run stopped on a signal where nothing was lost; the same command continues it."""

  def __init__(self, signum: int, detail: str):
    super().__init__(exit_at_once.stop_message(signum, detail))
    self.signum = signum

  @classmethod
  def at_step(cls, signum: int, step: int) -> 'StopRequested':
    return cls(signum, f'at step {step}; a checkpoint was saved. Run the same command again '
                       'to continue.')


class SignalGuard:
  """Records the first stop signal; exits the process on the second."""

  def __init__(self):
    self.signum: int | None = None
    self.note = BEFORE_TRAINING

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:  # Second signal: the user means it.
      exit_at_once.say(2, f'Stopped at once by a second {name}; the last saved checkpoint stands. Run the '
              'same command again to continue from it.')
      os._exit(128 + signum)
    self.signum = signum
    logging.warning('Received %s: %s (send it again to exit at once).', name, self.note)

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def stop_if_requested(self, detail: str) -> None:
    """Raises `StopRequested` with `detail` if a signal came."""
    if self.signum is not None:
      raise StopRequested(self.signum, detail)


@contextlib.contextmanager
def handling(signals: Iterable[int], handler: Callable[[int, Any], Any]) -> Iterator[None]:
  """`handler` for each of `signals` that the process does not ignore (a signal a background
  job was started with ignored stays ignored, as Python leaves it); the previous handlers are
  put back afterwards. Only the main thread receives signals: elsewhere, nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in signals}
  for s, old in previous.items():
    if old is not signal.SIG_IGN:
      signal.signal(s, handler)
  try:
    yield
  finally:
    for s, old in previous.items():
      if old is not None:  # None: installed outside Python, nothing to put back.
        signal.signal(s, old)


@contextlib.contextmanager
def held_back(signals: Iterable[int]) -> Iterator[None]:
  """Blocks `signals` in this thread for the block's length, handlers unchanged: a process
  started inside inherits the block (until it sets its own handlers), while this process
  still acts on them (its other threads take them, or they wait for the block's end), where
  a SIG_IGN for the child's sake would lose them. Only the main thread's handlers act on
  signals: elsewhere, nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def stopping_at_once(detail: str) -> Iterator[None]:
  """For work with nothing to save (evaluating, predicting): the first stop signal ends the
  process where it finds it, with `exit_at_once.stop_line(detail)`."""
  with handling(SIGNALS, exit_at_once.exiting(exit_at_once.stop_line(detail))):
    yield


@contextlib.contextmanager
def guard_signals() -> Iterator[SignalGuard]:
  """Installs a guard (main thread only; elsewhere it never fires). Inside another guard's
  block, that guard is the one: an early one (`cnnjax.main`) also covers the imports."""
  global _active
  if _active is not None:
    yield _active
    return
  guard = SignalGuard()
  if threading.current_thread() is not threading.main_thread():
    yield guard
    return
  with handling(SIGNALS, guard._handle):
    _active = guard
    try:
      yield guard
    finally:
      _active = None
