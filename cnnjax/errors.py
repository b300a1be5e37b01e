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
