"""What a run leaves in its workdir and prints: config, per-epoch metrics, results.

`metrics.jsonl` holds one JSON object per epoch (the machine-readable
history), the console gets a Keras-like line per epoch and, on a terminal, a
live progress bar. TensorBoard event files are written when TensorBoard and
TensorFlow are installed (clu's writer needs both); nothing else needs them.
Only process 0 writes, so multi-host runs produce one set of files.
"""
import importlib.util
import json
import logging
import os
import sys
from typing import Any

import jax

from cnnjax.data import image_tree
from cnnjax.errors import UserError
from cnnjax.runs import atomic

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
TENSORBOARD_DIR = 'tensorboard'


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` atomically: a reader never sees a half-written file."""
  with atomic.replaced_whole(path) as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write('\n')


class RecordError(UserError, ValueError):
  """A JSON file a run wrote (config, results) is unreadable: cut, or edited by hand."""


# What a finished run's results.json must hold to be reported again.
RESULTS_FIELDS = {'steps': (int,), 'test_loss': (int, float), 'test_accuracy': (int, float)}


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
  """isinstance(value, types), where JSON's true and false are no numbers."""
  return isinstance(value, types) and not isinstance(value, bool)


def read_record(path: str, meaning: str, error_type: type[UserError] = RecordError,
                expected: type = dict, fields: dict[str, tuple[type, ...]] | None = None) -> Any:
  """The JSON object (or other `expected` type) in `path`, a file a run wrote, with `fields`
  of their types (an object edited by hand); where it is not, an `error_type` naming the
  file, why, and `meaning` (what that means for the run, and the way out)."""
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    if not isinstance(record, expected):
      raise ValueError(f'not a JSON {"object" if expected is dict else expected.__name__}')
    for name, types in (fields or {}).items():
      if name not in record:
        raise ValueError(f'it has no {name!r}')
      if not _is_a(record[name], types):
        raise ValueError(f'its {name!r} is {record[name]!r}, not '
                         + ' or '.join(t.__name__ for t in types))
  except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors.
    raise error_type(f'{path} is unreadable ({type(e).__name__}: {e}). {meaning}') from e
  return record


class MetricsFileError(UserError, ValueError):
  """A run's metrics.jsonl has a line that is not one epoch's JSON row."""


_CUT_LINES_SAID: set[tuple[str, str]] = set()
# The fields of an epoch's row that hold numbers (by the start of their names): all but
# 'stage', a stage's name.
_NUMBER_FIELDS = ('epoch', 'train_', 'val_')


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of a run's metrics.jsonl, one per epoch ([] if there is none).

  A last line cut off mid-write (a process killed in the middle of appending it; it has no
  newline) is left out with a warning: the resumed run writes that epoch's row again.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get('step'), int):
        raise ValueError('not an object with an integer "step"')
      edited = next((key for key, value in row.items() if key.startswith(_NUMBER_FIELDS)
                     and not _is_a(value, (int, float))), None)
      if edited:  # Plotted as categories, or a TypeError where selection compares it.
        raise ValueError(f'its {edited!r} is {row[edited]!r}, not a number')
    except ValueError as error:
      if number == len(lines):  # No newline after it: cut off while being written.
        if (path, line) not in _CUT_LINES_SAID:  # A run reads the file more than once.
          _CUT_LINES_SAID.add((path, line))
          logging.warning('Left out the last line of %s, cut off while it was written (%s).',
                          path, line[:80])
        break
      raise MetricsFileError(
          f'Line {number} of {path} is not an epoch\'s row ({error}): {line[:80]!r}. Restore '
          'the file, or delete that line (its epoch then has no row).') from error
    rows.append(row)
  return rows


def _tensorboard_writer(logdir: str):
  """clu's SummaryWriter when TensorBoard is installed; it imports TensorFlow."""
  if importlib.util.find_spec('tensorboard') is None:
    return None
  try:
    from clu.metric_writers import SummaryWriter
  except ImportError:
    return None
  return SummaryWriter(logdir)


class RunWriter:
  """Writes one run's files in `workdir` and its console output."""

  def __init__(self, workdir: str, num_epochs: int, steps_per_epoch: int, devices: str = ''):
    self.workdir, self.num_epochs, self.steps_per_epoch = workdir, num_epochs, steps_per_epoch
    self.devices = devices
    self.is_writer = jax.process_index() == 0
    self._tensorboard = None
    if self.is_writer:
      os.makedirs(workdir, exist_ok=True)
      self._tensorboard = _tensorboard_writer(os.path.join(workdir, TENSORBOARD_DIR))

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def read_results(self) -> dict[str, Any] | None:
    if not os.path.exists(self.path(RESULTS_FILE)):
      return None
    return read_record(self.path(RESULTS_FILE), 'It marks the run finished and holds its test '
                       'results: restore it, or move it aside and run the same command to '
                       'evaluate the run again.', fields=RESULTS_FIELDS)

  def truncate_metrics(self, step: int, continues: bool) -> None:
    """Keeps the rows that a run resumed at `step` will not write again.

    Rows past the checkpoint (the run died between writing them and saving)
    are dropped, and so is the row of a partial epoch ending at `step` (a run
    cut short by num_train_steps) when training `continues` through it: the
    resumed run writes them again, identically.
    """
    path = self.path(METRICS_FILE)
    if not self.is_writer:
      return
    rows = read_metrics(self.workdir)
    partial_epoch_end = step % self.steps_per_epoch != 0
    kept = [r for r in rows
            if r['step'] < step or (r['step'] == step and not (continues and partial_epoch_end))]
    epoch_ends = {r['step'] for r in kept}
    missing = [epoch for epoch in range(1, step // self.steps_per_epoch + 1)
               if epoch * self.steps_per_epoch not in epoch_ends]
    if missing:  # Said, not passed over: the run's curves and record will lack them.
      logging.warning('%s has no row for epoch(s) %s, which the checkpoint at step %d has '
                      'trained (was the file edited, moved or deleted?): its curves and '
                      'record will lack them.', path,
                      image_tree.first_few([str(e) for e in missing], ', ', shown=5), step)
    if not os.path.exists(path):
      return
    with atomic.replaced_whole(path) as f:
      f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in kept)

  def move_aside(self, name: str) -> str:
    """Moves the run's file `name` that no longer describes it (the metrics of a run that
    starts again from step 0, its checkpoints gone; the results of a run that trains on)
    beside it, where the new one cannot overwrite it; returns where."""
    path = self.path(name)
    target = atomic.aside_name(path)
    if self.is_writer:
      with atomic.refusals_reported(target):
        os.rename(path, target)
    return target

  def write_config(self, config: dict[str, Any]) -> None:
    if self.is_writer:
      write_json(self.path(CONFIG_FILE), config)

  @property
  def on_terminal(self) -> bool:
    return sys.stdout.isatty()

  def progress_bar(self, description: str, total: int, unit: str):
    """A tqdm bar over `total` `unit`s (their rate and an ETA included), on a terminal."""
    if not (self.is_writer and self.on_terminal):
      return None
    import tqdm
    return tqdm.tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True)

  def write_epoch(self, row: dict[str, Any]) -> None:
    if not self.is_writer:
      return
    atomic.append_line(self.path(METRICS_FILE), json.dumps(row, sort_keys=True))
    print(format_epoch_line(row, self.num_epochs, self.devices), flush=True)
    if self._tensorboard is not None:
      scalars = {k: v for k, v in row.items() if k not in ('epoch', 'step')}
      self._tensorboard.write_scalars(row['step'], scalars)
      self._tensorboard.flush()

  def announce(self, message: str) -> None:
    """Prints one of the run's own lines (process 0 only; printed, not logged, so once)."""
    if self.is_writer:
      print(message, flush=True)

  def progress_line(self, description: str, done: int, total: int, unit: str, seconds: float,
                    metrics: dict[str, float] | None = None) -> None:
    """A plain progress line, for consoles that are not terminals (log files)."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate else 0.0
    self.announce(f'  {description}: {done}/{total} {unit}s, {rate:.1f} {unit}s/s, ETA '
                  f'{eta:.0f}s' + ''.join(f' - {name}: {value:.4f}'
                                          for name, value in (metrics or {}).items()))

  def report_finished(self, results: dict[str, Any], steps_asked: int) -> None:
    """Reports a finished run's saved results, and where it trained longer than the config
    now asks (`steps_asked`), that these are the longer run's."""
    steps = results['steps']
    longer = steps > steps_asked
    self.announce(
        f'{self.workdir} holds a finished run ({steps} steps'
        + (f', more than the {steps_asked} this config asks for' if longer else '')
        + f'); not retraining. Test loss {results["test_loss"]:.4f}, test accuracy '
        f'{results["test_accuracy"]:.4f}'
        + (f', after those {steps} steps; --config.resume=False trains {steps_asked} afresh '
           '(this run is moved aside, not deleted).' if longer else '.'))

  def write_results(self, results: dict[str, Any]) -> None:
    if not self.is_writer:
      return
    write_json(self.path(RESULTS_FILE), results)
    print(f'Test loss {results["test_loss"]:.4f}, test accuracy {results["test_accuracy"]:.4f} '
          f'({results["eval_seconds"]:.1f}s). Results in {self.path(RESULTS_FILE)}', flush=True)
    logging.info('Results: %s', results)


def format_epoch_line(row: dict[str, Any], num_epochs: int, devices: str = '') -> str:
  """Keras' per-epoch line: `Epoch 3/10 - 12.1s - loss: 0.31 - accuracy: 0.89 - val_...`."""
  parts = [f'Epoch {row["epoch"]}/{num_epochs}', f'{row["epoch_seconds"]:.1f}s']
  for key in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy'):
    if key in row:
      parts.append(f'{key.removeprefix("train_")}: {row[key]:.4f}')
  if devices:
    parts.append(devices)
  return ' - '.join(parts)
