"""Decides what a run may do with an existing workdir, before anything is written.

The same command resumes a stopped run. A workdir that holds a run of a
different config is never written over: the run fails and names the fields
that differ. `--config.resume=False` starts afresh and moves the old run
aside (`DIR.previous-<time>`) instead of deleting anything.
"""
import json
import logging
import os
import re
from typing import Any

import jax
import ml_collections

from cnnjax.data import datasets
from cnnjax.data import image_tree
from cnnjax.errors import UserError
from cnnjax.runs import atomic
from cnnjax.runs import checkpoints
from cnnjax.runs import report
from cnnjax.runs import writers

# Fields that may change between a run and its resumption: how long to train (and how
# patiently), how often to save, where the (same) data and weights live, the evaluation
# batch, which weights to report, how many steps a device call trains and where it finds them.
RESUMABLE_CHANGES = frozenset({
    'num_epochs', 'num_train_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'resume',
    'steps_per_dispatch', 'data_on_device',
    'eval_batch_size', 'local_data_dir', 'tfds_data_dir', 'pretrained_path',
    'fine_tune.num_epochs', 'collapse_guard.every_steps', 'collapse_guard.patience_steps',
    'collapse_guard.loss_band', 'stop_on_collapse', 'selection.patience',
    'selection.restore_best'})


# What a resumed run may lengthen or shorten, and the schedules whose curve spans the whole
# of a stage's steps: with one of them, the steps after the resumption follow another curve.
LENGTH_FIELDS = ('num_epochs', 'fine_tune.num_epochs')
STAGE_LONG_SCHEDULES = frozenset({'warmup_cosine', 'onecycle', 'piecewise'})


def _flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config`'s fields by dotted name, with its values as config.json holds them."""
  return _flatten(json.loads(json.dumps(config.to_dict())))


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict,
                       defaults: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for each field that differs and may not change on resume.

  A field the saved run does not have (added to cnnjax later) counts as
  unchanged while the config keeps its default (`defaults`: configs/default.py).
  """
  current, defaults = _flat_config(config), _flat_config(defaults)
  saved = _flatten(saved)
  saved.update({k: v for k, v in defaults.items() if k not in saved})
  return [f'{k}: {saved.get(k, "<unset>")!r} -> {current.get(k, "<unset>")!r}'
          for k in sorted(set(saved) | set(current))
          if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


def warn_of_a_bent_schedule(saved: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Warns where a resumed run's length changed under a schedule that spans it: the steps
  already taken followed the old curve, those to come follow the new one (a cosine that had
  reached 0 starts again part way up), which neither length alone would have given."""
  if config.schedule not in STAGE_LONG_SCHEDULES:
    return
  saved, current = _flatten(saved), _flat_config(config)
  changed = [f'config.{k} {saved[k]} -> {current[k]}' for k in LENGTH_FIELDS
             if k in saved and saved[k] != current.get(k)]
  if changed:
    logging.warning(
        'Resuming with %s: the %s learning rate spans the run, so the steps already taken '
        'followed the old length\'s curve and the rest follow the new one; the result is '
        'that of neither length. For a run as this config describes it, pass '
        '--config.resume=False (the old run is moved aside).', ', '.join(changed),
        config.schedule)


# How far above a folder a run may lie that the folder is part of: `<run>/checkpoints/<step>/
# <item>/<file>` at the deepest.
_RUN_LEVELS_ABOVE = 4


def _is_cnnjax_run(folder: str) -> bool:
  """Whether `folder` holds a cnnjax run's config.json (a project's own config.json does not
  have a model, a dataset and a batch size)."""
  try:
    with open(os.path.join(folder, writers.CONFIG_FILE)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(saved, dict) and {'model', 'dataset', 'batch_size'} <= saved.keys()


def enclosing_run(path: str) -> str | None:
  """The run folder `path` lies inside (its checkpoints/ folder, a step of it, one of its
  files), if any."""
  folder = os.path.abspath(path)
  for _ in range(_RUN_LEVELS_ABOVE):
    folder = os.path.dirname(folder)
    if _is_cnnjax_run(folder):
      return folder
  return None


def runs_inside(folder: str, levels: int = 1) -> list[str]:
  """The runs in `folder`'s sub-folders, down to `levels` deep, by their paths from `folder`
  (`checkpoints/` above its runs; two levels: a suite's folder above its configs' runs)."""
  try:
    names = sorted(os.listdir(folder or '.'))
  except OSError:
    return []
  found = []
  for name in names:
    path = os.path.join(folder, name)
    if _is_cnnjax_run(path):
      found.append(name)
    elif levels > 1 and os.path.isdir(path):
      found += [os.path.join(name, inner) for inner in runs_inside(path, levels - 1)]
  return found


def holds_run(workdir: str) -> bool:
  return any(os.path.exists(os.path.join(workdir, name)) for name in (
      writers.CONFIG_FILE, writers.METRICS_FILE, checkpoints.CHECKPOINT_DIR))


class WorkdirError(UserError, ValueError):
  """The workdir cannot hold a run: it is a file, it is not writable, its records are broken."""


def check_writable(workdir: str, name: str = 'run') -> None:
  """Fails before any data is read if `workdir` is a file, lies inside another run (its
  checkpoints/ folder, given for the run itself), holds other runs (the `checkpoints/` folder
  above them: they would lie inside this one, past resuming or evaluating) or cannot be
  written. `name`: the run's, for the folder the error proposes."""
  check_folder_can_be_written(workdir, '--workdir')
  absolute = os.path.abspath(workdir)
  if os.path.dirname(absolute) == absolute:  # '/', as '--workdir=/$UNSET' gives.
    raise WorkdirError(f'--workdir={workdir} is the root of the file system: name a folder '
                       'for the run, e.g. --workdir=runs/cnn_simple.')
  shown = image_tree.readable_name(absolute)
  if shown != absolute:  # Bytes the file system's encoding did not decode.
    raise WorkdirError(f'--workdir={shown} has bytes in its path that are not UTF-8 text, and '
                       "the checkpoints' writer (tensorstore) takes UTF-8 paths alone: rename "
                       'the folder in UTF-8, or choose another --workdir.')
  if run := enclosing_run(workdir):
    raise WorkdirError(f'--workdir={workdir} lies inside the run in {run}: a run there would '
                       f'start afresh within it. Pass --workdir={run} to resume that run, or '
                       'choose a --workdir outside it.')
  if not holds_run(workdir) and (inside := runs_inside(workdir, levels=2)):
    raise WorkdirError(
        f'--workdir={workdir} holds runs ({image_tree.first_few(inside, ", ")}): a run there '
        'would lie around them, and they inside it, past resuming or evaluating. Give the run '
        f'a folder of its own, e.g. --workdir={os.path.join(workdir, name)}.')


def check_folder_can_be_written(folder: str, flag: str, named: str = '',
                                 way_out: str = '') -> None:
  """Fails if the `flag` folder is a file, or if it cannot be made or written: checked before
  the work whose records it is to hold, not after (a link to nowhere on its path, say a
  drive not mounted, leaves mkdir nothing to make). `named`: how the error names the folder
  (by default `flag=folder`); `way_out`: what else the user may do (by default, choose
  another `flag`)."""
  named = named or f'{flag}={folder}'
  way_out = way_out or f'choose another {flag}'
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise WorkdirError(f'{named} is a file, not a directory; {way_out}.')
  existing = os.path.abspath(folder)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if os.path.islink(existing) and not os.path.exists(existing):
    target = os.path.join(os.path.dirname(existing), os.readlink(existing))
    raise WorkdirError(f'{named} cannot be made: {existing} is a link to '
                       f'{os.path.normpath(target)}, which does not exist. Create that folder '
                       f'(or mount its drive), or {way_out}.')
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise WorkdirError(f'{named} cannot be written ({existing} is not a writable '
                       f'directory); {way_out}.')


def check_script_folders(results_dir: str, workdir_root: str) -> None:
  """The folders of a script that trains several runs (`--workdir_root`), then writes its
  pages (`--results_dir`): checked before hours of training, not after them."""
  check_folder_can_be_written(results_dir, '--results_dir')
  check_folder_can_be_written(workdir_root, '--workdir_root')


def check_file_can_be_written(path: str, flag: str) -> None:
  """`check_folder_can_be_written` for the folder of the `flag` file (made when it is written),
  and fails if `path` is a folder."""
  if os.path.isdir(path):
    raise WorkdirError(f'{flag}={path} is a folder; name a file in it, such as '
                       f'{os.path.join(path, "report.json")}.')
  folder = os.path.dirname(os.path.abspath(path))
  check_folder_can_be_written(folder, flag, f'{flag}={path}: its folder {folder}')


# What a run and `cnnjax.evaluate` write into a workdir; '.previous-<time>' copies and
# '.tmp' files of each may lie beside them.
RUN_ENTRIES = frozenset({
    writers.CONFIG_FILE, writers.METRICS_FILE, writers.RESULTS_FILE, datasets.DATASET_FILE,
    checkpoints.CHECKPOINT_DIR, checkpoints.UNREADABLE_DIR, checkpoints.BEST_DIR,
    writers.TENSORBOARD_DIR, report.CURVES_FILE, report.CONFUSION_PNG, report.CONFUSION_CSV,
    report.REPORT_TXT, report.REPORT_JSON, report.EVALUATION_FILE, report.EVALUATIONS_DIR})


# What systems and tools leave in any folder they look at: a Mac's Finder (and its
# AppleDouble files), Windows' Explorer, Jupyter, NFS's files of deleted open files.
SYSTEM_LITTER = re.compile(r'\.DS_Store|\._.*|Thumbs\.db|desktop\.ini|\.ipynb_checkpoints'
                           r'|\.nfs[0-9a-f]+')


def _not_the_runs(workdir: str) -> list[str]:
  """The entries of `workdir` that no run wrote (a project's files, other runs' folders),
  what a system leaves in any folder aside."""
  def the_runs(name: str) -> bool:
    return (name.removesuffix('.tmp').split('.previous-')[0] in RUN_ENTRIES
            or SYSTEM_LITTER.fullmatch(name) is not None)
  return sorted(name for name in os.listdir(workdir) if not the_runs(name))


def _check_can_be_moved_aside(workdir: str) -> None:
  """`--config.resume=False` moves the whole workdir aside: refused for the folder this
  process works in (or one above it), which would move along with it, and for a folder that
  holds other things than the run (`--workdir=.` in a project, or a home folder), which the
  user would find renamed."""
  real, here = os.path.realpath(workdir), os.path.realpath(os.getcwd())
  if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
    where = 'the current directory' if here == real else 'a folder above the current directory'
    raise WorkdirError(
        f'--workdir={workdir} is {where}, which --config.resume=False cannot move aside from '
        f'under this process. Nothing was changed. Run the command from {os.path.dirname(real)} '
        f'with --workdir={os.path.basename(real)}, or choose a new --workdir.')
  others = _not_the_runs(workdir)
  if others:
    raise WorkdirError(
        f'--workdir={workdir} holds {image_tree.first_few(others, ", ")} besides the run, and '
        '--config.resume=False moves the whole folder aside. Nothing was changed. Move '
        'those out of it (or the run out of them), or choose a new --workdir.')


def _move_aside(workdir: str) -> str:
  """Renames the old run to `<workdir>.previous-<time>`, beside it: a rename, never a copy
  (a copy cut short by a full disk would leave the run in two halves)."""
  target = atomic.aside_name(workdir)
  try:
    os.rename(os.path.abspath(workdir), target)
  except OSError as error:  # A mount point, a folder in use on Windows-like file systems.
    raise WorkdirError(
        f'--config.resume=False could not move the previous run in {workdir} aside to '
        f'{target} ({error.strerror}). Nothing was changed. Move or delete it yourself, or '
        'choose a new --workdir.') from error
  return target


def prepare(config: ml_collections.ConfigDict, workdir: str,
            defaults: ml_collections.ConfigDict) -> dict[str, Any]:
  """Checks that `config` may run in `workdir` (one `check_writable` has passed); moves an
  old run aside if asked to. Returns the config of the run it will resume ({} if none)."""
  if not holds_run(workdir):
    return {}
  if not config.resume:
    _check_can_be_moved_aside(workdir)
    if jax.process_index() == 0:
      target = _move_aside(workdir)
      print(f'config.resume=False: moved the previous run in {workdir} to {target}; starting '
            'afresh.', flush=True)
    return {}
  config_path = os.path.join(workdir, writers.CONFIG_FILE)
  if os.path.exists(config_path):
    saved = writers.read_record(
        config_path, f'The run in {workdir} cannot be checked against this config. Nothing '
        'was changed. Restore the file, choose a new --workdir, or pass --config.resume=False '
        'to start afresh (the old run is moved aside).', WorkdirError)
    differences = config_differences(saved, config, defaults)
    if differences:
      raise checkpoints.IncompatibleCheckpointError(
          f'{workdir} holds a run of a different config; these fields differ: '
          f'{"; ".join(differences)}. Nothing was changed. Resume with the same config, '
          'choose a new --workdir, or pass --config.resume=False to start afresh (the old '
          'run is moved aside, not deleted).')
    return saved
  if checkpoints.has_checkpoints(workdir):
    raise checkpoints.IncompatibleCheckpointError(
        f'{workdir} holds checkpoints but not the {writers.CONFIG_FILE} of the run that made '
        'them, so this config cannot be checked against that run (another batch size or '
        'learning rate would resume unnoticed). Nothing was changed. Put the run\'s '
        f'{writers.CONFIG_FILE} back, choose a new --workdir, or pass --config.resume=False to '
        'start afresh (the old run is moved aside, not deleted).')
  return {}
