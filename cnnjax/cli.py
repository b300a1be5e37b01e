"""How the command-line tools report what the user got wrong: one line, exit status 2.

Errors in what the user gave (a config, a workdir, data, a weights file, an
image) are printed as `<tool>: error: <message>` without a traceback; any
other exception is a bug and keeps its traceback.
"""
import contextlib
import logging
import sys
from typing import Iterator


def user_errors() -> tuple[type[BaseException], ...]:
  from cnnjax import checkpointing
  from cnnjax import config_validation
  from cnnjax import datasets
  from cnnjax import diagnostics
  from cnnjax import local_data
  from cnnjax import images
  from cnnjax import pretrained
  from cnnjax import runs
  return (config_validation.ConfigError, checkpointing.IncompatibleCheckpointError,
          datasets.DatasetUnavailableError, local_data.LocalDataError,
          pretrained.WeightsFileError, diagnostics.NonFiniteLossError,
          diagnostics.TrainingCollapsedError, runs.RunNotFoundError, images.ImageInputError)


@contextlib.contextmanager
def reporting_user_errors(tool: str) -> Iterator[None]:
  """Turns a user error raised inside into one line on stderr and exit status 2."""
  errors = user_errors()
  try:
    yield
  except errors as error:
    logging.error('%s', error)
    print(f'{tool}: error: {error}', file=sys.stderr, flush=True)
    sys.exit(2)
