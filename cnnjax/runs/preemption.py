"""SIGTERM/SIGINT handling: save at the current step, then exit cleanly.

Colab and preemptible VMs send SIGTERM (a user Ctrl-C sends SIGINT) shortly
before a machine goes away. The first signal only sets a flag that the
training loop checks after each step, so the state saved is a consistent
one; a second signal exits at once.
"""
import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
  """Training stopped on a signal after saving a checkpoint; the run can resume."""

  def __init__(self, signum: int, step: int):
    super().__init__(f'Stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was '
                     'saved. Run the same command again to continue.')
    self.signum, self.step = signum, step


class SignalGuard:
  """Records the first stop signal; exits the process on the second."""

  def __init__(self):
    self.signum: int | None = None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      os._exit(128 + signum)  # Second signal: the user means it.
    self.signum = signum
    logging.warning('Received %s: saving a checkpoint at the end of this step, then exiting '
                    '(send it again to exit at once).', signal.Signals(signum).name)

  @property
  def requested(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def guard_signals() -> Iterator[SignalGuard]:
  """Installs the guard while training (main thread only; elsewhere it never fires)."""
  guard = SignalGuard()
  if threading.current_thread() is not threading.main_thread():
    yield guard
    return
  previous = {s: signal.signal(s, guard._handle) for s in SIGNALS}
  try:
    yield guard
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
