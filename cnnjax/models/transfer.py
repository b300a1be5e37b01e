"""Backbone classifiers of the transfer studies: resize, adapt, backbone, head.

Both studies wrap a Keras application backbone the same way: resize the small
images to 96x96 inside the model, (for grey Fashion-MNIST) a learned 1x1 conv
to three channels, the backbone without its top, then Flatten, Dense256+ReLU,
Dropout and the class layer. Which parts train is not decided here but by
`config.trainable`; the name of each part below is what that pattern matches.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers
from cnnjax.models import mobilenet_v2
from cnnjax.models import vgg

# Per-channel means of Keras' 'caffe' preprocessing, in BGR order, on 0-255.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
INPUT_ADAPTERS = ('conv1x1', 'repeat', 'none')
PREPROCESSING = ('none', 'caffe', 'tf')
# What `TransferClassifier` computes: the whole model, the backbone's features of an image,
# or the head on such features (how a frozen backbone's features are cached and reused).
PARTS = ('all', 'features', 'head')


def imagenet_preprocess(x: jax.Array, mode: str) -> jax.Array:
  """Keras `preprocess_input` for [0,1] RGB input: 'caffe' (VGG16), 'tf' (MobileNetV2)."""
  if mode == 'none':
    return x
  if mode == 'caffe':
    return x[..., ::-1] * 255.0 - jnp.asarray(CAFFE_BGR_MEAN, x.dtype)
  if mode == 'tf':
    return x * 2.0 - 1.0
  raise ValueError(f'Unknown preprocessing {mode!r}; expected one of {PREPROCESSING}.')


BACKBONES = ('vgg16', 'mobilenet_v2')


def make_backbone(backbone: str, trainable_pattern: str = '.*', name: str | None = None,
                  dtype: Any = jnp.float32, **vgg_options) -> nn.Module:
  """The feature extractor `backbone`; `trainable_pattern` decides which BatchNorms train;
  `vgg_options` (batch_norm, kernel_init, width) change VGG16 (see `vgg.VGG16`)."""
  if backbone == 'vgg16':
    return vgg.VGG16(dtype=dtype, trainable_pattern=trainable_pattern, name=name, **vgg_options)
  if vgg_options:
    raise ValueError(f'Options {sorted(vgg_options)} only apply to the vgg16 backbone.')
  if backbone == 'mobilenet_v2':
    return mobilenet_v2.MobileNetV2(trainable_pattern=trainable_pattern, dtype=dtype, name=name)
  raise ValueError(f'Unknown backbone {backbone!r}; expected one of {BACKBONES}.')


def _backbone_module(backbone: str):
  """The module that defines `backbone`: its layer names and blocks."""
  modules = {'vgg16': vgg, 'mobilenet_v2': mobilenet_v2}
  if backbone not in modules:
    raise ValueError(f'Unknown backbone {backbone!r}; expected one of {BACKBONES}.')
  return modules[backbone]


def keras_layer_names(backbone: str) -> list[str]:
  """The Keras application's layer names, in `model.layers` order."""
  return _backbone_module(backbone).keras_layer_names()


def backbone_blocks(backbone: str) -> list[str]:
  """Regexes matching each block of `backbone`'s parameter paths, bottom to top."""
  return _backbone_module(backbone).block_patterns()


class TransferClassifier(nn.Module):
  """Resize -> input adapter -> backbone -> Flatten-Dense-Dropout-Dense head."""
  num_classes: int
  backbone: str = 'vgg16'
  image_size: int = 96
  input_adapter: str = 'conv1x1'
  preprocessing: str = 'none'
  hidden: int = 256
  dropout: float = 0.5
  trainable_pattern: str = '.*'
  dtype: Any = jnp.float32  # Computation dtype; parameters stay float32.
  # VGG16 only: BatchNorm after each conv (VGG16-BN), the initialiser of the layers followed
  # by a ReLU ('glorot_uniform', Keras' default, or 'he_normal'), and a channel multiplier.
  batch_norm: bool = False
  kernel_init: str = 'glorot_uniform'
  width: float = 1.0

  def __post_init__(self):
    # At construction: the config check builds the model, so a typo fails before any run.
    if self.input_adapter not in INPUT_ADAPTERS:
      raise ValueError(f'Unknown input_adapter {self.input_adapter!r}; '
                       f'expected one of {INPUT_ADAPTERS}.')
    if self.preprocessing not in PREPROCESSING:
      raise ValueError(f'Unknown preprocessing {self.preprocessing!r}; expected one of '
                       f'{PREPROCESSING}.')
    if self.kernel_init not in layers.KERNEL_INITS:
      raise ValueError(f'Unknown kernel_init {self.kernel_init!r}; expected one of '
                       f'{sorted(layers.KERNEL_INITS)}.')
    if self.backbone != 'vgg16' and (self.batch_norm or self.width != 1.0
                                     or self.kernel_init != 'glorot_uniform'):
      raise ValueError('model_kwargs batch_norm, width and kernel_init apply to the vgg16 '
                       f'backbone only, not {self.backbone}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, part: str = 'all') -> jax.Array:
    """Logits of images (`part='all'`), backbone features of images (`'features'`) or
    logits of such features (`'head'`); the parameters are the same in every case."""
    if part not in PARTS:
      raise ValueError(f'Unknown part {part!r}; expected one of {PARTS}.')
    if part != 'head':
      size = self.image_size
      # Bilinear with half-pixel centres, as Keras' Resizing layer (upsampling,
      # so jax's antialiasing does not apply).
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method='bilinear')
      if self.input_adapter == 'conv1x1':
        x = layers.Conv(3, (1, 1), dtype=self.dtype, name='input_adapter')(x)
      elif self.input_adapter == 'repeat' and x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
      x = imagenet_preprocess(x, self.preprocessing)
      vgg_options = ({'batch_norm': self.batch_norm, 'kernel_init': self.kernel_init,
                      'width': self.width} if self.backbone == 'vgg16' else {})
      x = make_backbone(self.backbone, self.trainable_pattern, 'backbone', self.dtype,
                        **vgg_options)(x, train)
      if part == 'features':
        return x
    x = layers.Dense(self.hidden, kernel_init=layers.KERNEL_INITS[self.kernel_init],
                     dtype=self.dtype, name='head_hidden')(layers.flatten(x))
    x = layers.ReLU(name='head_hidden_relu')(x)
    x = layers.Dropout(self.dropout, deterministic=not train)(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name='head_logits')(x)
