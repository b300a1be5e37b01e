"""Building blocks shared by the models, with Keras' defaults.

The studies were written in Keras, so every layer here starts from what Keras
would have given it: glorot-uniform kernels, zero biases, and BatchNorm with
epsilon 1e-3 / momentum 0.99 unless a model says otherwise. Matching these
is what makes parameter counts, initial losses and ported weights agree.
"""
import re
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

keras_kernel_init = nn.initializers.glorot_uniform()
keras_bias_init = nn.initializers.zeros


class Dense(nn.Dense):
  """`nn.Dense` with Keras' default initialisers."""
  kernel_init: Callable = keras_kernel_init
  bias_init: Callable = keras_bias_init


class Conv(nn.Conv):
  """`nn.Conv` with Keras' default initialisers."""
  kernel_init: Callable = keras_kernel_init
  bias_init: Callable = keras_bias_init


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Keras `MaxPooling2D()`: 2x2 windows, stride 2, 'valid' (odd edges dropped)."""
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding='VALID')


def flatten(x: jax.Array) -> jax.Array:
  """Keras `Flatten` for channels-last input (row-major over H, W, C)."""
  return x.reshape((x.shape[0], -1))


def is_trainable(path: Sequence[str], trainable_pattern: str) -> bool:
  """Whether the parameter at `path` trains under `config.trainable`.

  One rule for the optimizer (which params get gradients) and for BatchNorm
  (which layers update their statistics), so the two never disagree.
  """
  return re.search(trainable_pattern, '/'.join(path)) is not None


class KerasBatchNorm(nn.BatchNorm):
  """BatchNorm that behaves like a Keras `BatchNormalization` layer.

  Keras runs a BatchNorm layer in inference mode (moving statistics, no
  update) both at evaluation and whenever the layer is frozen
  (`trainable=False`), which is how frozen transfer backbones work. The
  layer decides that from its own parameter path and the run's trainable
  pattern, the same rule the optimizer uses. Defaults are Keras' (epsilon
  1e-3, momentum 0.99); Flax's momentum has the same meaning as Keras'.
  """
  epsilon: float = 1e-3
  momentum: float = 0.99
  # Keras computes the variance as E[(x - mean)^2]; Flax's fast E[x^2] - mean^2
  # cancels catastrophically when the variance is small next to the mean.
  use_fast_variance: bool = False
  trainable_pattern: str = '.*'

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:  # pytype: disable=signature-mismatch
    frozen = not is_trainable(self.path + ('scale',), self.trainable_pattern)
    return super().__call__(x, use_running_average=not train or frozen)


def relu6(x: jax.Array) -> jax.Array:
  return jnp.minimum(jax.nn.relu(x), 6.0)

