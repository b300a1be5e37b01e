"""One run per workdir at a time: a lock file beside the workdir.

Two processes training in one workdir would delete each other's checkpoints.
The first takes an exclusive `flock` on `<workdir>.lock` and writes its pid
and host into it; a second one is refused with that holder named. The
operating system drops the lock when its holder dies, however it dies, so a
stale lock file never blocks a new run. The file lies beside the workdir, not
in it, so that `--config.resume=False` can move the old run aside while
locked, and a run refused early leaves no workdir behind.
"""
import contextlib
import errno
import fcntl
import logging
import os
import socket
import time

from cnnjax.errors import UserError
from cnnjax.runs import atomic


class WorkdirBusyError(UserError, RuntimeError):
  """Another process is running in the workdir."""


# What `flock` raises on a file system that keeps no locks (NFS without its lock daemon, some
# FUSE and network mounts): the run goes on unlocked, with a warning, rather than not at all.
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


def lock_path(workdir: str) -> str:
  """`<workdir>.lock` beside the folder the workdir really is: a workdir reached through a
  link (`~/runs` linked to `/mnt/big/runs`, given one way in one terminal and the other way
  in another) takes the same lock as the folder itself."""
  return os.path.realpath(workdir).rstrip('/') + '.lock'


class WorkdirLock:
  """Holds `<workdir>.lock` while the run lasts (a context manager)."""

  def __init__(self, workdir: str, enabled: bool = True):
    """`enabled=False` (processes other than 0 of a multi-host run) holds nothing."""
    self.workdir, self.path, self.enabled, self._fd = workdir, lock_path(workdir), enabled, None
    self._made: list[str] = []  # Folders made for the lock file, deepest first.

  def __enter__(self) -> 'WorkdirLock':
    if self.enabled:
      with atomic.refusals_reported(self.path):  # A full or read-only disk: one line.
        self._fd = self._acquire()
    return self

  def _acquire(self) -> int | None:
    """The locked file's descriptor, with this process written in it; None where the file
    system cannot lock files."""
    self._made = _missing_folders(os.path.dirname(self.path))
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except PermissionError:
        if not os.path.exists(self.path):
          raise  # The folder refuses the new file: said as a disk's refusal.
        raise WorkdirBusyError(
            f'{self.workdir} is locked by a file this user may not open, {self.path}: another '
            'user\'s run may be using the workdir. Choose another --workdir, or, once no run '
            'of theirs is using it, ask them to remove the lock file.') from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
        os.close(fd)
        raise WorkdirBusyError(
            f'{self.workdir} is in use by another run ({holder}); two runs in one workdir '
            'would overwrite each other. Wait for it to finish, stop it, or choose another '
            f'--workdir. (The lock is {self.path}.)') from None
      except OSError as error:
        os.close(fd)
        if error.errno not in NO_LOCKS:
          raise
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)  # Locking nothing, it would only be left behind.
        logging.warning('%s is on a file system that cannot lock files (%s): the run goes on '
                        'without the lock that keeps a second run out of its workdir, so start '
                        'no other run in it until this one ends.', self.workdir,
                        os.strerror(error.errno))
        return None
      try:  # The holder we waited on may have removed the file: lock the one at the path.
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    try:
      os.ftruncate(fd, 0)
      os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}, since '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
    except OSError:
      os.close(fd)  # Unlocks it; the file left behind blocks no later run.
      raise
    return fd

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      os.close(self._fd)
      self._fd = None
    for folder in self._made:  # A run that failed before writing leaves no empty folders.
      try:
        os.rmdir(folder)
      except OSError:  # Not empty: the run (or another) wrote there.
        break
    self._made = []


def _missing_folders(folder: str) -> list[str]:
  """The folders on `folder`'s path that do not exist yet, deepest first."""
  missing = []
  while folder and not os.path.lexists(folder):
    missing.append(folder)
    folder = os.path.dirname(folder)
  return missing
