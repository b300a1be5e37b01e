"""The small CNNs of both studies, layer for layer as the Keras models.

`dtype` is the computation dtype (bfloat16 with config.half_precision);
parameters stay float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers


class FashionCNNSimple(nn.Module):
  """Study A `cnn_simple`: Conv32-Pool-Conv64-Pool-Flatten-Dense (50,186 params)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    for i, features in enumerate((32, 64)):  # Conv-ReLU-Pool, pooled before the bias.
      x = layers.PoolingConv(features, (3, 3), padding='SAME', dtype=self.dtype,
                             name=f'conv_{i}')(x)
      x = layers.ReLU(name=f'conv_{i}_relu')(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(layers.flatten(x))


class FashionCNNDeep(nn.Module):
  """Study A `cnn_deep`: three conv blocks with dropout, Dense256 head (436,586 params).

  `batch_norm=True`: a BatchNorm after every conv (in place of its bias), before its ReLU,
  and the block's pooling after the ReLU.
  """
  num_classes: int
  block_features: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128,))
  block_dropout: float = 0.25
  hidden: int = 256
  head_dropout: float = 0.5
  batch_norm: bool = False
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for b, block in enumerate(self.block_features):
      for c, features in enumerate(block):
        name, last = f'block{b}_conv{c}', c == len(block) - 1
        if self.batch_norm:  # Conv, BatchNorm, ReLU, then the block's pool.
          x = layers.Conv(features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype,
                          name=name)(x)
          x = layers.ReLU(name=f'{name}_relu')(layers.KerasBatchNorm(
              trainable_pattern=self.trainable_pattern, dtype=self.dtype,
              name=f'{name}_bn')(x, train))
          x = layers.max_pool_2x2(x) if last else x
        else:  # The block's last conv pools before its bias (see layers.PoolingConv).
          conv = layers.PoolingConv if last else layers.Conv
          x = layers.ReLU(name=f'{name}_relu')(
              conv(features, (3, 3), padding='SAME', dtype=self.dtype, name=name)(x))
      x = layers.Dropout(self.block_dropout, deterministic=not train)(x)
    x = layers.Dense(self.hidden, dtype=self.dtype, name='hidden')(layers.flatten(x))
    x = layers.ReLU(name='hidden_relu')(x)
    x = layers.Dropout(self.head_dropout, deterministic=not train)(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x)


class CifarCNN(nn.Module):
  """Study B `cifar_cnn`: 'valid' convs, Dense128, Dropout .3 (315,722 params)."""
  num_classes: int
  hidden: int = 128
  dropout: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, features in enumerate((32, 64)):  # Conv-ReLU-Pool, pooled before the bias.
      x = layers.PoolingConv(features, (3, 3), padding='VALID', dtype=self.dtype,
                             name=f'conv_{i}')(x)
      x = layers.ReLU(name=f'conv_{i}_relu')(x)
    x = layers.Dense(self.hidden, dtype=self.dtype, name='hidden')(layers.flatten(x))
    x = layers.ReLU(name='hidden_relu')(x)
    x = layers.Dropout(self.dropout, deterministic=not train)(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x)
