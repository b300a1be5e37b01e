"""Files a run or an evaluation writes: replaced whole or not at all, appended whole or not
at all, and a disk that refuses them (full, read-only) reported in one line."""
import contextlib
import errno
import os
from typing import IO, Iterator

from cnnjax.errors import UserError

# The disk's refusals, which the user fixes (space, quota, permissions), unlike our bugs.
REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class WriteRefusedError(UserError, OSError):
  """The disk refused a file of the run (full, over quota, read-only)."""


@contextlib.contextmanager
def refusals_reported(path: str) -> Iterator[None]:
  """Turns the disk refusing `path` into a `WriteRefusedError` that names the fix."""
  try:
    yield
  except OSError as error:
    if error.errno not in REFUSALS:
      raise
    raise WriteRefusedError(
        f'Could not write {path} ({os.strerror(error.errno)}). Free some space (or make the '
        'directory writable) and run the same command again.') from error


@contextlib.contextmanager
def replaced_whole(path: str, mode: str = 'w', **open_kwargs) -> Iterator[IO]:
  """A file to write `path`'s new content to; it replaces `path` only once all of it is
  written. A process killed mid-write leaves the previous file as it was, never half of
  each (results, metrics and reports are what a user keeps of a run)."""
  tmp = path + '.tmp'
  with refusals_reported(path):
    try:
      with open(tmp, mode, **open_kwargs) as f:
        yield f
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise
    os.replace(tmp, path)


def append_line(path: str, line: str) -> None:
  """Appends `line` (and a newline) to `path` in one write; a write the disk refuses midway
  is cut back off, so the file never ends in half a line."""
  payload = (line + '\n').encode()
  with refusals_reported(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      start = os.fstat(fd).st_size
      try:
        written = os.write(fd, payload)
        if written != len(payload):  # A short write: the disk filled up after some bytes.
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      except OSError:
        os.ftruncate(fd, start)
        raise
    finally:
      os.close(fd)
