"""Batches from in-memory splits, in an order that is a pure function of (seed, epoch).

Training drops the last partial batch of an epoch (every step then has the
same shape and splits evenly over devices; Keras would instead run one
smaller last batch). Evaluation covers every example exactly once: the last
batch is padded and the padding masked out of the metrics.
"""
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.errors import ConfigError


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


def train_batches(split: datasets.Split, batch_size: int, seed: int, epoch: int,
                  mesh: jax.sharding.Mesh, first_step: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's rows of each global batch of `epoch`, from `first_step` on."""
  order = epoch_order(seed, epoch, len(split))
  local = sharding.host_local_rows(mesh, batch_size)
  for step in range(first_step, steps_per_epoch(len(split), batch_size)):
    index = order[step * batch_size:(step + 1) * batch_size][local]
    yield split.images[index], split.labels[index]


def eval_batches(split: datasets.Split, batch_size: int, mesh: jax.sharding.Mesh
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images, labels, mask) covering each example once; padding has mask False."""
  local = sharding.host_local_rows(mesh, batch_size)
  for start in range(0, len(split), batch_size):
    index = np.arange(start, start + batch_size)
    mask = index < len(split)
    index = np.where(mask, index, 0)[local]
    yield split.images[index], split.labels[index], mask[local]
