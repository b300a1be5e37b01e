"""Files a run or an evaluation writes: replaced whole or not at all, appended whole or not
at all, and a disk that refuses them (full, read-only) reported in one line."""
import contextlib
import errno
import itertools
import os
import re
import time
from typing import IO, Iterator

from cnnjax.errors import UserError

# The disk's refusals, which the user fixes (space, quota, permissions, a file-size limit),
# unlike our bugs; and what the user does about each.
_FREE_SPACE = 'Free some space (or make the directory writable)'
FIXES = {
    errno.ENOSPC: _FREE_SPACE, errno.EDQUOT: _FREE_SPACE, errno.EROFS: _FREE_SPACE,
    errno.EACCES: _FREE_SPACE,
    # A shell's `ulimit -f`, or a file system with small files only (FAT32's 4 GiB).
    errno.EFBIG: 'Raise the file-size limit (`ulimit -f unlimited`) or write to a file system '
                 'that takes larger files,',
}


class WriteRefusedError(UserError, OSError):
  """The disk refused a file of the run (full, over quota, read-only)."""


def refusal_errno(error: BaseException | None) -> int | None:
  """The errno of a refused write somewhere in `error`'s chain: an `OSError`'s, or the
  `os_error_code='28'` of the ValueError that tensorstore (under orbax) raises instead."""
  while error is not None:
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
      code = _tensorstore_errno(str(error))
    if code in FIXES:
      return code
    error = error.__cause__ or error.__context__
  return None


def names_a_refusal(text: str) -> bool:
  """Whether `text` (a library's log line) quotes tensorstore's error for a refused write."""
  return _tensorstore_errno(text) in FIXES


def _tensorstore_errno(text: str) -> int | None:
  found = re.search(r"os_error_code='(\d+)'", text)
  return int(found.group(1)) if found else None


@contextlib.contextmanager
def refusals_reported(what: str, then: str = 'run the same command again.',
                      error_type: type[WriteRefusedError] = WriteRefusedError
                      ) -> Iterator[None]:
  """Turns the disk refusing to write `what` (a path, or words naming it) into one
  `error_type` line that names the fix; any other exception passes unchanged."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except  # Libraries wrap OSErrors.
    code = refusal_errno(error)
    if code is None or isinstance(error, UserError):  # Said already, in its own words.
      raise
    raise error_type(f'Could not write {what} ({os.strerror(code)}). {FIXES[code]} and '
                     f'{then}') from error


@contextlib.contextmanager
def replaced_whole(path: str, mode: str = 'w', **open_kwargs) -> Iterator[IO]:
  """A file to write `path`'s new content to; it replaces `path` only once all of it is
  written. A process killed mid-write leaves the previous file as it was, never half of
  each (results, metrics and reports are what a user keeps of a run). Text is UTF-8 on
  every system (class names in a report may be any language's)."""
  if 'b' not in mode:
    open_kwargs.setdefault('encoding', 'utf-8')
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


def aside_name(path: str) -> str:
  """A free name beside `path` to move it to, over nothing: `<path>.previous-<time>`, and
  `-2`, `-3`... for a second move within the same second."""
  aside = f'{os.path.abspath(path).rstrip("/")}.previous-{time.strftime("%Y%m%d-%H%M%S")}'
  candidates = itertools.chain([aside], (f'{aside}-{n}' for n in itertools.count(2)))
  return next(target for target in candidates if not os.path.lexists(target))
