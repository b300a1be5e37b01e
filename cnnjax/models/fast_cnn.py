"""A CNN that pools inside each block, for short CPU budgets on 32x32 images.

A 2x2 'valid' stem conv (32x32 -> 31x31), then three blocks of

    conv3x3 -> max pool 2x2 -> BatchNorm -> ReLU -> conv3x3 -> BatchNorm -> ReLU

(31 -> 15 -> 7 -> 3 pixels), a global max pool and a linear classifier whose
logits are scaled by `logit_scale`. Pooling right after each block's first
conv puts the second conv at a quarter of the pixels, so at about the cost per
image of cnn_deep's plan (two convs before each pool) at 48-96-192 filters, the
blocks can be 64-256-256 filters wide. The logit scale (1/9 by default)
softens the initial softmax over maxima of ReLU features.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers


class FastCNN(nn.Module):
  """Stem conv, three conv-pool-conv blocks, global max pool, linear (1,972,826 params)."""
  num_classes: int
  stem_features: int = 24
  block_features: tuple[int, ...] = (64, 256, 256)
  logit_scale: float = 1 / 9
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def conv_bn_relu(x, features, kernel, padding, name, pool=False):
      x = layers.Conv(features, kernel, padding=padding, use_bias=False,
                      kernel_init=layers.KERNEL_INITS['he_normal'], dtype=self.dtype, name=name)(x)
      x = layers.max_pool_2x2(x) if pool else x
      x = layers.KerasBatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                trainable_pattern=self.trainable_pattern, name=f'{name}_bn')(x, train)
      return layers.ReLU(name=f'{name}_relu')(x)

    x = conv_bn_relu(x, self.stem_features, (2, 2), 'VALID', 'stem')
    for b, features in enumerate(self.block_features):
      x = conv_bn_relu(x, features, (3, 3), 'SAME', f'block{b}_conv0', pool=True)
      x = conv_bn_relu(x, features, (3, 3), 'SAME', f'block{b}_conv1')
    x = jnp.max(x, axis=(1, 2))
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x) * self.logit_scale
