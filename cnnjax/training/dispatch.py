"""Several training steps per device call, fed from the host or from the device itself.

One jitted call per step costs a Python round trip and a host-to-device copy
per batch: on a GPU that is most of a small model's step. So the loop can
hand the device `k` steps at once (`config.steps_per_dispatch`): a
`lax.fori_loop` over `k` batches stacked on a leading axis, which trains
exactly the steps the one-step loop would, in the same order, with the same
dropout and augmentation keys (they come from the step).

The batches of a call come from a feed:

- `HostFeed` reads them on the host, as the one-step loop does (streamed
  splits included), and copies the `k` of them at once;
- `DeviceFeed` holds the whole uint8 split on the device(s) and sends only
  the example indices of the call, which the device gathers
  (`config.data_on_device`). The indices are the pipeline's, so both feeds
  train on the same batches.

A call ends early where the loop must see the state: an epoch's end, the
end of training, or a multiple of any hook's `every_steps` (checkpoints, the
collapse guard). Calls start at multiples of `k` of the global step, so a
run resumed from any checkpoint makes the calls the uninterrupted run made,
and the trip count is an argument, not a shape: one compilation serves them
all.
"""
import itertools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import sharding
from cnnjax.data import pipeline
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.errors import ConfigError

DATA_ON_DEVICE_CHOICES = ('auto', 'true', 'false')
ACCELERATOR_STEPS_PER_DISPATCH = 20  # config.steps_per_dispatch=0 on a GPU or TPU.
# config.data_on_device='auto' puts a split on each device when it takes at most this
# fraction of one device's memory (or, where the device does not say, of 16 GiB).
DEVICE_MEMORY_FRACTION = 0.25
UNKNOWN_DEVICE_MEMORY = 16 * 2 ** 30


def steps_per_dispatch(requested: int, backend: str) -> int:
  """config.steps_per_dispatch, with 0 meaning one step per call on CPU and
  `ACCELERATOR_STEPS_PER_DISPATCH` on a GPU or TPU. XLA:CPU runs a convolution inside a
  device loop many times slower than on its own, and its steps have no round trip to a
  device to save (figures: experiments/results/h100_2026-11-25/README.md)."""
  if requested:
    return requested
  return 1 if backend == 'cpu' else ACCELERATOR_STEPS_PER_DISPATCH


def _device_memory() -> int:
  return int(sharding.memory_stats().get('bytes_limit', UNKNOWN_DEVICE_MEMORY))


def data_on_device(requested: str, split: Split | StreamedSplit, backend: str) -> bool:
  """Whether the training split goes to the device whole (see the module docstring).

  'auto': on a GPU or TPU, for a split held in memory that fits `DEVICE_MEMORY_FRACTION` of
  a device, in a run of one process. 'true' asks for it, and is refused with the reason where
  it cannot be: a streamed split, several processes.
  """
  requested = str(requested).lower()
  possible = not split.streamed and jax.process_count() == 1
  if requested == 'true' and not possible:
    raise ConfigError(
        'config.data_on_device=true needs the training split in memory and one process; this '
        'run ' + ('streams it (config.data_in_memory)' if split.streamed else
                  f'has {jax.process_count()} processes') + '. Pass --config.data_on_device=auto.')
  if requested != 'auto':
    return requested == 'true'
  if not possible or backend == 'cpu':
    return False
  return split.images.nbytes + split.labels.nbytes <= DEVICE_MEMORY_FRACTION * _device_memory()


def call_end(step: int, end_step: int, periods: list[int]) -> int:
  """Where the call that starts at `step` ends: the next multiple of any period, or
  `end_step` if that comes first."""
  return min([end_step] + [(step // period + 1) * period for period in periods if period])


def _stacked(batches: list[tuple[np.ndarray, np.ndarray]], size: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """The batches stacked on a new leading axis, zero-padded to `size` of them (a call with
  fewer steps keeps the shape its compilation was made for)."""
  images, labels = (np.stack(arrays) for arrays in zip(*batches))
  pad = size - len(batches)
  return tuple(np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
               for a in (images, labels))


class _Feed:
  """The batches of one split's calls, `k` of them a call, in the pipeline's order."""

  def __init__(self, split: Split | StreamedSplit, mesh: jax.sharding.Mesh, batch_size: int,
               seed: int, steps_per_call: int):
    self.split, self.mesh, self.batch_size, self.seed = split, mesh, batch_size, seed
    self.k = steps_per_call


class HostFeed(_Feed):
  """Batches read on the host and sent together."""

  def __init__(self, *args):
    super().__init__(*args)
    self._batches: Iterator[tuple[np.ndarray, np.ndarray]] = iter(())

  def start_epoch(self, epoch: int, first_step: int) -> None:
    self._batches = pipeline.train_batches(self.split, self.batch_size, self.seed, epoch,
                                           self.mesh, first_step)

  def take(self, steps: int) -> tuple[jax.Array, jax.Array]:
    """The next `steps` batches, as global (k, batch, ...) arrays sharded on the batch."""
    images, labels = _stacked(list(itertools.islice(self._batches, steps)), self.k)
    return sharding.put_global_batch(self.mesh, (images, labels), batch_axis=1)


class DeviceFeed(_Feed):
  """The whole split on every device; each call sends the indices of its batches."""

  def __init__(self, *args):
    super().__init__(*args)
    replicated = sharding.replicated(self.mesh)
    self.images = jax.device_put(self.split.images, replicated)
    self.labels = jax.device_put(self.split.labels, replicated)
    self._gather = jax.jit(lambda images, labels, index: (images[index], labels[index]),
                           out_shardings=sharding.stacked_batch_sharded(self.mesh))
    self._indices: list[np.ndarray] = []

  def start_epoch(self, epoch: int, first_step: int) -> None:
    self._indices = pipeline.train_indices(len(self.split), self.batch_size, self.seed, epoch,
                                           self.mesh, first_step)

  def take(self, steps: int) -> tuple[jax.Array, jax.Array]:
    taken, self._indices = self._indices[:steps], self._indices[steps:]
    index = np.zeros((self.k, self.batch_size), np.int32)
    index[:steps] = taken
    return self._gather(self.images, self.labels, index)


def make_feed(split: Split | StreamedSplit, on_device: bool, mesh: jax.sharding.Mesh,
              batch_size: int, seed: int, steps_per_call: int) -> HostFeed | DeviceFeed:
  feed = DeviceFeed if on_device else HostFeed
  return feed(split, mesh, batch_size, seed, steps_per_call)


def train_steps(state, images: jax.Array, labels: jax.Array, running, num_steps: jax.Array,
                *, step):
  """`num_steps` calls of `step` (a `steps.train_step` with its options bound), on the
  batches `images[i]`, `labels[i]`; the losses of steps past `num_steps` stay 0.

  `num_steps` is traced: calls of any length up to `len(images)` share one compilation.
  """
  def body(i, carry):
    state, running, losses = carry
    state, running, loss = step(state, images[i], labels[i], running)
    return state, running, losses.at[i].set(loss)
  losses = jnp.zeros((images.shape[0],), jnp.float32)
  return jax.lax.fori_loop(0, num_steps, body, (state, running, losses))
