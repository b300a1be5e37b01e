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


def keras_layer_names() -> list[str]:
  """`keras.applications.VGG16(include_top=False).layers`' names, in order."""
  names = ['input_1']
  for b, block in enumerate(VGG16_BLOCKS, start=1):
    names += [f'block{b}_conv{c}' for c in range(1, len(block) + 1)] + [f'block{b}_pool']
  return names


def block_patterns() -> list[str]:
  """Regexes over parameter paths, one per block, bottom to top (fine-tuning unfreezes the top)."""
  return [f'block{b}_' for b in range(1, len(VGG16_BLOCKS) + 1)]


class VGG16(nn.Module):
  """The 13 convolutions and 5 max pools of VGG16; returns the last feature map.

  `batch_norm` adds a BatchNorm after every conv (before its ReLU), as VGG16-BN;
  `kernel_init` names the convs' initialiser (Keras' 'glorot_uniform' or 'he_normal');
  `width` scales every conv's channels (1.0 = VGG16; smaller for quick experiments).
  """
  dtype: Any = jnp.float32
  batch_norm: bool = False
  kernel_init: str = 'glorot_uniform'
  width: float = 1.0
  trainable_pattern: str = '.*'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for b, block in enumerate(VGG16_BLOCKS, start=1):
      for c, features in enumerate(block, start=1):
        name = f'block{b}_conv{c}'
        x = layers.Conv(max(1, round(features * self.width)), (3, 3), padding='SAME',
                        kernel_init=layers.KERNEL_INITS[self.kernel_init], dtype=self.dtype,
                        name=name)(x)
        if self.batch_norm:
          x = layers.KerasBatchNorm(trainable_pattern=self.trainable_pattern, dtype=self.dtype,
                                    name=f'{name}_bn')(x, train)
        x = layers.ReLU(name=f'{name}_relu')(x)
      x = layers.max_pool_2x2(x)
    return x
