"""Splitting parameters into trainable and frozen subtrees, and counting them.

Frozen parameters live outside the optimizer: they get no gradient (so XLA
does not compute their weight gradients) and no Adam moments (so a frozen
15M-parameter VGG16 backbone costs no optimizer memory).
"""
from typing import Any

import jax
from flax import traverse_util

from cnnjax.models.layers import is_trainable

PyTree = Any


def partition(params: PyTree, trainable_pattern: str) -> tuple[PyTree, PyTree]:
  """(trainable, frozen) subtrees of `params` under the `config.trainable` regex."""
  flat = traverse_util.flatten_dict(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k, trainable_pattern)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `partition`."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)


def count(tree: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
