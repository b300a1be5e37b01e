"""Model registry: configs name a model (`config.model`), never import one.

`build_model` checks `config.model_kwargs` against the model's fields, so a
misspelt option fails at start-up with the list of valid ones instead of
deep inside Flax.
"""
import dataclasses
import functools
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
  if 'trainable_pattern' in fields:
    kwargs['trainable_pattern'] = trainable_pattern
  dtype = jnp.bfloat16 if half_precision else jnp.float32
  return MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
