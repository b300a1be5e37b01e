"""Files a run or an evaluation rewrites, replaced whole or not at all."""
import contextlib
import os
from typing import IO, Iterator


@contextlib.contextmanager
def replaced_whole(path: str, mode: str = 'w', **open_kwargs) -> Iterator[IO]:
  """A file to write `path`'s new content to; it replaces `path` only once all of it is
  written. A process killed mid-write leaves the previous file as it was, never half of
  each (results, metrics and reports are what a user keeps of a run)."""
  tmp = path + '.tmp'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)
