"""Orbax checkpoints that let a stopped run continue as if it never stopped.

A checkpoint holds the whole `TrainState` (step, trainable and frozen params,
optimizer state, BatchNorm statistics, RNG), the running metrics of the
epoch in progress, and a small JSON `meta` item (epoch timings, a shape
fingerprint of the state). Data order is a function of (seed, epoch), so the
step alone says where in the data to continue.

Failure handling: orbax finalises a step atomically, so a save killed midway
never shows up as a step. A finalised step that cannot be read is moved
aside to `checkpoints_unreadable/` (never deleted) and the previous one is
used. A checkpoint whose shapes do not fit the model is an error that
leaves the workdir untouched.
"""
import atexit
import contextlib
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import orbax.checkpoint as ocp

from cnnjax import sharding
from cnnjax.runs import atomic
from cnnjax.runs import failed_reads
from cnnjax.errors import UserError, unreadable_message

CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints_unreadable'
BEST_DIR = 'best_weights'


class CheckpointWriteError(atomic.WriteRefusedError):
  """The disk refused a checkpoint (full, read-only)."""


class IncompatibleCheckpointError(UserError, ValueError):
  """The workdir's checkpoint belongs to a different model or config."""


class BestWeightsMissingError(IncompatibleCheckpointError):
  """The best epoch's weights are not on disk: deleted, or rotated away by the run, still
  training, since a reader took its latest checkpoint."""


class Restored(NamedTuple):
  step: int
  state: Any
  running_metrics: Any
  meta: dict[str, Any]


def shape_fingerprint(tree: Any) -> dict[str, str]:
  """'path' -> 'dtype[shape]' for every leaf: what a checkpoint must match."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): f'{leaf.dtype}{list(leaf.shape)}' for path, leaf in flat}


class UnreadableCheckpointsError(UserError, PermissionError):
  """The checkpoints folder is one this user may not read (another user's run)."""


def newest_step(workdir: str) -> int | None:
  """The newest checkpoint step `workdir` lists (readable or not); None where it has none."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  try:
    steps = [int(s) for s in os.listdir(directory) if s.isdigit()] if os.path.isdir(
        directory) else []
  except PermissionError as e:  # The first look at them, training or reading the run.
    raise UnreadableCheckpointsError(
        unreadable_message(directory, workdir) + ', or work on a copy of the run.') from e
  return max(steps, default=None)


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds any checkpoint step (readable or not)."""
  return newest_step(workdir) is not None


# How long a reader waits for a step it failed to read to vanish: the training run may be
# deleting it (keep_checkpoints), file by file, and the read failed partway.
_DELETION_SECONDS = 1.0


def _vanishes(path: str) -> bool:
  """Whether `path` is gone, or goes within `_DELETION_SECONDS`."""
  deadline = time.monotonic() + _DELETION_SECONDS
  while os.path.exists(path):
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _check_free_space(directory: str, trees: Sequence[Any], what: str) -> None:
  """Refuses a save that cannot fit on the disk before orbax starts it. A disk that fills
  up during an asynchronous save is still reported in one line (`_reporting_write_errors`,
  `_RefusedWriteEchoes`), but only once orbax has written what fitted. In a multi-process run
  each process checks its own disk and all of them refuse together: one refusing alone
  would leave the others waiting in orbax's save."""
  needed = sum(leaf.nbytes for leaf in jax.tree.leaves(trees))  # Uncompressed: an upper bound.
  free = sharding.gathered_from_processes(float(shutil.disk_usage(directory).free))
  short = [process for process, bytes_free in enumerate(free) if bytes_free < needed]
  if short:
    disk = 'the disk' if len(free) == 1 else f'the disk of process {short[0]}'
    raise CheckpointWriteError(
        f'Could not write {what} in {directory}: it needs up to {needed / 2**20:.2f} MiB and '
        f'{disk} has {free[short[0]] / 2**20:.2f} MiB free. The checkpoints before it are kept: '
        'free some space and run the same command to resume from them.')


class _RefusedWriteEchoes(logging.Filter):
  """Keeps a refused checkpoint write (a full disk, `ulimit -f`) to the one line the run
  ends in (`_reporting_write_errors`). Without it, that line comes after hundreds of others:
  each of orbax's background threads logs the refusal with its traceback, asyncio logs each
  failed write's task as 'never retrieved', and tensorstore's callbacks for the writes still
  in flight, once orbax has closed their event loop, raise 'Event loop is closed' as
  unraisable exceptions. Those echoes are dropped, and every other record and exception
  passes as ever. The callbacks can fire before orbax logs the refusal (on a loaded machine,
  often): their exceptions are held until a refusal is seen, and shown at the process's end
  if none was."""

  def __init__(self):
    super().__init__()
    self.refusal_seen = False
    self._held: list[Any] = []  # 'Event loop is closed' before any refusal was seen.
    self._next_unraisable_hook = sys.unraisablehook
    sys.unraisablehook = self._unraisable
    atexit.register(self._show_held)

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if atomic.refusal_errno(error) is None and not atomic.names_a_refusal(record.getMessage()):
      return True
    self.refusal_seen = True
    return False

  def _unraisable(self, unraisable: Any) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      self._next_unraisable_hook(unraisable)
    elif not self.refusal_seen:
      self._held.append(unraisable)

  def _show_held(self) -> None:
    if not self.refusal_seen:
      for unraisable in self._held:
        self._next_unraisable_hook(unraisable)
    self._held.clear()


_echoes: _RefusedWriteEchoes | None = None


def _dropping_refused_write_echoes() -> None:
  """Installs `_RefusedWriteEchoes` on absl's logger (orbax logs through absl) and asyncio's,
  once."""
  global _echoes
  if _echoes is None:
    _echoes = _RefusedWriteEchoes()
    for name in ('absl', 'asyncio'):
      logging.getLogger(name).addFilter(_echoes)


def _manager(directory: str, owns_workdir: bool, **options: Any) -> ocp.CheckpointManager:
  """An orbax manager of `directory`.

  `owns_workdir` (the training run, which holds the workdir's lock): first remove the
  unfinished saves (`<step>.orbax-checkpoint-tmp`) of a run that was killed. Left there, a
  partial save of a step that is not saved again would hold its disk space for good, and one
  that is would print orbax's warning. Readers (`cnnjax.evaluate`, `cnnjax.predict`) hold
  no lock and may look at a run that is saving: they leave its files alone.
  """
  _dropping_refused_write_echoes()
  manager = _listed(lambda: ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, cleanup_tmp_directories=owns_workdir, **options)))
  _await_cleanup(manager)
  return manager


def _listed(listing: Callable[[], Any]) -> Any:
  """`listing()`, an orbax listing of the steps (a new manager, a reload), again where a
  training run deleted a step between orbax's listing of the folder and its look at the
  step (FileNotFoundError): a reader looking at a run that rotates its checkpoints."""
  for _ in range(_LISTINGS - 1):
    try:
      return listing()
    except FileNotFoundError:
      pass
  return listing()


def _await_cleanup(manager: ocp.CheckpointManager) -> None:
  """Waits for the removal of a killed run's unfinished saves, which orbax does in a thread
  of its own and awaits only at the first save. A run that ends before saving (a refused
  resume, a stop signal) would otherwise exit while that thread still works: it then fails
  at the interpreter's shutdown and prints its traceback. Orbax has no public call for this
  wait; where a version keeps the thread elsewhere, nothing is awaited."""
  cleanup = getattr(manager, '_cleanup_tmp_directory_future', None)
  if cleanup is not None:
    cleanup.result()


def _reporting_write_errors(directory: str, what: str) -> contextlib.AbstractContextManager:
  """A save that the disk refuses (full, read-only) is the user's to fix: one line. Orbax
  finalises a step only once it is whole, so the checkpoints before it are kept."""
  return atomic.refusals_reported(
      f'{what} in {directory}', error_type=CheckpointWriteError,
      then='run the same command to resume from the checkpoints before it, which are kept.')


# How often a reader lists a training run's steps before it gives up: each listing fails
# only where the run deleted every listed step while it was read.
_LISTINGS = 5


class Checkpointer:
  """Saves (asynchronously) and restores one run's checkpoints under `workdir`."""

  def __init__(self, workdir: str, keep: int | None, owns_workdir: bool = False):
    """`owns_workdir`: the training run, which removes a killed run's unfinished saves."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.owns_workdir = owns_workdir
    self.manager = _manager(self.directory, owns_workdir, max_to_keep=keep,
                            enable_async_checkpointing=True)

  def save(self, step: int, state: Any, running_metrics: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save; training goes on while it is written."""
    meta = dict(meta, shapes=shape_fingerprint(state))
    _check_free_space(self.directory, (state, running_metrics), f'the checkpoint at step {step}')
    # Saves are asynchronous: a refusal may be the previous save's, surfacing here.
    with _reporting_write_errors(self.directory, f'the checkpoint at step {step} or before'):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          running_metrics=ocp.args.StandardSave(running_metrics),
          meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, state_templates: Sequence[Any], metrics_template: Any
                     ) -> Restored | None:
    """The newest readable checkpoint, placed like the templates; None if there is none.

    `state_templates[stage]` is the (abstract) state of training stage
    `meta['stage']` (0 if unset): which parameters a state holds as
    trainable depends on the stage. A reader looking at a run that is still training
    lists the steps again where the run rotated away every one it listed.
    """
    for _ in range(_LISTINGS):
      restored, vanished = self._restore_newest(state_templates, metrics_template)
      if restored is not None or not vanished:
        return restored
      _listed(self.manager.reload)
    return None

  def _restore_newest(self, state_templates: Sequence[Any], metrics_template: Any
                      ) -> tuple[Restored | None, bool]:
    """The newest readable step of those listed; and whether any listed step vanished."""
    vanished = False
    failed_reads.drop_abandoned_reads()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # pylint: disable=broad-except
        vanished |= self._pass_over(step, e)
        continue
      stage = meta.get('stage', 0)
      if not 0 <= stage < len(state_templates):
        raise IncompatibleCheckpointError(
            f'The checkpoint at step {step} in {self.directory} was saved in training stage '
            f'{stage}; this config has {len(state_templates)}. Use the config that made it, '
            'or a new --workdir.')
      template = state_templates[stage]
      expected = shape_fingerprint(template)
      saved = meta.get('shapes', {})
      mismatched = sorted(k for k in set(expected) | set(saved) if expected.get(k) != saved.get(k))
      if mismatched:
        details = '; '.join(f'{k}: checkpoint {saved.get(k)}, model {expected.get(k)}'
                            for k in mismatched[:5])
        raise IncompatibleCheckpointError(
            f'The checkpoint at step {step} in {self.directory} does not fit this model '
            f'({len(mismatched)} arrays differ: {details}). Nothing was changed. Use the '
            'config that made it, or a new --workdir.')
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template)),
            running_metrics=ocp.args.StandardRestore(_abstract(metrics_template))))
      except Exception as e:  # pylint: disable=broad-except
        vanished |= self._pass_over(step, e)
        continue
      return Restored(step, restored.state, restored.running_metrics, meta), vanished
    return None, vanished

  def _pass_over(self, step: int, error: Exception) -> bool:
    """Goes past an unreadable step to the one before. The training run, which owns the
    workdir, moves it out of the manager's way (`UNREADABLE_DIR`), keeping it for
    inspection; a reader (`cnnjax.evaluate`, `cnnjax.predict`) leaves the run's files as they
    are: the step may be one that the run, still training, has just rotated away (then
    True, quietly)."""
    if self.owns_workdir:
      self._set_aside(step, error)
    elif _vanishes(os.path.join(self.directory, str(step))):
      return True
    else:
      logging.warning('Checkpoint step %d in %s is unreadable (%s); using the previous '
                      'checkpoint, if there is one.', step, self.directory,
                      failed_reads.reason(error, 300))
    return False

  def _set_aside(self, step: int, error: Exception) -> None:
    target = os.path.join(self.workdir, UNREADABLE_DIR, f'{step}-{int(time.time())}')
    logging.warning('Checkpoint step %d in %s is unreadable (%s). Moved it to %s; trying '
                    'the previous checkpoint, if there is one.', step, self.directory,
                    failed_reads.reason(error, 300), target)
    sharding.sync_processes(f'checkpoint {step} found unreadable')
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    sharding.sync_processes(f'checkpoint {step} set aside')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    with _reporting_write_errors(self.directory, 'a checkpoint'):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# What a training run can do about best weights that are missing or do not fit.
TRAINING_FIX = ("Pass --config.selection.restore_best=False to report the last epoch's weights "
                'instead, or train afresh with --config.resume=False.')


class BestWeights:
  """The evaluation weights of the best epoch so far (see `runs.selection`), one orbax step
  per improvement in `<workdir>/best_weights`.

  A save completes before the epoch's checkpoint is started, so every checkpoint's best
  epoch is on disk. The newest two are kept: a resume from an earlier checkpoint `rewind`s
  past a best saved after it, and the best before that must still be there.
  """

  def __init__(self, workdir: str, owns_workdir: bool = False):
    """`owns_workdir`: as for `Checkpointer`."""
    self.owns_workdir = owns_workdir
    self.directory = os.path.join(os.path.abspath(workdir), BEST_DIR)
    self.manager = _manager(self.directory, owns_workdir, max_to_keep=2)

  def save(self, step: int, variables: Any, meta: dict[str, Any]) -> None:
    """Writes the weights of the epoch ending at `step`; returns once they are on disk."""
    _check_free_space(self.directory, variables, f'the best weights at step {step}')
    with _reporting_write_errors(self.directory, f'the best weights at step {step}'):
      self.manager.save(step, args=ocp.args.Composite(
          variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(
              dict(meta, shapes=shape_fingerprint(variables)))), force=True)
      self.manager.wait_until_finished()

  def rewind(self, step: int) -> None:
    """Drops the weights saved after `step` (a resume at `step` trains those epochs again)."""
    for saved in self.manager.all_steps():
      if saved > step:
        self.manager.delete(saved)

  def restore(self, step: int, template: Any, fix: str = TRAINING_FIX) -> Any:
    """The weights saved at `step`, placed like `template`; an error ending in `fix` if they
    are missing or do not fit."""
    weights = f'The best epoch\'s weights (step {step})'
    if step not in self.manager.all_steps():
      raise BestWeightsMissingError(f'{weights} are missing from {self.directory}. {fix}')
    unreadable = f'{weights} in {self.directory} are unreadable'
    failed_reads.drop_abandoned_reads()
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      fits = meta.get('shapes') == shape_fingerprint(template)
      variables = self.manager.restore(step, args=ocp.args.Composite(
          variables=ocp.args.StandardRestore(_abstract(template)))).variables if fits else None
    except Exception as error:  # pylint: disable=broad-except  # Orbax raises many kinds.
      if not self.owns_workdir and _vanishes(os.path.join(self.directory, str(step))):
        raise BestWeightsMissingError(  # Rotated away by the run while a reader read them.
            f'{weights} left {self.directory} as they were read. {fix}') from error
      raise IncompatibleCheckpointError(
          f'{unreadable} ({failed_reads.reason(error, 200)}). {fix}') from error
    if not fits:
      raise IncompatibleCheckpointError(
          f'{unreadable} (ValueError: their arrays do not fit this model). {fix}')
    return variables

  def close(self) -> None:
    self.manager.close()
