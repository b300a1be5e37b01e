"""Finds, verifies, ports and loads ImageNet weights for the transfer backbones.

Sources, in the order they are tried:
- `config.pretrained_path`: a Keras application .h5 file (read with h5py,
  ported through the tables in `ports`), or a directory written by
  `python -m cnnjax.pretrained convert` (an orbax checkpoint of the ported
  variables, for machines without h5py or network);
- the cache (`$CNNJAX_CACHE`, default `~/.cache/cnnjax`), filled once from
  Keras' URLs when online (see `files`).

`config.pretrained_load` (a regex over 'backbone/block1_conv1/kernel'-style
paths, params and BatchNorm statistics alike) says which variables come from
the file; everything else keeps its initialisation.
"""
import json
import logging
import os
import re
import shutil
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from cnnjax.models import transfer
from cnnjax.pretrained import files
from cnnjax.pretrained import h5
from cnnjax.pretrained import ports
from cnnjax.pretrained.h5 import WeightsFileError
from cnnjax.runs import failed_reads

SOURCE_FILE = 'source.json'      # In a converted directory: what it was converted from.
VARIABLES_DIR = 'variables'      # In a converted directory: the orbax checkpoint.
BACKBONE_SCOPE = 'backbone'      # Where TransferClassifier keeps its backbone.
COLLECTIONS = ('params', 'batch_stats')


def expected_variables(backbone: str) -> dict[str, Any]:
  """Shapes of a bare backbone's variables (the same at every input size)."""
  module = transfer.make_backbone(backbone)
  variables = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3), jnp.float32)))
  return {c: variables.get(c, {}) for c in COLLECTIONS}


def _flat(tree: dict[str, Any]) -> dict[tuple[str, ...], Any]:
  return {(c,) + path: leaf for c in COLLECTIONS
          for path, leaf in traverse_util.flatten_dict(tree.get(c, {})).items()}


def check_variables(variables: dict[str, Any], expected: dict[str, Any], source: str) -> None:
  """Raises WeightsFileError listing every array missing, unexpected or mis-shaped."""
  have, want = _flat(variables), _flat(expected)
  problems = []
  for label, keys in (('missing', sorted(set(want) - set(have))),
                      ('unexpected', sorted(set(have) - set(want)))):
    if keys:
      problems.append(f'{len(keys)} {label}: ' + ', '.join('/'.join(k) for k in keys[:8]))
  mis_shaped = [f'{"/".join(k)}: file {tuple(have[k].shape)}, model {tuple(want[k].shape)}'
                for k in sorted(set(have) & set(want)) if have[k].shape != want[k].shape]
  if mis_shaped:
    problems.append(f'{len(mis_shaped)} mis-shaped: ' + '; '.join(mis_shaped[:4]))
  if problems:
    raise WeightsFileError(f'{source} does not fit the model: ' + '; '.join(problems) + '.')


def port_h5(path: str, backbone: str | None = None) -> tuple[dict[str, Any], str]:
  """(backbone variables, backbone name) ported from a Keras .h5 file."""
  layers = h5.read_layers(path)
  backbone = backbone or ports.detect_backbone(layers, path)
  return ports.port(layers, backbone, expected_variables(backbone), path), backbone


SOURCE_KEYS = ('backbone', 'file', 'md5')  # What `source.json` says of the .h5 file.


def save_converted(variables: dict[str, Any], directory: str, source: dict[str, Any]) -> None:
  """Writes ported variables as an orbax checkpoint plus `source.json`, into a sibling
  `.partial` directory first: `directory` appears whole or not at all, whatever stops the
  writing."""
  import orbax.checkpoint as ocp
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise FileExistsError(f'{directory} is a file; choose a new directory to write to.')
  if os.path.exists(directory) and os.listdir(directory):
    raise FileExistsError(f'{directory} exists and is not empty; choose a new directory.')
  partial = os.path.abspath(directory).rstrip(os.sep) + '.partial'
  shutil.rmtree(partial, ignore_errors=True)  # Left by a writer that was killed.
  os.makedirs(partial)
  try:
    checkpointer = ocp.StandardCheckpointer()
    try:
      checkpointer.save(os.path.join(partial, VARIABLES_DIR), variables)
    finally:
      checkpointer.wait_until_finished()
    with open(os.path.join(partial, SOURCE_FILE), 'w', encoding='utf-8') as f:
      json.dump(source, f, indent=2, sort_keys=True)
    if os.path.isdir(directory):
      os.rmdir(directory)  # Empty (checked above); a rename cannot replace it on every system.
    os.replace(partial, directory)
  finally:
    shutil.rmtree(partial, ignore_errors=True)


def read_converted(directory: str, backbone: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(backbone variables, source description) from a converted directory."""
  import orbax.checkpoint as ocp
  failed_reads.drop_abandoned_reads()
  try:
    with open(os.path.join(directory, SOURCE_FILE), encoding='utf-8') as f:
      source = json.load(f)
    missing = [key for key in SOURCE_KEYS if key not in source]
    if missing:
      raise KeyError(f'{SOURCE_FILE} lacks {", ".join(missing)}')
    variables = ocp.StandardCheckpointer().restore(
        os.path.join(os.path.abspath(directory), VARIABLES_DIR))
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds.
    raise WeightsFileError(f'{directory} is not a readable converted weights directory '
                           f'({failed_reads.reason(e, 200)}). Convert the .h5 file again '
                           'with python -m cnnjax.pretrained convert IN.h5 OUT_DIR.') from e
  if source.get('backbone') != backbone:
    raise WeightsFileError(f'{directory} holds {source.get("backbone")} weights; this model '
                           f'has a {backbone} backbone.')
  variables = {c: variables.get(c, {}) for c in COLLECTIONS}
  check_variables(variables, expected_variables(backbone), directory)
  return variables, source


def read_weights(path: str, backbone: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Backbone variables and {'pretrained_file', 'pretrained_md5'} from an .h5 or converted dir."""
  if os.path.isdir(path):
    variables, source = read_converted(path, backbone)
    return variables, {'pretrained_file': source['file'], 'pretrained_md5': source['md5']}
  md5 = files.check_md5(path, files.published_md5(os.path.basename(path)))
  variables, _ = port_h5(path, backbone)
  return variables, {'pretrained_file': os.path.basename(path), 'pretrained_md5': md5}


def weights_path(pretrained_path: str, backbone: str, image_size: int) -> str:
  """`pretrained_path` (config.pretrained_path), else the cached Keras file for `backbone` at
  `image_size` (downloaded if need be)."""
  if pretrained_path:
    return pretrained_path
  return files.ensure_cached(files.imagenet_weights_file(backbone, image_size),
                             lambda path: port_h5(path, backbone))


def load_into(variables: dict[str, Any], load_pattern: str, backbone: str, path: str
              ) -> tuple[dict[str, Any], dict[str, Any]]:
  """`variables` with the arrays `load_pattern` (config.pretrained_load) selects taken from
  the weights at `path` (see `weights_path`)."""
  loaded, info = read_weights(path, backbone)
  from_file = {(k[0], BACKBONE_SCOPE) + k[1:]: v for k, v in _flat(loaded).items()}
  flat = _flat(variables)
  selected = [k for k in flat if re.search(load_pattern, '/'.join(k[1:]))]
  if not selected:
    raise WeightsFileError(f'config.pretrained_load={load_pattern!r} selects no '
                           "variable of this model; the backbone's start with 'backbone/'.")
  outside = [k for k in selected if k not in from_file]
  if outside:
    raise WeightsFileError(
        f'config.pretrained_load={load_pattern!r} selects variables the weights file '
        f'does not hold: {", ".join("/".join(k[1:]) for k in outside[:5])}.')
  for key in selected:
    flat[key] = jnp.asarray(from_file[key], flat[key].dtype)
  logging.info('Loaded %d arrays from %s (md5 %s).', len(selected), path, info['pretrained_md5'])
  merged = {c: traverse_util.unflatten_dict({k[1:]: v for k, v in flat.items() if k[0] == c})
            for c in COLLECTIONS if c in variables}
  return merged, {'pretrained': True, **info, 'pretrained_arrays': len(selected)}
