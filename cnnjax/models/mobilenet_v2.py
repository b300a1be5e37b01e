"""MobileNetV2 (alpha 1.0) without its top, as `keras.applications.MobileNetV2`.

Every submodule carries the Keras layer name (`Conv1`, `bn_Conv1`,
`block_3_depthwise`, `Conv_1_bn`, ...), so ImageNet weights port by name and
fine-tuning patterns can name Keras blocks. Keras details that change the
numbers: BatchNorm epsilon 1e-3 / momentum 0.999, ReLU6, no conv biases, and
stride-2 depthwise convs that pad explicitly (`correct_pad`) then run 'valid'.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers

# (output channels, stride, expansion) of inverted residual blocks 0..16.
BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)
STEM_FEATURES = 32
TOP_FEATURES = 1280


def block_prefix(block_id: int) -> str:
  """Keras' name prefix of inverted residual block `block_id`."""
  return f'block_{block_id}_' if block_id else 'expanded_conv_'


def block_patterns() -> list[str]:
  """Regexes over parameter paths, one per block, bottom to top: the stem (`Conv1`), the 17
  inverted residual blocks and the top 1x1 conv (`Conv_1`). Fine-tuning unfreezes the top."""
  return (['(Conv1|bn_Conv1)/'] + [block_prefix(b) for b in range(len(BLOCKS))]
          + ['(Conv_1|Conv_1_bn)/'])


def keras_layer_names() -> list[str]:
  """`keras.applications.MobileNetV2(include_top=False).layers`' names, in order.

  Keras' fine-tuning recipes cut this list at an index (`layers[fine_tune_at:]`
  train); index 100 is `block_11_expand_relu`.
  """
  names = ['input_1', 'Conv1', 'bn_Conv1', 'Conv1_relu']
  in_channels = STEM_FEATURES
  for block_id, (features, stride, _) in enumerate(BLOCKS):
    prefix = block_prefix(block_id)
    if block_id:
      names += [prefix + 'expand', prefix + 'expand_BN', prefix + 'expand_relu']
    if stride == 2:
      names.append(prefix + 'pad')
    names += [prefix + 'depthwise', prefix + 'depthwise_BN', prefix + 'depthwise_relu',
              prefix + 'project', prefix + 'project_BN']
    if in_channels == features and stride == 1:
      names.append(prefix + 'add')
    in_channels = features
  return names + ['Conv_1', 'Conv_1_bn', 'out_relu']


def correct_pad(height: int, width: int, kernel: int = 3) -> tuple[tuple[int, int], ...]:
  """`keras.applications.imagenet_utils.correct_pad` for a stride-2 conv."""
  adjust = (1 - height % 2, 1 - width % 2)
  half = kernel // 2
  return ((half - adjust[0], half), (half - adjust[1], half))


class MobileNetV2(nn.Module):
  """The MobileNetV2 feature extractor; returns the 1280-channel feature map."""
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=layers.keras_kernel_init,
                             dtype=self.dtype)
    bn = functools.partial(layers.KerasBatchNorm, momentum=0.999, epsilon=1e-3,
                           trainable_pattern=self.trainable_pattern, dtype=self.dtype)

    x = conv(STEM_FEATURES, (3, 3), strides=(2, 2), padding='SAME', name='Conv1')(x)
    x = layers.ReLU(6.0, name='Conv1_relu')(bn(name='bn_Conv1')(x, train))

    for block_id, (features, stride, expansion) in enumerate(BLOCKS):
      prefix = block_prefix(block_id)
      inputs = x
      in_channels = x.shape[-1]
      if block_id:
        x = conv(expansion * in_channels, (1, 1), name=prefix + 'expand')(x)
        x = layers.ReLU(6.0, name=prefix + 'expand_relu')(bn(name=prefix + 'expand_BN')(x, train))
      if stride == 2:
        x = jnp.pad(x, ((0, 0),) + correct_pad(x.shape[1], x.shape[2]) + ((0, 0),))
      x = layers.DepthwiseConv((3, 3), strides=(stride, stride), dtype=self.dtype,
                               padding='SAME' if stride == 1 else 'VALID',
                               name=prefix + 'depthwise')(x)
      x = layers.ReLU(6.0, name=prefix + 'depthwise_relu')(
          bn(name=prefix + 'depthwise_BN')(x, train))
      x = conv(features, (1, 1), name=prefix + 'project')(x)
      x = bn(name=prefix + 'project_BN')(x, train)
      if in_channels == features and stride == 1:
        x = x + inputs

    x = conv(TOP_FEATURES, (1, 1), name='Conv_1')(x)
    return layers.ReLU(6.0, name='out_relu')(bn(name='Conv_1_bn')(x, train))
