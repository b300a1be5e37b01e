"""VGG16 without its top, as `keras.applications.VGG16(include_top=False)`.

Submodules carry Keras' layer names (`block1_conv1` ...) so ImageNet weights
port by name.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers

# Output channels of each conv, block by block (13 convs, 14,714,688 params).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def conv_names() -> list[str]:
  """Keras' names of the 13 convolutions, bottom to top: `block1_conv1` ... `block5_conv3`."""
  return [f'block{b}_conv{c}' for b, block in enumerate(VGG16_BLOCKS, start=1)
          for c in range(1, len(block) + 1)]


def block_patterns() -> list[str]:
  """Regexes over parameter paths, one per block, bottom to top (fine-tuning unfreezes the top)."""
  return [f'block{b}_' for b in range(1, len(VGG16_BLOCKS) + 1)]


class VGG16(nn.Module):
  """The 13 convolutions and 5 max pools of VGG16; returns the last feature map."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    for b, block in enumerate(VGG16_BLOCKS, start=1):
      for c, features in enumerate(block, start=1):
        conv = layers.Conv(features, (3, 3), padding='SAME', dtype=self.dtype,
                           name=f'block{b}_conv{c}')
        x = nn.relu(conv(x))
      x = layers.max_pool_2x2(x)
    return x
