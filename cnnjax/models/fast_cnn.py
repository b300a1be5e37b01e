"""A CNN that pools inside each block, for short CPU budgets on 32x32 images.

A 2x2 'valid' stem conv (32x32 -> 31x31), then three blocks of

    conv3x3 -> max pool 2x2 -> BatchNorm -> activation -> conv3x3 -> BatchNorm -> activation

(31 -> 15 -> 7 -> 3 pixels), a global max pool and a linear classifier whose
logits are scaled by `logit_scale`. Pooling right after each block's first
conv puts the second conv at a quarter of the pixels, so at about the cost per
image of cnn_deep's plan (two convs before each pool) at 48-96-192 filters, the
blocks can be 64-256-256 filters wide. The logit scale (1/9 by default)
softens the initial softmax over maxima of the block features.

The stem is either a random conv followed by BatchNorm and the activation
(`stem='conv'`), or patch whitening (`stem='whitening'`): filters computed from
the training images by `init_from_data` (cnnjax/models/whitening.py), a bias,
and the activation. Its kernel should then stay as computed:
`config.trainable='^(?!stem/kernel)'` leaves it out of the optimizer.
`batchnorm_scale=False` drops BatchNorm's learned scale (the following layer
can scale), and `activation='gelu'` swaps every ReLU for a GELU.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models import layers
from cnnjax.models import whitening

STEMS = ('conv', 'whitening')
ACTIVATIONS = ('relu', 'gelu')


class FastCNN(nn.Module):
  """Stem conv, three conv-pool-conv blocks, global max pool, linear (1,972,826 params)."""
  num_classes: int
  stem: str = 'conv'
  stem_features: int = 24      # 'conv' stem only: a whitening stem has 2 * 2 * 2 * C filters.
  block_features: tuple[int, ...] = (64, 256, 256)
  activation: str = 'relu'
  batchnorm_scale: bool = True
  logit_scale: float = 1 / 9
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32

  def __post_init__(self):
    # At construction: the config check builds the model, so a typo fails before any run.
    for field, value, choices in (('stem', self.stem, STEMS),
                                  ('activation', self.activation, ACTIVATIONS)):
      if value not in choices:
        raise ValueError(f'Unknown {field} {value!r} (config.model_kwargs.{field}). '
                         f'Choose one of {", ".join(choices)}.')
    super().__post_init__()

  def activate(self, x: jax.Array, name: str) -> jax.Array:
    return nn.gelu(x) if self.activation == 'gelu' else layers.ReLU(name=name)(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def conv_bn_act(x, features, kernel, padding, name, pool=False):
      x = layers.Conv(features, kernel, padding=padding, use_bias=False,
                      kernel_init=layers.KERNEL_INITS['he_normal'], dtype=self.dtype, name=name)(x)
      x = layers.max_pool_2x2(x) if pool else x
      x = layers.KerasBatchNorm(momentum=0.9, epsilon=1e-5, use_scale=self.batchnorm_scale,
                                dtype=self.dtype, trainable_pattern=self.trainable_pattern,
                                name=f'{name}_bn')(x, train)
      return self.activate(x, f'{name}_relu')

    if self.stem == 'whitening':
      # Random filters until `init_from_data` puts the data's in their place.
      x = layers.Conv(8 * x.shape[-1], (2, 2), padding='VALID', dtype=self.dtype,
                      kernel_init=layers.KERNEL_INITS['he_normal'], name='stem')(x)
      x = self.activate(x, 'stem_relu')
    else:
      x = conv_bn_act(x, self.stem_features, (2, 2), 'VALID', 'stem')
    for b, features in enumerate(self.block_features):
      x = conv_bn_act(x, features, (3, 3), 'SAME', f'block{b}_conv0', pool=True)
      x = conv_bn_act(x, features, (3, 3), 'SAME', f'block{b}_conv1')
    x = jnp.max(x, axis=(1, 2))
    return layers.Dense(self.num_classes, dtype=self.dtype, name='logits')(x) * self.logit_scale

  def init_from_data(self, variables: dict[str, Any], images: np.ndarray) -> dict[str, Any]:
    """`variables` with a whitening stem's filters computed from `images` (model inputs, a
    sample of the training split); unchanged for a 'conv' stem."""
    if self.stem != 'whitening':
      return variables
    params = dict(variables['params'])
    params['stem'] = dict(params['stem'], kernel=jnp.asarray(whitening.whitening_kernel(images, 2)))
    return dict(variables, params=params)
