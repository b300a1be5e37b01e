"""Reads Keras' legacy HDF5 weight files with h5py alone: no TensorFlow, no Keras.

Keras application weights (and `save_weights` in the legacy format) keep a
root attribute `layer_names` and, per layer, a group whose `weight_names`
attribute lists its arrays in the layer's own weight order. The spelling of
weight names differs between files (VGG16 notop: `block1_conv1_W_1:0`;
MobileNetV2: `Conv1/kernel:0`; Keras 3: `Conv1/kernel`), so arrays are read
by layer name and position, never by weight-name spelling.
"""
import hashlib
import os

import numpy as np

from cnnjax.errors import UserError, unreadable_message


class WeightsFileError(UserError, ValueError):
  """A weights file is missing, corrupt, or does not fit the model."""


def _decode(names) -> list[str]:
  return [n.decode('utf8') if isinstance(n, bytes) else str(n) for n in names]


def _weights_group(f, path: str):
  """The group holding `layer_names`: the root, or `model_weights` of a whole saved model."""
  if 'layer_names' in f.attrs:
    return f
  if 'model_weights' in f and 'layer_names' in f['model_weights'].attrs:
    return f['model_weights']
  raise WeightsFileError(f'{path} is an HDF5 file but not a Keras weights file (no '
                         "'layer_names' attribute). Use the Keras application .h5 file.")


def read_layers(path: str) -> dict[str, list[np.ndarray]]:
  """{Keras layer name: its arrays in weight order} for every layer of the file."""
  import h5py  # Only reading .h5 needs it; converted checkpoints do not.
  if os.path.isdir(path):
    raise WeightsFileError(f'{path} is a directory, not a Keras .h5 weights file: pass the file '
                           '(or a directory made by python -m cnnjax.pretrained convert).')
  try:
    f = h5py.File(path, 'r')
  except FileNotFoundError as e:
    raise WeightsFileError(f'Weights file {path} does not exist.') from e
  except PermissionError as e:
    raise WeightsFileError(unreadable_message(path) + ', or pass a copy that is.') from e
  except OSError as e:
    if not h5py.is_hdf5(path):  # Another kind of file: deleting it is no advice.
      raise WeightsFileError(f'{path} is not an HDF5 file (no HDF5 signature at its start): '
                             'pass the Keras application .h5 weights file (if this was meant to '
                             'be it, its download failed: download it again).') from e
    raise WeightsFileError(f'{path} is not a readable HDF5 file ({e}): it is truncated or '
                           'corrupt. Delete it and download it again.') from e
  with f:
    group = _weights_group(f, path)
    layers = {}
    try:
      for name in _decode(group.attrs['layer_names']):
        layer = group[name]
        layers[name] = [np.asarray(layer[w]) for w in _decode(layer.attrs.get('weight_names', []))]
    except (KeyError, OSError, RuntimeError) as e:
      raise WeightsFileError(f'{path} cannot be read completely ({type(e).__name__}: {e}): it '
                             'is truncated or corrupt. Delete it and download it again.') from e
  return layers


def md5sum(path: str) -> str:
  """The file's MD5, the checksum Keras publishes for its application weights."""
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()
