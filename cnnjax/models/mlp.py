"""Study A's dense baselines: Flatten, Dense+ReLU layers, Dense to the classes."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers


class MLP(nn.Module):
  """Keras `Sequential([Flatten(), Dense(h, relu)..., Dense(num_classes)])`."""
  num_classes: int
  hidden_sizes: Sequence[int] = (256, 128)
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm.
    x = layers.flatten(x)
    for i, size in enumerate(self.hidden_sizes):
      x = layers.Dense(size, dtype=self.dtype, name=f'dense_{i}')(x)
      x = layers.ReLU(name=f'dense_{i}_relu')(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x)
