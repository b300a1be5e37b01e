"""Study A's dense baselines: Flatten, Dense+ReLU layers, Dense to the classes."""
from typing import Sequence

import flax.linen as nn
import jax

from cnnjax.models import layers


class MLP(nn.Module):
  """Keras `Sequential([Flatten(), Dense(h, relu)..., Dense(num_classes)])`."""
  num_classes: int
  hidden_sizes: Sequence[int] = (256, 128)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm.
    x = layers.flatten(x)
    for i, size in enumerate(self.hidden_sizes):
      x = nn.relu(layers.Dense(size, name=f'dense_{i}')(x))
    return layers.Dense(self.num_classes, name='logits')(x)
