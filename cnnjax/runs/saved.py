"""A run found again from its workdir: the config it ran with and its latest state.

`cnnjax.evaluate` and `cnnjax.predict` work on any run that has a checkpoint,
finished or stopped, with nothing but its workdir.
"""
import dataclasses
import os
from typing import NamedTuple

import jax
import ml_collections

from cnnjax import config_validation
from cnnjax import sharding
from cnnjax.data import image_tree
from cnnjax.errors import UserError, unreadable_message
from cnnjax.runs import checkpoints
from cnnjax.runs import selection as selection_lib
from cnnjax.runs import workdir as workdir_lib
from cnnjax.runs import writers
from cnnjax.training import setup
from cnnjax.training.steps import Metrics
from cnnjax.training.steps import TrainState


class RunNotFoundError(UserError, ValueError):
  """The directory holds no run (no config.json) or no checkpoint to use."""


def _as_tuples(value):
  """JSON turned tuples into lists; model options such as hidden_sizes want tuples back."""
  if isinstance(value, list):
    return tuple(_as_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _as_tuples(v) for k, v in value.items()}
  return value


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      config[key] = value


def _runs_near(workdir: str) -> str:
  """Where the run is, when `workdir` holds none itself: the run `workdir` lies in, or the
  runs it holds (the checkpoints/ folder above them); '' where there is neither."""
  if run := workdir_lib.enclosing_run(workdir or '.'):
    return f' It lies inside the run {run}: pass --workdir={run}.'
  names = workdir_lib.runs_inside(workdir)
  if not names:
    return ''
  shown = image_tree.first_few(names, ', ', shown=5)
  return (f' It holds the run(s) {shown}: pass one of them, as in '
          f'--workdir={os.path.join(workdir, names[0])}.')


def load_config(workdir: str, defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with (its `config.json`).

  Read on top of `defaults` (configs/default.py), so fields added to cnnjax
  after the run was started take their defaults.
  """
  path = os.path.join(workdir, writers.CONFIG_FILE)
  # A run this user may not read: said so, where its config.json would be 'missing'.
  if os.path.isdir(workdir or '.') and not os.access(workdir or '.', os.R_OK | os.X_OK):
    raise RunNotFoundError(unreadable_message(workdir) + ', or work on a copy of the run.')
  if not os.path.exists(path):
    if checkpoints.has_checkpoints(workdir):
      raise RunNotFoundError(f'{workdir} holds checkpoints but not the {writers.CONFIG_FILE} '
                             'of the run that made them, which says what model and data they '
                             f'are of: put the run\'s {writers.CONFIG_FILE} back.')
    raise RunNotFoundError(
        f'{workdir or "The current directory (--workdir is empty)"} holds no cnnjax run '
        f'({writers.CONFIG_FILE} is missing).'
        + (_runs_near(workdir) or ' Pass the --workdir of a run started with python -m '
           'cnnjax.main.'))
  meaning = 'It holds the config the run was started with: restore it from a backup.'
  saved = writers.read_record(path, meaning, RunNotFoundError)
  config = ml_collections.ConfigDict(defaults.to_dict())
  try:
    _merge(config, _as_tuples(saved))
    config_validation.check_model(config)
  except (TypeError, ValueError, AttributeError) as e:  # A file edited by hand.
    raise RunNotFoundError(f'{path} holds a config that cannot be run ({str(e).rstrip(".")}). '
                           f'{meaning}') from e
  return config


def restore_latest(experiment: setup.Experiment, workdir: str) -> checkpoints.Restored:
  """The latest checkpoint of `experiment`'s run in `workdir`, on this process's devices."""
  if not checkpoints.has_checkpoints(workdir):
    raise RunNotFoundError(
        f'{workdir} holds no checkpoint: train it first (python -m cnnjax.main '
        f'--config=... --workdir={workdir}).')
  replicated = sharding.replicated(sharding.create_mesh())
  checkpointer = checkpoints.Checkpointer(workdir, keep=None)
  try:
    restored = checkpointer.restore_latest(experiment.state_templates(replicated),
                                           jax.device_put(Metrics.empty(), replicated))
  finally:
    checkpointer.close()
  if restored is None:
    raise RunNotFoundError(f'{workdir} holds no readable checkpoint (the warnings above say '
                           'why): restore its checkpoints/ folder from a copy, or train the run '
                           'again (python -m cnnjax.main --config=... --workdir=... '
                           '--config.resume=False moves this one aside).')
  return restored


class Reported(NamedTuple):
  """What `evaluation_state` finds: the state to evaluate or predict with, which weights
  they are, the latest checkpoint's step, and the fingerprints of the examples the run was
  trained and tested on (`{}` for a run from before they were recorded)."""
  state: TrainState
  weights: str
  step: int
  data: dict[str, str]


# How often a reader takes the latest checkpoint again when the best weights it names were
# rotated away meanwhile: each retry needs two more epochs to end while it reads.
_ROTATION_RETRIES = 3


def evaluation_state(experiment: setup.Experiment, workdir: str,
                     config: ml_collections.ConfigDict, weights: str = 'best') -> Reported:
  """The weights the run in `workdir` reports (`weights='best'`): the best epoch's so far
  where `config.selection` keeps them, else the latest checkpoint's; or the latest
  checkpoint's in any case (`'last'`).

  A run still training keeps only its newest two best weights: where the best epoch of the
  checkpoint read has been rotated away since, the newer checkpoint is read instead.
  """
  selection = selection_lib.Selection.from_config(config)
  if weights == 'last':
    selection = dataclasses.replace(selection, restore_best=False)
  fix = (f'Copy {checkpoints.BEST_DIR}/ back into {workdir} from a copy of the run, or pass '
         "--weights=last to use the latest checkpoint's weights.")
  for retry in range(_ROTATION_RETRIES + 1):
    restored = restore_latest(experiment, workdir)
    progress = selection_lib.progress_at(selection, workdir, restored.step)
    try:
      state = selection_lib.evaluation_state(restored.state, workdir, selection, progress, fix)
      break
    except checkpoints.BestWeightsMissingError:
      if retry == _ROTATION_RETRIES or not (checkpoints.newest_step(workdir) or 0) > restored.step:
        raise
  which = selection_lib.weights_description(selection, progress, config.ema_decay,
                                            last=f'step {restored.step}')
  return Reported(state, which, restored.step, restored.meta.get('data', {}))
