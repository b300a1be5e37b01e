"""What a run does around its training steps, as hooks of the one loop (`training.loop`).

The collapse guard's checks, each epoch's metrics row, checkpoints (at epoch
ends, every N steps, and before a stop), SIGTERM/SIGINT, and the progress
display. `cnnjax.train` puts them in its loop; diagnose and the benchmark use
the loop with hooks of their own.
"""
import contextlib
import time
from typing import Any, Callable, Iterator

from cnnjax.runs import checkpoints
from cnnjax.runs import preemption
from cnnjax.runs import selection
from cnnjax.runs import writers
from cnnjax.training import diagnostics
from cnnjax.training.loop import Hook
from cnnjax.training.loop import Loop
from cnnjax.training.steps import as_floats

PROGRESS_REFRESH_STEPS = 25  # Steps between updates of the progress bar's running metrics.
# Away from a terminal (log files), an epoch gets a plain progress line at these fractions of
# its steps, once it has run PROGRESS_LINE_SECONDS: long epochs say how they go, short ones don't.
PROGRESS_LINE_FRACTIONS = (0.25, 0.5, 0.75)
PROGRESS_LINE_SECONDS = 20.0


class GuardHook(Hook):
  """The collapse guard's checks: losses every few steps and at epoch ends, ReLUs every few
  steps. A collapse warns, or with `stop` (config.stop_on_collapse) stops the run."""

  def __init__(self, guard: diagnostics.CollapseGuard, stop: bool, log: writers.RunWriter):
    self.guard, self.stop, self.log = guard, stop, log
    self.every_steps = guard.every_steps

  def after_step(self, loop, images, loss):
    self.guard.record(loop.step, loss, loop.call_steps)
    if self.guard.due(loop.step):
      self.check_losses(loop)
      stats = loop.trainer.activation_statistics(loop.state, images)
      self._report(self.guard.check_activations(stats, loop.step), loop)

  def epoch_end(self, loop, epoch):
    self.check_losses(loop)

  def check_losses(self, loop: Loop) -> None:
    """Raises at a non-finite loss; reports a collapse. Also runs before every checkpoint."""
    self._report(self.guard.check_losses(), loop)

  def _report(self, symptom: str | None, loop: Loop) -> None:
    if symptom is None:
      return
    message = diagnostics.collapse_message(symptom)
    self.log.announce(f'WARNING: {message}')
    if self.stop:
      loop.request_stop(diagnostics.TrainingCollapsedError(
          f'{message} Stopped at step {loop.step} (config.stop_on_collapse); the state at this '
          'step is saved, so the same command continues the run.'))


class EpochRowHook(Hook):
  """Writes each epoch's metrics.jsonl row: training metrics, validation, seconds."""

  def __init__(self, log: writers.RunWriter, multi_stage: bool):
    self.log, self.multi_stage = log, multi_stage
    self.row: dict[str, Any] | None = None  # The last epoch's, for the hooks after this one.

  def epoch_end(self, loop, epoch):
    row = {'epoch': epoch + 1, 'step': loop.step}
    row.update({f'train_{k}': v for k, v in as_floats(loop.running.compute()).items()})
    if loop.data.val is not None:
      val_metrics, _, _ = loop.trainer.evaluate(loop.state, loop.data.val)
      row.update({f'val_{k}': v for k, v in val_metrics.items()})
    row['epoch_seconds'] = loop.seconds_since_epoch_start()
    if self.multi_stage:
      row['stage'] = loop.stage.name
    self.log.write_epoch(row)
    self.row = row


class SelectionHook(Hook):
  """Model selection on each epoch's row (see `runs.selection`): saves the weights of a new
  best epoch (`best` is None unless they are reported) and ends training early when the
  monitored metric has stopped improving. Runs after the row hook, before the checkpoint's."""

  def __init__(self, selection_: selection.Selection, progress: selection.Progress,
               rows: EpochRowHook, best: checkpoints.BestWeights | None,
               log: writers.RunWriter):
    self.selection, self.progress, self.rows, self.best, self.log = (
        selection_, progress, rows, best, log)

  def epoch_end(self, loop, epoch):
    if self.progress.update(self.selection, self.rows.row) and self.best is not None:
      self.best.save(loop.step, loop.state.evaluation_variables,
                     {'epoch': self.progress.best_epoch, 'value': self.progress.best_value,
                      'monitor': self.selection.monitor})
    if self.progress.stopped:
      self.log.announce(
          f'Epoch {epoch + 1}: early stopping, {self.selection.monitor} has not improved for '
          f'{self.selection.patience} epoch(s); the best was {self.progress.best_value:.4f} at '
          f'epoch {self.progress.best_epoch}.')
      loop.request_end()


class CheckpointHook(Hook):
  """Saves at every epoch end, every `every_steps` steps, and before the loop stops.

  The guard checks the losses first: a non-finite loss never reaches a checkpoint.
  """

  def __init__(self, checkpointer: checkpoints.Checkpointer, every_steps: int,
               guard: GuardHook, run_meta: dict[str, Any]):
    self.checkpointer, self.every_steps, self.guard = checkpointer, every_steps, guard
    self.run_meta = run_meta  # What the run started from: weights file, data fingerprints.
    self.saved_step: int | None = None

  def after_step(self, loop, images, loss):
    if (self.every_steps and loop.step % self.every_steps == 0
        and loop.step % loop.steps_per_epoch):  # Epoch ends save in epoch_end.
      self.save(loop)

  def epoch_end(self, loop, epoch):
    if self.saved_step != loop.step:  # A run cut short where every_steps had just saved.
      self.save(loop)

  def stopping(self, loop):
    if self.saved_step != loop.step:
      self.save(loop)
    self.checkpointer.wait()

  def save(self, loop: Loop) -> None:
    self.guard.check_losses(loop)
    self.checkpointer.save(loop.step, loop.state, loop.running, {
        'train_seconds': loop.train_seconds(), 'epoch_seconds': loop.epoch_seconds(),
        'stage': loop.stage.index, **self.run_meta})
    self.saved_step = loop.step


class SignalHook(Hook):
  """Turns SIGTERM/SIGINT into a stop after the current step (see `preemption`)."""

  def __init__(self, signals: preemption.SignalGuard):
    self.signals = signals

  def after_step(self, loop, images, loss):
    if self.signals.requested:
      loop.request_stop(preemption.StopRequested.at_step(self.signals.signum, loop.step))

  def epoch_end(self, loop, epoch):
    """A signal during the epoch's end (its validation, its checkpoint: the last hooks) stops
    there, as it said it would; not after the next epoch's first step, nor, after the last
    epoch, only once the test evaluation and the report are done."""
    self.after_step(loop, None, None)


class PassProgress:
  """How one long pass goes (an epoch's steps, a backbone's features being cached): a bar on
  a terminal; elsewhere (log files) a plain line at PROGRESS_LINE_FRACTIONS of it, once it has
  run PROGRESS_LINE_SECONDS, so that long passes say how they go and short ones don't."""

  def __init__(self, log: writers.RunWriter, description: str, total: int, unit: str):
    self.log, self.description, self.total, self.unit = log, description, total, unit
    self.done, self.start = 0, time.perf_counter()
    self.marks = [round(f * total) for f in PROGRESS_LINE_FRACTIONS]
    self.bar = log.progress_bar(description, total, unit)

  def update(self, count: int, metrics: Callable[[], dict[str, float]] | None = None) -> None:
    """`count` more done; `metrics`, where given, the running ones to show with it."""
    before, self.done = self.done, min(self.done + count, self.total)
    if self.bar is not None:
      self.bar.update(self.done - before)
      if metrics and self.done // PROGRESS_REFRESH_STEPS > before // PROGRESS_REFRESH_STEPS:
        self.bar.set_postfix({k: f'{v:.4f}' for k, v in metrics().items()})
    elif (self.log.is_writer and any(before < mark <= self.done for mark in self.marks)
          and time.perf_counter() - self.start >= PROGRESS_LINE_SECONDS):
      self.log.progress_line(self.description, self.done, self.total, self.unit,
                             time.perf_counter() - self.start, metrics() if metrics else None)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


@contextlib.contextmanager
def caching_watched(log: writers.RunWriter, signals: preemption.SignalGuard, total: int
                    ) -> Iterator[Callable[[int], None]]:
  """Around the caching of a frozen backbone's features of `total` images (`FeatureCache`'s
  watch): a line saying so, its progress, and a stop signal honoured after the batch it comes
  in, where nothing is lost: the training state is the last checkpoint's, and the next run
  caches the features again."""
  log.announce(f"Caching the frozen backbone's features of {total:,} images, once for the run.")
  progress = PassProgress(log, 'Caching features', total, 'image')
  note, signals.note = signals.note, preemption.WHILE_CACHING

  def after_batch(count: int) -> None:
    progress.update(count)
    signals.stop_if_requested(preemption.CACHING_STOPPED)

  try:
    yield after_batch
  finally:
    progress.close()
    signals.note = note


class ProgressHook(Hook):
  """Within an epoch: a progress bar with the running loss and accuracy on a terminal, a few
  plain lines elsewhere."""

  def __init__(self, log: writers.RunWriter):
    self.log, self.progress = log, None

  def epoch_start(self, loop, epoch, steps):
    self.progress = PassProgress(self.log, f'Epoch {epoch + 1}/{self.log.num_epochs}', steps,
                                 'step')

  def after_step(self, loop, images, loss):
    self.progress.update(loop.call_steps, lambda: self._metrics(loop))

  @staticmethod
  def _metrics(loop: Loop) -> dict[str, float]:
    metrics = as_floats(loop.running.compute())
    return {'loss': metrics['loss'], 'accuracy': metrics['accuracy']}

  def epoch_end(self, loop, epoch):
    self.stopping(loop)

  def stopping(self, loop):
    if self.progress is not None:
      self.progress.close()
      self.progress = None
