"""How the command-line tools report what the user got wrong: one line, exit status 2.

Errors in what the user gave (a config, a workdir, data, a weights file, an
image; every `cnnjax.errors.UserError`) are printed as
`<tool>: error: <message>` without a traceback; any other exception is a bug
and keeps its traceback.
"""
import argparse
import contextlib
import difflib
import errno
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator

from cnnjax.errors import UserError
from cnnjax.runs import exit_at_once

# Config fields that hold paths: '~' in them means the home directory, as in a shell, which
# expands it in `--config.local_data_dir ~/data` but not in `--config.local_data_dir=~/data`.
PATH_FIELDS = ('local_data_dir', 'tfds_data_dir', 'pretrained_path')


@contextlib.contextmanager
def reporting_user_errors(tool: str) -> Iterator[None]:
  """Turns a user error raised inside into one line on stderr and exit status 2."""
  try:
    yield
  except UserError as error:
    exit_with_error(tool, str(error))


@contextlib.contextmanager
def running_as_tool(tool: str, stopped_before_saving: str | None = None) -> Iterator[None]:
  """Around a tool's work: user errors as one line, exit status 2 (`reporting_user_errors`);
  a stop signal as one line, exit status 128 + the signal (`cnnjax.runs.preemption`: a run
  inside saves where nothing is lost). A tool with nothing to save passes
  `stopped_before_saving`, the end of that line (e.g. 'before writing anything.'), and exits
  where the signal finds it (`preemption.stopping_at_once`)."""
  from cnnjax.runs import preemption
  stops = (preemption.guard_signals() if stopped_before_saving is None
           else preemption.stopping_at_once(stopped_before_saving))
  with outliving_the_console():
    show_own_warnings_plainly(tool)
    with reporting_user_errors(tool), stops:
      try:
        yield
      except preemption.StopRequested as stop:
        print(stop, flush=True)
        exit_at_once.after_the_last_line()
        sys.exit(128 + stop.signum)


@contextlib.contextmanager
def outliving_the_console() -> Iterator[None]:
  """A tool's stdout and stderr, while it works, as streams that fall silent when their
  console goes away (`SilentWhenGone`): a closed terminal, or a reader that exited (`| head`,
  a `| tee` ended with its SSH session), would otherwise end a run in BrokenPipeError at its
  next line. The run goes on to the end (or, on the SIGHUP of a closed terminal, to its
  checkpoint) and writes its records (metrics, results, reports) as ever."""
  streams = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = SilentWhenGone(streams[0]), SilentWhenGone(streams[1])
  try:
    yield
  finally:
    sys.stdout, sys.stderr = streams


class SilentWhenGone:
  """A text stream whose writes, once its reader is gone (EPIPE, or EIO from a closed
  terminal), go nowhere instead of raising. /dev/null then takes the place of the file
  descriptor itself, so that what holds the stream too (tqdm's bars, logging) follows.
  A character the console's encoding lacks (a class named '猫' on an ASCII or cp1252
  console) is written as its escape, as Python's stderr does, not raised."""
  GONE = (errno.EPIPE, errno.EIO)

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    try:
      try:
        return self._stream.write(text)
      except UnicodeEncodeError:
        encoding = self._stream.encoding or 'ascii'
        self._stream.write(text.encode(encoding, 'backslashreplace').decode(encoding))
        return len(text)
    except OSError as error:
      self._gone(error)
      return len(text)

  def flush(self) -> None:
    try:
      self._stream.flush()
    except OSError as error:
      self._gone(error)

  def _gone(self, error: OSError) -> None:
    if error.errno not in self.GONE:
      raise error
    try:
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, self._stream.fileno())
      os.close(devnull)
      self._stream.flush()  # What the reader never took, to /dev/null.
    except (OSError, ValueError):  # A stream without a descriptor: its writes are dropped.
      pass

  def __getattr__(self, name: str):
    return getattr(self._stream, name)


def quiet_console_by_default() -> None:
  """Library logging (orbax's per-save lines, jax's backend probing, TensorFlow's C++ logs)
  stays off unless asked for: without --verbosity, absl logs warnings only; --verbosity=0
  (or 1) brings the INFO (and debug) lines back. The run's own lines are printed, not logged.
  Call it from an absl `main`, once the flags are parsed."""
  from absl import flags
  if not flags.FLAGS['verbosity'].present:
    flags.FLAGS.verbosity = -1  # absl's WARNING.


def show_own_warnings_plainly(tool: str) -> None:
  """cnnjax's own warnings on stderr as `<tool>: warning: <message>`, like its errors, rather
  than behind absl's time, thread and source line (an absl tool without --verbosity) or
  Python's `WARNING:root:` (an argparse tool). Logging that someone else set up (--verbosity,
  a notebook, pytest) is left as it is."""
  from absl import flags
  from absl import logging as absl_logging
  if absl_logging.get_absl_handler() in logging.root.handlers:  # An absl app.
    if flags.FLAGS['verbosity'].present:
      return
    handler = absl_logging.get_absl_handler().python_handler
  elif not logging.root.handlers:
    handler = logging.StreamHandler()
    logging.root.addHandler(handler)
  else:
    return
  handler.setFormatter(OwnWarningsPlain(tool, handler.formatter))


class OwnWarningsPlain(logging.Formatter):
  """Records logged by cnnjax's modules as `<tool>: warning: <message>` (`error` for
  errors); a library's records as `library` formats them."""

  PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

  def __init__(self, tool: str, library: logging.Formatter | None):
    super().__init__()
    self.tool, self.library = tool, library or logging.Formatter()

  def format(self, record: logging.LogRecord) -> str:
    if not os.path.abspath(record.pathname).startswith(self.PACKAGE_DIR):
      return self.library.format(record)
    return f'{self.tool}: {record.levelname.lower()}: {record.getMessage()}'


def flags_parser(tool: str, defaults: Callable[[], Any] | None = None
                 ) -> Callable[[list[str]], list[str]]:
  """An absl flags parser (`app.run(main, flags_parser=...)`) that reports what is wrong with
  the command line (a flag value, a config file that is missing or does not run, a config
  field that does not exist) in one line, exit status 2, instead of a traceback.
  `defaults` (configs/default.py's `get_config`) lets it name more of what is wrong."""
  from absl import flags

  def parse(argv: list[str]) -> list[str]:
    if '-h' in argv[1:argv.index('--') if '--' in argv else None]:  # argparse's, absl's '?'.
      argv = [argv[0], '--help']
    try:
      if 'config' in flags.FLAGS:
        given = config_files_given(argv)
        swallowed = next((file for file in given if file.startswith('--')), None)
        if swallowed:
          exit_with_error(tool, swallowed_message('config', swallowed))
        if len(given) > 1:  # absl would define every override flag twice, and say only that.
          exit_with_error(tool, f'--config is given {len(given)} times ({", ".join(given)}): '
                          'give one config file, and change its fields with '
                          '--config.<field>=value.')
        reordered = config_file_first(argv)
        if argv == sys.argv:  # ml_collections reads the overrides' order from sys.argv.
          sys.argv[:] = reordered
        argv = reordered
      with _absl_warnings_off(), _help_is_success(argv):
        remaining = flags.FLAGS(argv)  # ml_collections' 'get_config() returned None': ours.
      if 'config' in flags.FLAGS:  # ml_collections reports a config file it failed to load
        flags.FLAGS['config'].value.to_dict()  # only when the config is first used.
        expand_home_in_paths(flags.FLAGS['config'].value)
      if 'workdir' in flags.FLAGS and flags.FLAGS.workdir:
        flags.FLAGS.workdir = os.path.expanduser(flags.FLAGS.workdir)
    except Exception as error:  # pylint: disable=broad-except  # Config files run user code.
      exit_with_error(tool, flag_error_message(error, defaults and defaults()))
    swallowed = flag_given_a_flag(flags.FLAGS)
    if swallowed:
      exit_with_error(tool, swallowed)
    if len(remaining) > 1:
      exit_with_error(tool, f'unexpected argument(s) {" ".join(remaining[1:])}: every option '
                      'is a flag, written --name=value (e.g. --config.batch_size=128).')
    return remaining
  return parse


_HELP_FLAGS = ('help', 'helpshort', 'helpfull', 'helpxml', '?')


@contextlib.contextmanager
def _help_is_success(argv: list[str]) -> Iterator[None]:
  """absl ends `--help` (and `--helpfull`, ...) with exit status 1, as if it had failed; a
  script that checks a tool by its help, and argparse's tools, expect 0. (Only where `argv`
  asks for help: a config file may exit 1 of its own accord.)"""
  try:
    yield
  except SystemExit as stop:
    if stop.code == 1 and any(arg.startswith('-') and arg.lstrip('-') in _HELP_FLAGS
                              for arg in argv[1:]):
      sys.exit(0)
    raise


@contextlib.contextmanager
def _absl_warnings_off() -> Iterator[None]:
  """Library warnings silenced where cnnjax says the same in its own line."""
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def not_a_config(loaded, error: Exception, text: str) -> str | None:
  """What is wrong with a config file whose get_config() gave no ConfigDict, or None. It
  fails where the config is next used, each way saying so differently: as the flag's value
  (absl refuses None), at an override (KeyError), at to_dict() (AttributeError). `loaded` is
  what ml_collections holds: the ConfigDict, what get_config() returned instead, or its
  stand-in for a file it failed to load, which raises that failure when used."""
  import ml_collections
  if 'Flag --config must have a value other than None' in text:
    return returned_not_a_config('NoneType')
  holder = _OVERRIDE_HOLDER.search(text)
  if isinstance(error, KeyError) and holder and '.' not in holder[2]:  # --config.<field>=
    return returned_not_a_config(holder[1])
  if isinstance(error, KeyError) and error.args and any(
      arg.startswith(f'--config.{error.args[0]}') for arg in sys.argv):
    return returned_not_a_config('a dict or other mapping')  # A ConfigDict raises AttributeError.
  if (loaded is None or isinstance(loaded, ml_collections.ConfigDict)
      or type(loaded).__name__ == '_ErrorConfig'):
    return None
  return returned_not_a_config(type(loaded).__name__)


def not_python_config(given: list[str], loaded) -> str | None:
  """The error for a `--config` file that is not Python and did not load, or None. A run's
  saved `config.json` is the one users reach for (JSON loaded as Python fails with
  "name 'false' is not defined"); it names the command that continues that run."""
  import ml_collections
  path = given[-1] if given else ''
  if (not os.path.isfile(path) or path.endswith('.py')
      or isinstance(loaded, ml_collections.ConfigDict)):
    return None
  usage = ('--config takes a Python file whose get_config() returns the config, as '
           'configs/cnn_simple.py does')
  workdir = os.path.dirname(path) or '.'
  if os.path.basename(path) != 'config.json' or not os.path.isdir(
      os.path.join(workdir, 'checkpoints')):
    return f'--config={path} is not a config file: {usage}.'
  name = _saved_config_name(path)
  repo_config = os.path.join(_CONFIGS_DIR, f'{name}.py')
  started_with = (f'--config={_shown(repo_config)}' if name and os.path.isfile(repo_config)
                  else '--config=<the config file it was started with>')
  return (f'--config={path} is the config a run saved, not a config file: {usage}. To '
          f'continue or finish that run, give the file it was started with and its workdir '
          f'({started_with} --workdir={workdir}); python -m cnnjax.evaluate '
          f'--workdir={workdir} evaluates it as it stands.')


def _saved_config_name(path: str) -> str | None:
  """`config.name` of a run's saved config.json, or None where it cannot be read."""
  import json
  try:
    with open(path) as file:
      name = json.load(file).get('name')
  except (OSError, ValueError, AttributeError):
    return None
  return name if isinstance(name, str) and re.fullmatch(r'\w+', name) else None


def returned_not_a_config(type_name: str) -> str:
  if type_name == 'NoneType':
    return "the config file's get_config() returned None (a missing 'return config'?)."
  return (f"the config file's get_config() returned {type_name}, not an "
          'ml_collections.ConfigDict: build one from configs/default.py\'s and return it, as '
          'configs/cnn_simple.py does.')


# ml_collections' KeyError for an override path through a value: its type, the path.
_OVERRIDE_HOLDER = re.compile(r"Attribute <class '(\w+)'>\.\w+ does not exist .* Attempting "
                              r"to lookup: ([\w.]+)")


def _string_field_on(path: list[str], defaults) -> str | None:
  """The first field along `path` in `defaults` (configs/default.py's config) that holds a
  string, or None."""
  import ml_collections
  node = defaults
  for depth, key in enumerate(path):
    if not isinstance(node, dict | ml_collections.ConfigDict) or key not in node:
      return None
    node = node[key]
    if isinstance(node, str):
      return '.'.join(path[:depth + 1])
  return None


def override_path_message(error: Exception, text: str, defaults=None) -> str | None:
  """What is wrong with a `--config.<path>=value` whose path ml_collections cannot follow
  (a field of a number, of a string where `defaults`, configs/default.py's config, is
  given, a tuple's item), or None."""
  holder = _OVERRIDE_HOLDER.search(text)
  if isinstance(error, KeyError) and holder:
    path = holder[2]
    parent = path.rsplit('.', 1)[0]
    return f'--config.{path}: config.{parent} is a value ({holder[1]}), not a group of fields.'
  if isinstance(error, TypeError) and 'string indices' in text and defaults is not None:
    for arg in sys.argv:  # ml_collections' error names no flag: find it among the overrides.
      path = arg.removeprefix('--config.').split('=')[0].split('.')
      parent = _string_field_on(path[:-1], defaults) if arg.startswith('--config.') else None
      if parent:
        return (f'--config.{".".join(path)}: config.{parent} is a value (str), not a group '
                'of fields.')
  unparsed = re.search(r"Could not parse '([\w.]+)'", text)
  if isinstance(error, ValueError) and unparsed:
    return (f'--config.{unparsed[1]} names no config field: a field is named by its group '
            "and name (config.augment.flip), and a tuple is set whole "
            "(--config.lr_boundaries='(0.5, 0.8)').")
  return None


def exit_with_error(tool: str, message: str) -> None:
  """`<tool>: error: <message>` on stderr, exit status 2: how every tool ends on bad input."""
  print(f'{tool}: error: {message}', file=sys.stderr, flush=True)
  exit_at_once.after_the_last_line()
  sys.exit(2)


def _config_file_flags(args: list[str]) -> list[tuple[int, int, str]]:
  """(position, arguments taken, file) of each `--config=FILE` or `--config FILE` in `args`
  (a command line without its program), before any `--`."""
  found = []
  for i, arg in enumerate(args):
    if arg == '--':
      break
    if arg.startswith('--config='):
      found.append((i, 1, arg.removeprefix('--config=')))
    elif arg == '--config' and i + 1 < len(args):
      found.append((i, 2, args[i + 1]))
  return found


def config_file_first(argv: list[str]) -> list[str]:
  """`argv` with `--config=FILE` (or `--config FILE`) moved before the other flags, as
  `--config=FILE`.
  ml_collections refuses a `--config.<field>=` override met before the file it overrides;
  a user may write them in any order."""
  args = list(argv[1:])
  given = _config_file_flags(args)
  if not given:
    return list(argv)
  i, taken, file = given[0]  # '~' expanded, as in every other path flag.
  return [argv[0], f'--config={os.path.expanduser(file)}', *args[:i], *args[i + taken:]]


def flag_given_a_flag(flag_values) -> str | None:
  """The error for the first of the command line's flags (config fields included) whose
  value is another flag, or None: `--workdir --config.batch_size=8`, the value forgotten,
  makes absl take the next flag as the workdir, and that flag is then never applied."""
  from ml_collections import config_dict
  found = [(name, flag_values[name].value) for name in flag_values
           if flag_values[name].present and isinstance(flag_values[name].value, str)
           and flag_values[name].value.startswith('--')]
  if 'config' in flag_values and isinstance(flag_values['config'].value,
                                            config_dict.ConfigDict):
    found += [(f'config.{name}', value) for name, value in
              _leaves(flag_values['config'].value.to_dict()) if isinstance(value, str)
              and value.startswith('--')]
  return swallowed_message(*found[0]) if found else None


def _leaves(tree: dict, prefix: str = '') -> Iterator[tuple[str, object]]:
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def swallowed_message(name: str, value: str) -> str:
  return (f'--{name} was given no value and took the next flag, {value}, as its value: write '
          f'--{name}=VALUE (the next flag was not applied).')


def config_files_given(argv: list[str]) -> list[str]:
  """The files of each `--config=FILE` (or `--config FILE`) in `argv`, before any `--`."""
  return [file for _, _, file in _config_file_flags(list(argv[1:]))]


def expand_home_in_paths(config) -> None:
  """'~' or '~user' at the start of the config's path fields, expanded in place."""
  for field in PATH_FIELDS:
    if isinstance(config.get(field), str):
      config[field] = os.path.expanduser(config[field])


# cnnjax's own config files, beside the package in a checkout.
_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'configs')


def _shown(path: str) -> str:
  """`path` relative to the current directory where it lies below it, else absolute."""
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


def _named_path(reason: str) -> str | None:
  match = re.search(r"(?:No such file or directory|Is a directory): '(.+)'$", reason)
  return match[1] if match else None


def config_file_hint(missing: str | None) -> str:
  """'; did you mean --config=FILE?' for a config path that does not exist, FILE the config
  file nearest to it in spelling, in the folder it names or in cnnjax's configs/ (a typo,
  a missing '.py', 'configs.cnn_simple'), '' where none is near; for a folder, a file in it."""
  import glob
  if missing and os.path.isdir(missing):
    found = sorted(glob.glob(os.path.join(glob.escape(missing), '[!_]*.py')))
    example = next((path for path in found if path.endswith('cnn_simple.py')), None)
    return (f'; --config takes a file: one of the {len(found)} .py files in it, e.g. '
            f'--config={example or found[0]}' if found
            else '; --config takes a config file, e.g. --config=configs/cnn_simple.py')
  if not missing or os.path.exists(missing):
    return ''
  by_name = {}  # Each config file by its name alone, as the user's path would name it.
  for folder in (_CONFIGS_DIR, os.path.dirname(missing) or '.'):
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), '[!_]*.py'))):
      by_name[os.path.basename(path)[:-3]] = _shown(path)
  name = re.split(r'[./\\]', missing.removesuffix('.py'))[-1]
  match = difflib.get_close_matches(name, sorted(by_name), n=1, cutoff=0.75)
  return f'; did you mean --config={by_name[match[0]]}?' if match else ''


def flag_error_message(error: Exception, defaults=None) -> str:
  """What went wrong parsing a command line's config flags, as one line (`defaults`:
  configs/default.py's config, which entry points pass, names more)."""
  text = str(error)
  from absl import flags
  mistyped = getattr(error, 'flagname', 'config.').split('.')[0] != 'config'  # e.g. --confg
  if ('config' in flags.FLAGS and not mistyped
      and not any(arg == '--config' or arg.startswith('--config=') for arg in sys.argv)):
    bare = [arg for arg in sys.argv[1:] if arg.endswith('.py') and not arg.startswith('-')]
    example = bare[0] if bare else 'configs/cnn_simple.py'
    return (f'no config file given: pass --config=FILE (e.g. --config={example}); '
            + (f'{example} alone is an argument, not the config. ' if bare else '')
            + '--config.<field>=value flags then override its fields.')
  loaded = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  foreign = not_python_config(config_files_given(sys.argv), loaded)
  if foreign:
    return foreign
  wrong_type = not_a_config(loaded, error, text)
  if wrong_type:
    return wrong_type
  bad_path = override_path_message(error, text, defaults)
  if bad_path:
    return bad_path
  if isinstance(error, AttributeError) and "has no attribute 'get_config'" in text:
    return ('the config file defines no get_config(): a config file is a Python file whose '
            'get_config() returns the config, as configs/cnn_simple.py does.')
  if isinstance(error, AttributeError):  # ml_collections: --config.<field> names no field.
    match = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
    field = match[2] if match else text.strip('\'"').split('\'')[0].strip('\\')
    hint = f' (did you mean {match[1]}?)' if match else ''
    if any(arg.startswith(f'--config.model_kwargs.{field}=') for arg in sys.argv):
      return _unset_model_option(field, _model_named(config_files_given(sys.argv)))
    return (f'config field {field!r} does not exist{hint}; every field is defined in '
            'configs/default.py.')
  if isinstance(error, SyntaxError):
    return f'the config file does not parse: {error}.'
  if isinstance(error, OSError):
    reason = text.strip().splitlines()[-1].strip()
    return ('cannot load the config file: '
            + reason.removeprefix('Configuration is not available because of an earlier '
                                  'failure to load: ')
            + config_file_hint(getattr(error, 'filename', None) or _named_path(reason)))
  if isinstance(error, flags.Error) and 'Traceback (most recent call last)' in text:
    raised = text.strip().splitlines()[-1].strip()  # ml_collections quotes the whole traceback.
    hint = (" (the text after ':' in --config=FILE:ARGS is passed to get_config: leave it out, "
            'and set fields with --config.<field>=value)' if 'get_config() takes' in raised
            else '')
    return f'the config file failed: {raised}{hint}.'
  group = re.search(r'flag --(config(?:\.\w+)*)=.*Failed to parse .* as a ConfigDict', text)
  if isinstance(error, flags.Error) and group:  # --config.augment=True: a group, not a field.
    return (f'{group[1]} is a group of fields, not a value: set one of them '
            f'(--{group[1]}.<field>=value).')
  if isinstance(error, flags.UnrecognizedFlagError):  # absl's guess ranges over its own flags.
    return unknown_flag_message(f'--{error.flagname}', [f'--{name}' for name in _tool_flags()])
  if isinstance(error, flags.Error):
    return ' '.join(text.split())
  return f'the config file failed: {type(error).__name__}: ' + ' '.join(text.split())


def _model_named(config_files: list[str]) -> Any:
  """The model a command line names (`--config.model=`, else the last of `config_files`'s),
  or None: an override that fails leaves ml_collections holding no config, so the file is
  loaded again, overrides left out."""
  from ml_collections.config_flags import config_flags  # pylint: disable=import-outside-toplevel
  named = [arg.split('=', 1)[1] for arg in sys.argv if arg.startswith('--config.model=')]
  if named:
    return named[-1]
  try:
    return config_flags.ConfigFileFlagParser(name='config').parse(config_files[-1]).model
  except Exception:  # pylint: disable=broad-except  # Any failure: the plainer message.
    return None


def _unset_model_option(field: str, model: Any) -> str:
  """What to say of `--config.model_kwargs.<field>=...` where the config sets no such option:
  a misspelt option of the config's model is named with the one it may mean (ml_collections
  suggests only among the options the config sets), a real one is to be set in a config file."""
  from cnnjax import models  # pylint: disable=import-outside-toplevel  # flax, only here.
  options = sorted(models.model_fields(model)) if model in models.MODELS else [field]
  if field not in options:
    meant = difflib.get_close_matches(field, options, n=1)
    return (f'config.model_kwargs.{field} is not an option of model {model!r}'
            + (f' (did you mean {meant[0]}?)' if meant else '')
            + f'; its options are {", ".join(options)}.')
  return (f'config.model_kwargs.{field} is not set by this config file, and the command '
          'line can only override fields a config has: set it in a config file '
          f'(config.model_kwargs.{field} = ...; the model checks its options).')


def unknown_flag_message(name: str, known: list[str]) -> str:
  """A flag no tool defines, named with the one of `known` (sorted) it is closest to, or with
  them all: the absl and the argparse tools alike."""
  meant = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  return f'unrecognized flag {name}' + (f'; did you mean {meant[0]}?' if meant else
                                        f'; the flags are {", ".join(known)}.')


def _tool_flags() -> list[str]:
  """The flags an absl tool defines itself, with --verbosity and --help (the README's), not
  absl's other logging flags: `--workdir` given to a tool that writes nothing was 'did you
  mean log_dir?'."""
  from absl import flags
  own = {flag.name for module, defined in flags.FLAGS.flags_by_module_dict().items()
         if not module.startswith('absl.') for flag in defined}
  return sorted(own | {'verbosity', 'help'})


def add_weights_flag(parser: argparse.ArgumentParser) -> None:
  """--weights of the tools that read a run (`runs.saved.evaluation_state` takes it)."""
  parser.add_argument('--weights', default='best', choices=('best', 'last'), help=(
      "'best': the weights the run reports, its best epoch's where config.selection keeps "
      "them; 'last': its latest checkpoint's."))


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser for the tools, where a misspelt flag (`--work_dir`, `--splt`) is named
  first, with the flag it is closest to, not after the 'required' error it caused or as a
  bare 'unrecognized arguments'. Flags starting with one of `passthrough` are not its own
  (`--config.` overrides, which the tool reads itself); a parser with sub-commands leaves
  the check to them."""

  def __init__(self, *args, passthrough: tuple[str, ...] = (), **kwargs):
    super().__init__(*args, **kwargs)
    self.passthrough = passthrough

  def parse_known_args(self, args=None, namespace=None):
    argv = sys.argv[1:] if args is None else list(args)
    if not any(isinstance(action, argparse._SubParsersAction)  # pylint: disable=protected-access
               for action in self._actions):
      self._check_flag_names(argv)
    return super().parse_known_args(argv, namespace)

  def _check_flag_names(self, argv: list[str]) -> None:
    known = sorted(flag for flag in self._option_string_actions if flag.startswith('--'))
    for token in argv:
      if token == '--':
        break
      name = token.split('=', 1)[0]
      if (not name.startswith('--') or name in known or name.startswith(self.passthrough)
          or any(flag.startswith(name) for flag in known)):  # argparse's abbreviations.
        continue
      self.error(unknown_flag_message(name, known))
