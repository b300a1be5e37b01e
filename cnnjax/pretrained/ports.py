"""Explicit tables from Keras application layers to Flax variables, and the port itself.

Each table maps a Keras layer name to the Flax variables its arrays become,
in Keras' weight order: Conv2D [kernel, bias], DepthwiseConv2D
[depthwise_kernel], BatchNormalization [gamma, beta, moving_mean,
moving_variance]. Kernels are HWIO in both frameworks; a Keras depthwise
kernel (kh, kw, C, 1) becomes (kh, kw, 1, C) for a Flax conv with
feature_group_count=C. BatchNorm moving statistics go to `batch_stats`.

`port` checks every array against the initialised model and reports all
missing, unexpected and mis-shaped arrays at once: a wrong file is an error
that says what is wrong, never a silently half-loaded model.
"""
from typing import Any, Callable, NamedTuple

import numpy as np
from flax import traverse_util

from cnnjax.models import mobilenet_v2
from cnnjax.models import vgg
from cnnjax.pretrained.h5 import WeightsFileError


class Target(NamedTuple):
  """Where one Keras array goes: a collection and a path inside the backbone."""
  collection: str                 # 'params' or 'batch_stats'.
  path: tuple[str, ...]
  transform: Callable[[np.ndarray], np.ndarray] | None = None


def depthwise_to_flax(kernel: np.ndarray) -> np.ndarray:
  """Keras depthwise (kh, kw, C, 1) -> Flax grouped conv (kh, kw, 1, C)."""
  return np.transpose(kernel, (0, 1, 3, 2))


def _conv(name: str, bias: bool) -> list[Target]:
  return [Target('params', (name, 'kernel'))] + ([Target('params', (name, 'bias'))] if bias else [])


def _batchnorm(name: str) -> list[Target]:
  return [Target('params', (name, 'scale')), Target('params', (name, 'bias')),
          Target('batch_stats', (name, 'mean')), Target('batch_stats', (name, 'var'))]


def vgg16_table() -> dict[str, list[Target]]:
  """`block{b}_conv{c}` -> kernel, bias: 13 convolutions."""
  return {name: _conv(name, bias=True) for name in vgg.conv_names()}


def mobilenet_v2_table() -> dict[str, list[Target]]:
  """Stem, 17 inverted residual blocks and the top conv, with their BatchNorms."""
  table = {'Conv1': _conv('Conv1', bias=False), 'bn_Conv1': _batchnorm('bn_Conv1')}
  for block_id in range(len(mobilenet_v2.BLOCKS)):
    prefix = mobilenet_v2.block_prefix(block_id)
    if block_id:
      table[prefix + 'expand'] = _conv(prefix + 'expand', bias=False)
      table[prefix + 'expand_BN'] = _batchnorm(prefix + 'expand_BN')
    table[prefix + 'depthwise'] = [
        Target('params', (prefix + 'depthwise', 'kernel'), depthwise_to_flax)]
    table[prefix + 'depthwise_BN'] = _batchnorm(prefix + 'depthwise_BN')
    table[prefix + 'project'] = _conv(prefix + 'project', bias=False)
    table[prefix + 'project_BN'] = _batchnorm(prefix + 'project_BN')
  table['Conv_1'] = _conv('Conv_1', bias=False)
  table['Conv_1_bn'] = _batchnorm('Conv_1_bn')
  return table


PORT_TABLES: dict[str, Callable[[], dict[str, list[Target]]]] = {
    'vgg16': vgg16_table,
    'mobilenet_v2': mobilenet_v2_table,
}


def detect_backbone(layers: dict[str, list[np.ndarray]], path: str) -> str:
  """The backbone whose table's layers the file holds."""
  for backbone, table in PORT_TABLES.items():
    if set(table()) <= set(layers):
      return backbone
  raise WeightsFileError(f'{path} holds neither VGG16 nor MobileNetV2 weights (its first '
                         f'layers: {", ".join(list(layers)[:6])}).')


def _listing(items: list[str], limit: int = 8) -> str:
  shown = ', '.join(items[:limit])
  return f'{shown}, … ({len(items)} in all)' if len(items) > limit else shown


def port(layers: dict[str, list[np.ndarray]], backbone: str, expected: dict[str, Any],
         source: str) -> dict[str, Any]:
  """Keras `layers` -> {'params': ..., 'batch_stats': ...} of the Flax backbone.

  `expected` holds the initialised backbone's variables (arrays or shape
  structs); every one of them must be filled, with its exact shape.
  """
  table = PORT_TABLES[backbone]()
  wanted = {(collection,) + path: leaf.shape for collection, tree in expected.items()
            for path, leaf in traverse_util.flatten_dict(tree).items()}
  targets = {(t.collection,) + t.path for ts in table.values() for t in ts}
  if targets != set(wanted):  # A bug in the table, whatever the file.
    raise AssertionError(f'The {backbone} port table and model disagree: '
                         f'{sorted(set(wanted) ^ targets)[:8]}')
  missing = [layer for layer in table if layer not in layers]
  unexpected = sorted(n for n, arrays in layers.items() if arrays and n not in table)
  mis_shaped, ported = [], {}
  for layer, layer_targets in table.items():
    arrays = layers.get(layer)
    if arrays is None:
      continue
    if len(arrays) != len(layer_targets):
      mis_shaped.append(f'{layer} has {len(arrays)} arrays, expected {len(layer_targets)}')
      continue
    for array, target in zip(arrays, layer_targets):
      value = target.transform(array) if target.transform else array
      key = (target.collection,) + target.path
      if tuple(value.shape) != tuple(wanted[key]):
        mis_shaped.append(f'{layer} -> {"/".join(key)}: file {tuple(value.shape)}, '
                          f'model {tuple(wanted[key])}')
      ported[key] = np.asarray(value, np.float32)
  if missing or unexpected or mis_shaped:
    problems = [f'{len(missing)} missing layer(s): {_listing(missing)}' if missing else '',
                f'{len(unexpected)} unexpected layer(s): {_listing(unexpected)}'
                if unexpected else '',
                f'{len(mis_shaped)} mis-shaped: {_listing(mis_shaped, 4)}' if mis_shaped else '']
    raise WeightsFileError(
        f'{source} does not fit the {backbone} backbone: '
        + '; '.join(p for p in problems if p)
        + '. Is it the Keras application file for this model (include_top=False)?')
  return traverse_util.unflatten_dict(ported)
