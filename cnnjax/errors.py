"""The one kind of error that means "the user gave us something wrong".

Every error a user can fix (a config field, a workdir, data files, a weights
file, an image, a training run that went bad) derives from `UserError`, so
the command-line tools report all of them the same way: one line naming the
problem and the fix, exit status 2 (see `cnnjax.cli`). Anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
  """Something the user gave or asked for is wrong; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
  """A config field is unknown or invalid; the message names it."""


def unreadable_message(path: str, opened: str = '') -> str:
  """How every tool names a file or folder this user may not read, with the chmod that opens
  it (`opened`: the folder to open, where it is more than `path`)."""
  return (f'{path} cannot be read by this user (permission denied): make it readable '
          f'(chmod -R a+rX {opened or path})')
