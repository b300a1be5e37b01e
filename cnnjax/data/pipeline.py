"""Batches in an order that is a pure function of (seed, epoch), from memory or streamed.

Training drops the last partial batch of an epoch (every step then has the
same shape and splits evenly over devices; Keras would instead run one
smaller last batch). Evaluation covers every example exactly once: the last
batch is padded and the padding masked out of the metrics.

Which examples each batch holds is decided here, from the step alone; a
split held in memory gathers them at once, a streamed split reads them with
grain, several batches ahead on `workers` threads. So a streamed run sees the
batches an in-memory run sees, and its reading position is the training
step that every checkpoint holds: a resumed run, mid-epoch included, starts
its reader at that step. Each process reads only its own rows of each
global batch (`sharding.host_local_rows`).
"""
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import sharding
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.errors import ConfigError

# Batches a streamed reader decodes ahead of the one being trained on, per worker.
PREFETCH_PER_WORKER = 2


def to_inputs(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1], as the studies fed them. Runs on device."""
  return images.astype(jnp.float32) / 255.0


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  steps = num_examples // batch_size
  if not steps:
    raise ConfigError(f'config.batch_size={batch_size} is larger than the {num_examples} '
                      'training examples; lower it (--config.batch_size=N).')
  return steps


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The shuffled example order of `epoch`: depends on nothing but its arguments."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def read_batches(split: Split | StreamedSplit, indices: list[np.ndarray]
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images, labels, own) of the examples at each of `indices`, in order; `own` is False
  where a streamed example could not be decoded and another stands in for it."""
  if not split.streamed:
    yield from (split.read_flagged(index) for index in indices)
    return
  import grain
  reader = grain.MapDataset.source(indices).map(split.read_flagged).to_iter_dataset(
      grain.ReadOptions(num_threads=split.workers,
                        prefetch_buffer_size=PREFETCH_PER_WORKER * split.workers))
  yield from reader


def train_indices(num_examples: int, batch_size: int, seed: int, epoch: int,
                  mesh: jax.sharding.Mesh, first_step: int = 0) -> list[np.ndarray]:
  """This process's example indices of each global batch of `epoch`, from `first_step` on."""
  order = epoch_order(seed, epoch, num_examples)
  local = sharding.host_local_rows(mesh, batch_size)
  return [order[step * batch_size:(step + 1) * batch_size][local]
          for step in range(first_step, steps_per_epoch(num_examples, batch_size))]


def train_batches(split: Split | StreamedSplit, batch_size: int, seed: int, epoch: int,
                  mesh: jax.sharding.Mesh, first_step: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's rows of each global batch of `epoch`, from `first_step` on (a stand-in
  trains as the example it is)."""
  return ((images, labels) for images, labels, _ in read_batches(
      split, train_indices(len(split), batch_size, seed, epoch, mesh, first_step)))


def eval_batches(split: Split | StreamedSplit, batch_size: int, mesh: jax.sharding.Mesh
                 ) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images, labels, mask) covering each example once; padding, and a streamed example
  that could not be decoded, have mask False."""
  local = sharding.host_local_rows(mesh, batch_size)
  indices, masks = [], []
  for start in range(0, len(split), batch_size):
    index = np.arange(start, start + batch_size)
    mask = index < len(split)
    indices.append(np.where(mask, index, 0)[local])
    masks.append(mask[local])
  return ((images, labels, mask & own) for (images, labels, own), mask
          in zip(read_batches(split, indices), masks))
