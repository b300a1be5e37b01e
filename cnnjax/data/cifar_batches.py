"""CIFAR-10 as its authors distribute it, read without TensorFlow.

Two versions, each as its archive or unpacked (the batches in the folder given, or
in the one folder inside it):

- Python: `cifar-10-python.tar.gz`, `cifar-10-batches-py/` with `data_batch_1` ...
  `data_batch_5`, `test_batch` and `batches.meta`: the files Keras'
  `cifar10.load_data()` downloads (and keeps in `~/.keras/datasets/`);
- binary: `cifar-10-binary.tar.gz`, `cifar-10-batches-bin/` with `data_batch_1.bin`
  ... `test_batch.bin` and `batches.meta.txt`: the files TFDS downloads.

The training split is the five data batches in order, as Keras concatenates them,
so `train[80%:]` holds the examples Keras' `validation_split=0.2` holds out. The
Python batches are pickles: they are read with an unpickler that builds only the
numpy arrays a batch holds (besides plain dicts, lists and bytes), so a file that
is not what it claims cannot run code.
"""
import functools
import io
import itertools
import os
import pickle

import numpy as np

from cnnjax.data import image_tree
from cnnjax.data import splits
from cnnjax.data.image_tree import LocalDataError

SPLIT_BATCHES = {'train': tuple(f'data_batch_{i}' for i in range(1, 6)), 'test': ('test_batch',)}
_SIDE, _CHANNELS = 32, 3
_IMAGE_BYTES = _SIDE * _SIDE * _CHANNELS
_META = {'': 'batches.meta', '.bin': 'batches.meta.txt'}  # Class names, per version.
# What a Python batch's pickle may build: numpy arrays (as numpy 1 and 2 pickle them).
_ARRAY_GLOBALS = {(module, name) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                  for name in ('_reconstruct', 'scalar')} | {
                      ('numpy', 'ndarray'), ('numpy', 'dtype'),
                      ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer')}


def _is_batch_name(path: str) -> bool:
  """Whether `path` is one of the batches' files (a batch or the class names), of either
  version: an archive packed in any order starts with one among its first three files."""
  name = os.path.basename(path)
  return (name.removesuffix('.bin') in (*SPLIT_BATCHES['train'], *SPLIT_BATCHES['test'])
          or name in _META.values())


def _batch_folder(root: str) -> str | None:
  """The folder of a directory's batches: `root`, or the one folder inside it that has them."""
  inside = sorted(os.path.join(root, name) for name in image_tree.folder_names(root))
  for folder in [root] + inside:
    if os.path.isdir(folder) and any(map(_is_batch_name, image_tree.folder_names(folder))):
      return folder
  return None


def is_cifar_batches(root: str) -> bool:
  """Whether `root` holds CIFAR-10 batches (a folder of them, or an archive that starts with
  them) rather than an image tree."""
  if os.path.isdir(root):
    return _batch_folder(root) is not None
  try:  # An archive's first files say which it is; reading them costs little. A Mac's zip
    # puts its .DS_Store and __MACOSX/ copies between them: those are passed over.
    return any(_is_batch_name(name) for name, _ in
               itertools.islice(image_tree.visible_members(root), 3))
  except LocalDataError:  # Not an archive, or a damaged one: the tree reader says which.
    return False


@functools.lru_cache(maxsize=1)
def _batch_files(root: str, mtime_ns: int) -> dict[str, bytes]:
  """The files of the batches at `root` by name, read once per version of `root`."""
  del mtime_ns  # The cache key: rewritten files are read again.
  if os.path.isdir(root):
    folder = _batch_folder(root)
    files = {}
    for name in image_tree.folder_names(folder):
      try:
        with open(os.path.join(folder, name), 'rb') as f:
          files[name] = f.read()
      except PermissionError as e:
        raise image_tree.unreadable(e) from e
    return files
  return {os.path.basename(name): payload for name, payload in image_tree.archive_members(root)}


class _ArraysOnly(pickle.Unpickler):
  """An unpickler that refuses to build anything but numpy arrays and plain containers."""

  def find_class(self, module: str, name: str):
    if (module, name) not in _ARRAY_GLOBALS:
      raise pickle.UnpicklingError(f'it would build {module}.{name}, which no CIFAR batch holds')
    return super().find_class(module.replace('numpy.core.', 'numpy._core.'), name)


def _python_batch(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
  batch = _ArraysOnly(io.BytesIO(payload), encoding='bytes').load()
  if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
    raise ValueError('it is not a dict with data and labels')
  data = np.asarray(batch[b'data'])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
    raise ValueError(f'its data is {data.dtype} {data.shape}, not uint8 (N, {_IMAGE_BYTES})')
  return data, np.asarray(batch[b'labels'], np.int64)


def _binary_batch(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
  if len(payload) % (1 + _IMAGE_BYTES):
    raise ValueError(f'its {len(payload)} bytes are not whole records of 1 + {_IMAGE_BYTES}')
  records = np.frombuffer(payload, np.uint8).reshape(-1, 1 + _IMAGE_BYTES)
  return records[:, 1:], records[:, 0].astype(np.int64)


def _batches(root: str) -> tuple[dict[str, bytes], str]:
  """The files at `root` by name, and their version: '' Python, '.bin' binary."""
  files = _batch_files(root, os.stat(root).st_mtime_ns)
  versions = [suffix for suffix in ('', '.bin') if f'data_batch_1{suffix}' in files]
  if len(versions) != 1:
    raise LocalDataError(f'{root} holds ' + ('both the Python and the binary' if versions else
                                             'no data_batch_1 of either') +
                         ' version of the CIFAR-10 batches: point config.local_data_dir at one.')
  return files, versions[0]


def class_names(root: str) -> tuple[str, ...] | None:
  """The class names the batches' meta file lists (None without one)."""
  files, suffix = _batches(root)
  meta = files.get(_META[suffix])
  if meta is None:
    return None
  try:
    if suffix:
      return tuple(line.strip() for line in meta.decode().splitlines() if line.strip())
    names = _ArraysOnly(io.BytesIO(meta), encoding='bytes').load()[b'label_names']
    return tuple(name.decode() for name in names)
  except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError, UnicodeError) as e:
    raise LocalDataError(f'{_META[suffix]} in {root} is unreadable ({type(e).__name__}: {e}): '
                         'copy or download the dataset again.') from e


def read_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Split `split` ('train' or 'test') as uint8 (N, 32, 32, 3) images and int32 labels."""
  if split not in SPLIT_BATCHES:
    raise LocalDataError(splits.unknown_split_message('The CIFAR-10 batches', split,
                                                      SPLIT_BATCHES))
  files, suffix = _batches(root)
  images, labels = [], []
  for batch in SPLIT_BATCHES[split]:
    name = batch + suffix
    if name not in files:
      raise LocalDataError(f'{root} has no {name}: the {split} split needs '
                           f'{", ".join(b + suffix for b in SPLIT_BATCHES[split])}.')
    try:
      data, batch_labels = (_binary_batch if suffix else _python_batch)(files[name])
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError) as e:
      raise LocalDataError(f'{name} in {root} is not a CIFAR-10 batch ({e}): copy or '
                           'download the dataset again.') from e
    if len(data) != len(batch_labels):
      raise LocalDataError(f'{name} in {root} holds {len(data)} images but '
                           f'{len(batch_labels)} labels.')
    images.append(data.reshape(-1, _CHANNELS, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    labels.append(batch_labels)
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)
