"""A small ResNet for 28x28 and 32x32 images (He et al., 2016, the CIFAR ResNets).

ResNet-(6n+2): a 3x3 conv with 16 filters, then three stages of n basic
blocks (two 3x3 convs with BatchNorm, a residual connection) at 16, 32 and
64 filters, the second and third stage starting with stride 2, then global
average pooling and the classifier. Where a block changes shape its
shortcut is a strided 1x1 conv with BatchNorm (the paper's option B).
n = 3 is ResNet-20. `width` scales the filters (2 doubles every stage).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers


class BasicBlock(nn.Module):
  features: int
  strides: int
  trainable_pattern: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: layers.KerasBatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                            trainable_pattern=self.trainable_pattern, name=name)
    conv = lambda strides, name: layers.Conv(
        self.features, (3, 3), strides=(strides, strides), padding='SAME', use_bias=False,
        kernel_init=layers.KERNEL_INITS['he_normal'], dtype=self.dtype, name=name)
    y = layers.ReLU(name='relu_1')(bn('bn_1')(conv(self.strides, 'conv_1')(x), train))
    y = bn('bn_2')(conv(1, 'conv_2')(y), train)
    if x.shape != y.shape:
      x = layers.Conv(self.features, (1, 1), strides=(self.strides, self.strides),
                      use_bias=False, kernel_init=layers.KERNEL_INITS['he_normal'],
                      dtype=self.dtype, name='shortcut')(x)
      x = bn('shortcut_bn')(x, train)
    return layers.ReLU(name='relu_out')(x + y)


class ResNet(nn.Module):
  """ResNet-(6 * blocks_per_stage + 2) for small images; 20 layers (0.27M params) by default."""
  num_classes: int
  blocks_per_stage: int = 3
  width: int = 1
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.Conv(16 * self.width, (3, 3), padding='SAME', use_bias=False,
                    kernel_init=layers.KERNEL_INITS['he_normal'], dtype=self.dtype,
                    name='stem')(x)
    x = layers.KerasBatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                              trainable_pattern=self.trainable_pattern, name='stem_bn')(x, train)
    x = layers.ReLU(name='stem_relu')(x)
    for stage, features in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage and not block else 1
        x = BasicBlock(features * self.width, strides, self.trainable_pattern, self.dtype,
                       name=f'stage{stage + 1}_block{block + 1}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x)
