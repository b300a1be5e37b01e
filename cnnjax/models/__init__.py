"""Model registry: configs name a model (`config.model`), never import one.

`build_model` checks `config.model_kwargs` against the model's fields, so a
misspelt option fails at start-up with the list of valid ones instead of
deep inside Flax.
"""
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models import fast_cnn
from cnnjax.models import mlp
from cnnjax.models import resnet
from cnnjax.models import small_cnns
from cnnjax.models import transfer

MODELS: dict[str, Callable[..., nn.Module]] = {
    'mlp': mlp.MLP,
    'cnn_simple': small_cnns.FashionCNNSimple,
    'cnn_deep': small_cnns.FashionCNNDeep,
    'cifar_cnn': small_cnns.CifarCNN,
    'resnet': resnet.ResNet,
    'cnn_fast': fast_cnn.FastCNN,
    'vgg16_classifier': functools.partial(transfer.TransferClassifier, backbone='vgg16'),
    'mobilenet_v2_classifier': functools.partial(
        transfer.TransferClassifier, backbone='mobilenet_v2', input_adapter='none', dropout=0.3),
}


def _module_class(name: str) -> type[nn.Module]:
  factory = MODELS[name]
  return factory.func if isinstance(factory, functools.partial) else factory


def model_fields(name: str) -> set[str]:
  """The options a registered model accepts (its dataclass fields)."""
  return {f.name for f in dataclasses.fields(_module_class(name))
          if f.init and f.name not in ('parent', 'name')}


# What a model option must be, by its name: the models name alike options alike. Their
# modules would take any value, and fail deep inside Flax (a division by zero for a size
# of 0) or, for a negative dropout rate, train on without a word.
_SIZES = frozenset({'image_size', 'hidden', 'stem_features', 'blocks_per_stage'})
_SIZE_LISTS = frozenset({'hidden_sizes', 'block_features'})
_RATES = frozenset({'dropout', 'block_dropout', 'head_dropout'})
_SCALES = frozenset({'width', 'logit_scale'})
_SWITCHES = frozenset({'batch_norm', 'batchnorm_scale'})


def _is_size(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sizes(value: Any) -> list[Any]:
  """The sizes in a (nested) tuple or list of them: ((32, 32), (64, 64), (128,))."""
  if isinstance(value, (tuple, list)):
    return [size for item in value for size in _sizes(item)]
  return [value]


def _option_problem(option: str, value: Any) -> str | None:
  """What is wrong with model option `option`'s value, None where nothing (or where the
  model checks it itself)."""
  if option in _SIZES and not _is_size(value):
    return 'a positive integer'
  if option in _SIZE_LISTS and not (isinstance(value, (tuple, list))
                                     and all(map(_is_size, _sizes(value)))):
    return 'a tuple of positive integers'
  if option in _RATES and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and 0 <= value < 1):
    return 'a rate in [0, 1)'
  if option in _SCALES and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                and 0 < value < math.inf):
    return 'a positive finite number'
  if option in _SWITCHES and not isinstance(value, bool):
    return 'True or False'
  return None


def build_model(name: str, num_classes: int, trainable_pattern: str = '.*',
                kwargs: Mapping[str, Any] | None = None, half_precision: bool = False
                ) -> nn.Module:
  """Instantiates registered model `name` with `num_classes` outputs.

  `half_precision`: compute in bfloat16 (GPU/TPU), parameters kept in float32.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r} (config.model). '
                     f'Registered models: {", ".join(sorted(MODELS))}.')
  kwargs = dict(kwargs or {})
  fields = model_fields(name)
  unknown = sorted(set(kwargs) - (fields - {'dtype'}))
  if unknown:
    raise ValueError(f'Model {name!r} has no option(s) {unknown} (config.model_kwargs). Valid '
                     f'options: {sorted(fields - {"num_classes", "trainable_pattern", "dtype"})}.')
  for option, value in sorted(kwargs.items()):
    if problem := _option_problem(option, value):
      raise ValueError(f'config.model_kwargs.{option} must be {problem}, got {value!r}.')
  if 'trainable_pattern' in fields:
    kwargs['trainable_pattern'] = trainable_pattern
  dtype = jnp.bfloat16 if half_precision else jnp.float32
  return MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
