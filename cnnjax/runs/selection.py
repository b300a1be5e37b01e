"""Model selection at epoch ends: the best epoch by a monitored metric, and early stopping.

The semantics are those of Keras' `EarlyStopping` (with `restore_best_weights`) and
`ModelCheckpoint(save_best_only=True)`:

- an epoch improves on the best so far when its value beats it by more than
  `min_delta` (lower for 'min', higher for 'max'; a NaN never improves);
- `patience` epochs in a row without improvement stop the run (0: never stop);
- with `restore_best`, evaluation, reports and `cnnjax.predict` use the weights of
  the best epoch (saved when it ended) instead of the last epoch's.

`Progress` is a pure function of the metrics rows (`replay`), so a resumed run
knows its best epoch, its wait and whether it had stopped from `metrics.jsonl`,
which a resume truncates to its checkpoint: nothing else has to be saved.
"""
import dataclasses
import math
from typing import Any, Iterable

import jax
import ml_collections

from cnnjax.errors import ConfigError
from cnnjax.runs import checkpoints
from cnnjax.runs import writers
from cnnjax.training.steps import TrainState

MONITORS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy')
MODES = ('auto', 'min', 'max')


@dataclasses.dataclass(frozen=True)
class Selection:
  """config.selection: what to monitor, and what to do with it."""
  monitor: str = ''          # '' = off: the last epoch's weights, no stopping (the studies).
  mode: str = 'min'          # 'min' or 'max', resolved from 'auto'.
  min_delta: float = 0.0
  patience: int = 0
  restore_best: bool = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'Selection':
    """The config's selection, checked: a ConfigError names a bad field."""
    fields = config.selection
    if fields.monitor and fields.monitor not in MONITORS:
      raise ConfigError(f'config.selection.monitor must be one of {MONITORS} (or empty: off), '
                        f'got {fields.monitor!r}.')
    if fields.monitor.startswith('val_') and not config.val_split:
      raise ConfigError(f'config.selection.monitor={fields.monitor!r} needs a validation split: '
                        "set config.val_split (e.g. 'train[90%:]' with "
                        "config.train_split='train[:90%]'), or monitor a train_ metric.")
    if fields.mode not in MODES:
      raise ConfigError(f'config.selection.mode must be one of {MODES}, got {fields.mode!r}.')
    if not fields.min_delta >= 0:
      raise ConfigError(f'config.selection.min_delta must be 0 or positive, got '
                        f'{fields.min_delta!r}.')
    if not isinstance(fields.patience, int) or fields.patience < 0:
      raise ConfigError(f'config.selection.patience must be 0 (never stop early) or a positive '
                        f'integer, got {fields.patience!r}.')
    if fields.patience and not fields.monitor:
      raise ConfigError('config.selection.patience stops on a monitored metric: set '
                        "config.selection.monitor (e.g. 'val_loss').")
    mode = fields.mode
    if mode == 'auto':  # As Keras: losses fall, anything else (accuracies) rises.
      mode = 'min' if fields.monitor.endswith('loss') else 'max'
    return cls(fields.monitor, mode, float(fields.min_delta), fields.patience,
               bool(fields.restore_best))

  @property
  def active(self) -> bool:
    return bool(self.monitor)

  @property
  def keeps_best_weights(self) -> bool:
    return self.active and self.restore_best

  def improves(self, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
      return False
    if best is None:
      return True
    return value - self.min_delta > best if self.mode == 'max' else value + self.min_delta < best


@dataclasses.dataclass
class Progress:
  """Where selection stands after some epochs."""
  best_value: float | None = None
  best_epoch: int | None = None   # 1-based, as the metrics rows count epochs.
  best_step: int | None = None
  wait: int = 0                   # Epochs since the last improvement.
  stopped_epoch: int | None = None  # The epoch early stopping ended the run at.

  @property
  def stopped(self) -> bool:
    return self.stopped_epoch is not None

  def update(self, selection: Selection, row: dict[str, Any]) -> bool:
    """Takes one epoch's metrics row; returns whether it is the new best."""
    if not selection.active or self.stopped:
      return False
    value = row.get(selection.monitor)
    if value is None:
      raise KeyError(f'metrics row of epoch {row.get("epoch")} has no {selection.monitor!r}')
    self.wait += 1
    if selection.improves(float(value), self.best_value):
      self.best_value, self.best_epoch, self.best_step = float(value), row['epoch'], row['step']
      self.wait = 0
      return True
    if selection.patience and self.wait >= selection.patience:
      self.stopped_epoch = row['epoch']
    return False

  def summary(self, selection: Selection) -> dict[str, Any]:
    """What results.json says about the selection."""
    return {'monitor': selection.monitor, 'mode': selection.mode, 'best_epoch': self.best_epoch,
            'best_value': self.best_value, 'stopped_early_at_epoch': self.stopped_epoch,
            'patience': selection.patience}


def replay(selection: Selection, rows: Iterable[dict[str, Any]]) -> Progress:
  """The progress the metrics rows of a run (in order) add up to."""
  progress = Progress()
  for row in rows:
    progress.update(selection, row)
  return progress


def progress_at(selection: Selection, workdir: str, step: int) -> Progress:
  """Where selection stood at `step` of the run in `workdir` (its rows up to that step)."""
  return replay(selection, [row for row in writers.read_metrics(workdir) if row['step'] <= step])


def weights_description(selection: Selection, progress: Progress, ema_decay: float,
                        last: str = 'the last step') -> str:
  """Which weights a run evaluates and reports: the best epoch's or the `last`, raw or EMA."""
  which = (f'the best epoch by {selection.monitor} (epoch {progress.best_epoch}, '
           f'{progress.best_value:.4f})' if uses_best(selection, progress) else last)
  return which + (f', EMA of the parameters (decay {ema_decay})' if ema_decay else '')


def uses_best(selection: Selection, progress: Progress) -> bool:
  """Whether evaluation takes the best epoch's saved weights rather than the last state's."""
  return selection.keeps_best_weights and progress.best_step is not None


def evaluation_state(state: TrainState, workdir: str, selection: Selection, progress: Progress,
                     fix: str = checkpoints.TRAINING_FIX) -> TrainState:
  """What evaluates and predicts: the best epoch's weights from `workdir` where the selection
  keeps them (placed as `state`'s), else `state` itself. `fix` ends the error if they are
  missing or do not fit."""
  if not uses_best(selection, progress):
    return state
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state.evaluation_variables)
  best = checkpoints.BestWeights(workdir)
  try:
    return TrainState.of_weights(best.restore(progress.best_step, template, fix))
  finally:
    best.close()
