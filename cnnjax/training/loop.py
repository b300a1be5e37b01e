"""The one training loop; everything periodic plugs into it as a hook.

`Loop.run` trains from the current step to an end step: the batches of each
epoch come in the order of (seed, epoch), each step is one jitted call (or
each call several steps, `steps_per_dispatch`: see `dispatch`), and an
epoch's running metrics start afresh at its first step. What else happens
(the epoch's metrics row, checkpoints, the collapse guard, signals, a
progress bar, `cnnjax.diagnose`'s per-layer reports, the benchmark's timers)
is done by hooks, in the spirit of clu's periodic actions:

- `epoch_start(loop, epoch, steps)` before an epoch's first step of this run;
- `before_step(loop, images, labels)` with the batch about to be trained
  (a call of several steps: its batches, stacked on a leading axis);
- `after_step(loop, images, loss)` after it (`loop.step` counts it); after a
  call of several steps, once, with the last step's batch and the losses of
  all `loop.call_steps` steps. A call ends at every multiple of a hook's
  `every_steps`, so a hook that acts there sees the state of that step;
- `epoch_end(loop, epoch)` when an epoch ends, or the run ends inside one;
- `stopping(loop)` when a stop was requested, before the loop raises it.

A hook that finds a reason to stop (a signal, a collapse) calls
`loop.request_stop(error)`. The loop finishes the step, and the epoch's end
if that step ended it, so no epoch is left without its row, then runs the
`stopping` hooks (which save) and raises the error. A hook that finds the
training done (early stopping) calls `loop.request_end()` at an epoch's end:
`run` returns there, and `ended` tells the caller not to start another stage.
"""
import itertools
import time
from typing import Any, Sequence

import jax

from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import pipeline
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.training import dispatch
from cnnjax.training.steps import Metrics
from cnnjax.training.steps import Trainer
from cnnjax.training.steps import TrainState


class Hook:
  """Work done around the loop's steps; every method does nothing unless overridden.

  `every_steps` > 0: calls of several steps end at its multiples (see the module docstring).
  """
  every_steps = 0

  def epoch_start(self, loop: 'Loop', epoch: int, steps: int) -> None:
    pass

  def before_step(self, loop: 'Loop', images: jax.Array, labels: jax.Array) -> None:
    pass

  def after_step(self, loop: 'Loop', images: jax.Array, loss: jax.Array) -> None:
    pass

  def epoch_end(self, loop: 'Loop', epoch: int) -> None:
    pass

  def stopping(self, loop: 'Loop') -> None:
    pass


class Loop:
  """Steps a state through epochs of a split; holds what the hooks read and change.

  Wall-clock totals can start from a resumed run's: `train_seconds` and
  `epoch_seconds` continue from the values given. `steps_per_dispatch` > 1 trains that many
  steps per call, with batches from the device where `data_on_device` (see `dispatch`).
  """

  def __init__(self, state: TrainState, running: Metrics, *, mesh: jax.sharding.Mesh,
               batch_size: int, seed: int, steps_per_epoch: int, hooks: Sequence[Hook] = (),
               train_seconds: float = 0.0, epoch_seconds: float = 0.0,
               steps_per_dispatch: int = 1, data_on_device: bool = False):
    self.state, self.running, self.step = state, running, int(state.step)
    self.mesh, self.batch_size, self.seed = mesh, batch_size, seed
    self.steps_per_epoch = steps_per_epoch
    # A call never spans an epoch: more steps than an epoch's would only cost memory.
    self.steps_per_dispatch = min(steps_per_dispatch, steps_per_epoch)
    self.data_on_device = data_on_device
    self.call_steps = 1  # Steps the last call trained.
    self._feed: dispatch.HostFeed | dispatch.DeviceFeed | None = None  # Of the last split.
    self.hooks = list(hooks)
    self.trainer: Trainer | None = None  # The stage being trained, and its data.
    self.data: datasets.Dataset | None = None
    self.stage: Any = None
    now = time.perf_counter()
    self._train_start, self._epoch_start = now - train_seconds, now - epoch_seconds
    self._stop: Exception | None = None
    self.ended = False

  def train_seconds(self) -> float:
    return time.perf_counter() - self._train_start

  def epoch_seconds(self) -> float:
    """Seconds spent in the epoch in progress (0 at an epoch boundary)."""
    return time.perf_counter() - self._epoch_start if self.step % self.steps_per_epoch else 0.0

  def seconds_since_epoch_start(self) -> float:
    return time.perf_counter() - self._epoch_start

  def request_stop(self, reason: Exception) -> None:
    """Stops the loop after this step (and its epoch's end); `reason` is then raised."""
    if self._stop is None:
      self._stop = reason

  def request_end(self) -> None:
    """Ends training at the end of this epoch (early stopping): `run` returns there."""
    self.ended = True

  def run(self, trainer: Trainer, data: datasets.Dataset, end_step: int, stage: Any = None
          ) -> None:
    """Trains on `data.train` with `trainer` until step `end_step`."""
    self.trainer, self.data, self.stage = trainer, data, stage
    spe = self.steps_per_epoch
    while self.step < end_step and not self.ended:
      epoch = self.step // spe
      epoch_end_step = min((epoch + 1) * spe, end_step)
      if self.step % spe == 0:
        self.running = trainer.empty_metrics()
      for hook in self.hooks:
        hook.epoch_start(self, epoch, epoch_end_step - self.step)
      if self.steps_per_dispatch == 1 and not self.data_on_device:
        self._step_by_step(trainer, data.train, epoch, epoch_end_step)
      else:
        self._in_calls(trainer, data.train, epoch, epoch_end_step)
      if self.step == epoch_end_step:
        for hook in self.hooks:
          hook.epoch_end(self, epoch)
        self._epoch_start = time.perf_counter()
      if self._stop is not None:
        for hook in self.hooks:
          hook.stopping(self)
        raise self._stop

  def _step_by_step(self, trainer: Trainer, split: Split | StreamedSplit, epoch: int,
                    end_step: int) -> None:
    """One call per step, each batch read on the host."""
    batches = pipeline.train_batches(split, self.batch_size, self.seed, epoch, self.mesh,
                                     first_step=self.step - epoch * self.steps_per_epoch)
    for batch in itertools.islice(batches, end_step - self.step):
      images, labels = sharding.put_global_batch(self.mesh, batch)
      for hook in self.hooks:
        hook.before_step(self, images, labels)
      self.state, self.running, loss = trainer.train_step(self.state, images, labels,
                                                          self.running)
      self.step += 1
      for hook in self.hooks:
        hook.after_step(self, images, loss)
      if self._stop is not None:
        break

  def _in_calls(self, trainer: Trainer, split: Split | StreamedSplit, epoch: int,
                end_step: int) -> None:
    """Up to `steps_per_dispatch` steps per call, ending where a hook must see the state."""
    if self._feed is None or self._feed.split is not split:
      self._feed = dispatch.make_feed(split, self.data_on_device, self.mesh, self.batch_size,
                                      self.seed, self.steps_per_dispatch)
    feed = self._feed
    feed.start_epoch(epoch, self.step - epoch * self.steps_per_epoch)
    periods = [self.steps_per_dispatch] + [hook.every_steps for hook in self.hooks]
    while self.step < end_step:
      steps = dispatch.call_end(self.step, end_step, periods) - self.step
      images, labels = feed.take(steps)
      for hook in self.hooks:
        hook.before_step(self, images, labels)
      self.state, self.running, losses = trainer.train_steps(self.state, images, labels,
                                                             self.running, steps)
      self.step += steps
      self.call_steps = steps
      last_images = images[steps - 1]
      for hook in self.hooks:
        hook.after_step(self, last_images, losses)
      if self._stop is not None:
        break
