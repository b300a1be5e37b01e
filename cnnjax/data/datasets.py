"""Loads a dataset's train/val/test splits into host memory as uint8 arrays.

Both studies' datasets fit in memory many times over, so each split is read
once (from TFDS, or from local files with no TensorFlow) and batched from
arrays afterwards: no per-step input cost, and the data order becomes a pure
function of (seed, epoch), which exact resume relies on.
"""
import dataclasses
import hashlib
import logging

import numpy as np

from cnnjax.data import local_files
from cnnjax.data import splits
from cnnjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]


DATASETS = {
    'fashion_mnist': DatasetSpec((28, 28, 1), (
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
        'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')),
    'mnist': DatasetSpec((28, 28, 1), tuple(str(d) for d in range(10))),
    'cifar10': DatasetSpec((32, 32, 3), (
        'airplane', 'automobile', 'bird', 'cat', 'deer',
        'dog', 'frog', 'horse', 'ship', 'truck')),
}


class DatasetUnavailableError(UserError, RuntimeError):
  """The dataset can be neither loaded from TFDS nor read from local files."""


class EmptySplitError(UserError, ValueError):
  """A split the run needs selects no example."""


class BadLabelsError(UserError, ValueError):
  """Labels outside the dataset's classes: a corrupt label file, or another dataset's."""


class UnknownDatasetError(UserError, ValueError):
  """`config.dataset` names no dataset cnnjax knows."""


def dataset_spec(name: str) -> DatasetSpec:
  """The image shape and class names of dataset `name`."""
  if name not in DATASETS:
    raise UnknownDatasetError(f'Unknown dataset {name!r} (config.dataset); '
                              f'known: {sorted(DATASETS)}.')
  return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory: uint8 NHWC images, int32 labels."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def fingerprint(self) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
    digest.update(np.ascontiguousarray(self.images).tobytes())
    return f'{len(self)}:{digest.hexdigest()[:16]}'


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  val: Split | None
  test: Split
  class_names: tuple[str, ...]
  source: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train.images.shape[1:])

  def fingerprints(self) -> dict[str, str]:
    """Per split, its size and a hash of its examples in order: what a resumed run must see."""
    return {name: split.fingerprint() for name, split in
            (('train', self.train), ('val', self.val), ('test', self.test)) if split is not None}


def _offline_help(name: str) -> str:
  return (f'To train from files you have instead (no network, no TensorFlow): '
          f'--config.local_data_dir=DIR, where DIR holds the four IDX .gz files '
          f'(MNIST/Fashion-MNIST) or train/<class>/*.png|jpg and test/<class>/* '
          f'(or a .tar.gz of that tree), e.g. --config.local_data_dir=data/'
          f'{"cifar10_jpg.tar.gz" if name == "cifar10" else name}.')


def hide_accelerators_from_tensorflow(tf) -> None:
  """Keeps TensorFlow off the GPUs and TPUs: TFDS only reads files with it, and TensorFlow
  would otherwise reserve accelerator memory that JAX needs."""
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError as e:  # TensorFlow had already started on its devices.
      logging.warning('Could not hide the %ss from TensorFlow (%s).', kind, e)


def _import_tfds(name: str):
  """tensorflow_datasets, with TensorFlow imported first and kept off the accelerators."""
  try:
    import tensorflow as tf  # Only loading through TFDS needs TensorFlow.
  except ImportError as e:
    raise DatasetUnavailableError(
        f'Loading {name!r} through TFDS needs TensorFlow, which cnnjax does not install by '
        f'default ({e}). Add it with: pip install -e ".[tfds]". ' + _offline_help(name)) from e
  hide_accelerators_from_tensorflow(tf)
  import tensorflow_datasets as tfds
  return tfds


def _load_tfds(name: str, split_spec: str, data_dir: str) -> tuple[Split, tuple[str, ...]]:
  tfds = _import_tfds(name)
  try:
    ds, info = tfds.load(name, split=split_spec, as_supervised=True, with_info=True,
                         data_dir=data_dir or None, download=True)
    # Batches of a fixed size: `batch_size=-1` is not supported by TFDS' mocks.
    images, labels = zip(*tfds.as_numpy(ds.batch(10_000)))
  except Exception as e:  # Download and preparation fail in many ways offline.
    raise DatasetUnavailableError(
        f'Could not load split {split_spec!r} of TFDS dataset {name!r}: '
        f'{type(e).__name__}: {e}. ' + _offline_help(name)) from e
  split = Split(np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32))
  return split, tuple(info.features['label'].names)


def _load_local(root: str, split_spec: str, spec: DatasetSpec,
                cache: dict[str, tuple[np.ndarray, np.ndarray]]) -> Split:
  images, labels = [], []
  for part in splits.parse_split(split_spec):
    if part.name not in cache:
      cache[part.name] = local_files.read_local_split(
          root, part.name, spec.class_names, spec.image_shape)
    whole_images, whole_labels = cache[part.name]
    index = np.asarray(splits.slice_indices(part, len(whole_labels)), np.int64)
    images.append(whole_images[index])
    labels.append(whole_labels[index])
  return Split(np.concatenate(images), np.concatenate(labels))


def check_split(split: Split, split_spec: str, num_classes: int, source: str) -> Split:
  """`split`, if it has examples and every label names one of the `num_classes` classes."""
  if not len(split):
    raise EmptySplitError(f'Split {split_spec!r} of {source} selects no example; choose a '
                          'non-empty slice.')
  bad = (split.labels < 0) | (split.labels >= num_classes)
  if bad.any():
    values = sorted({int(v) for v in split.labels[bad][:100]})[:5]
    raise BadLabelsError(
        f'{int(bad.sum())} label(s) of split {split_spec!r} of {source} are not classes 0..'
        f'{num_classes - 1} (e.g. {values}): the label file is corrupt or belongs to another '
        'dataset. Nothing was trained on them.')
  return split


def load_split(name: str, split_spec: str, local_data_dir: str = '',
               tfds_data_dir: str = '') -> Split:
  """One split (TFDS syntax, e.g. 'test' or 'train[80%:]') from local files or TFDS."""
  spec = dataset_spec(name)
  if local_data_dir:
    split, source = _load_local(local_data_dir, split_spec, spec, {}), local_data_dir
  else:
    split, source = _load_tfds(name, split_spec, tfds_data_dir)[0], f'TFDS {name}'
  return check_split(split, split_spec, len(spec.class_names), source)


def load_dataset(name: str, train_split: str, val_split: str, test_split: str,
                 local_data_dir: str = '', tfds_data_dir: str = '') -> Dataset:
  """Loads the three splits (`val_split=''` for none) from local files or TFDS."""
  spec = dataset_spec(name)
  split_specs = (train_split, val_split, test_split)
  loaded: list[Split | None] = []
  if local_data_dir:
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split_spec in split_specs:
      loaded.append(_load_local(local_data_dir, split_spec, spec, cache) if split_spec else None)
    class_names, source = spec.class_names, f'local:{local_data_dir}'
  else:
    class_names = spec.class_names
    for split_spec in split_specs:
      if not split_spec:
        loaded.append(None)
        continue
      split, class_names = _load_tfds(name, split_spec, tfds_data_dir)
      loaded.append(split)
    source = 'tfds'
  for split, split_spec in zip(loaded, split_specs):
    if split is not None:
      check_split(split, split_spec, len(class_names), source)
  train, val, test = loaded
  logging.info('Loaded %s from %s: train %d, val %s, test %d examples.', name, source,
               len(train), len(val) if val is not None else 'none', len(test))
  return Dataset(name, train, val, test, tuple(class_names), source)
