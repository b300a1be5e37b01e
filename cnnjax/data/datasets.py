"""What a run trains on: a dataset described (classes, image shape) and its splits loaded.

Sources: the studies' datasets by name (their shapes and class names are
known here, so local IDX or CSV files, CIFAR-10 batches and image folders need
no TensorFlow), any
TFDS image-classification dataset by name (described by its `DatasetInfo`),
and `image_folder`, the user's own tree `train/<class>/*`, `test/<class>/*`
(classes from the folder names).

Each split is held in host memory when it fits (`config.data_in_memory`:
'auto' holds it when the decoded splits take under `MEMORY_FRACTION` of the
machine's memory), else streamed: read and decoded while training. Either
way the examples and their order are the same (see `examples`, `pipeline`).
"""
import dataclasses
import json
import logging
import os
import re
from typing import Any, Sequence

import numpy as np

from cnnjax import host_memory
from cnnjax.data import cifar_batches
from cnnjax.data import csv_files
from cnnjax.data import dataset_files
from cnnjax.data import idx_files
from cnnjax.data import image_tree
from cnnjax.data import splits
from cnnjax.data import tfds_source
from cnnjax.data.examples import Split, StreamedSplit
from cnnjax.errors import ConfigError
from cnnjax.runs import atomic
from cnnjax.errors import UserError

DatasetUnavailableError = tfds_source.DatasetUnavailableError
IMAGE_FOLDER = 'image_folder'
# 'auto' streams when the decoded splits would take more than this share of the memory.
MEMORY_FRACTION = 0.5
IN_MEMORY_CHOICES = ('auto', 'true', 'false')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  # An image folder's listing, made when it is described: loading its splits then does not
  # walk (or unpack) the tree a second time.
  tree: dict[str, list[image_tree.TreeFile]] | None = dataclasses.field(
      default=None, compare=False, repr=False)

  def to_json(self) -> dict[str, Any]:
    return {'image_shape': list(self.image_shape), 'class_names': list(self.class_names)}

  @classmethod
  def from_json(cls, saved: dict[str, Any]) -> 'DatasetSpec':
    """The spec `to_json` wrote; a ValueError for one that cannot be (a file edited by hand),
    which would fail far from here, in the model (a division by zero for no classes)."""
    shape, names = saved['image_shape'], saved['class_names']
    if not (isinstance(shape, list) and len(shape) == 3
            and all(type(size) is int and size > 0 for size in shape)):
      raise ValueError(f'image_shape {shape!r} is not [height, width, channels]')
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(name, str) for name in names)):
      raise ValueError(f'class_names {names!r} is not a list of two or more names')
    return cls(tuple(shape), tuple(names))


DATASETS = {
    'fashion_mnist': DatasetSpec((28, 28, 1), (
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
        'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')),
    'mnist': DatasetSpec((28, 28, 1), tuple(str(d) for d in range(10))),
    'cifar10': DatasetSpec((32, 32, 3), (
        'airplane', 'automobile', 'bird', 'cat', 'deer',
        'dog', 'frog', 'horse', 'ship', 'truck')),
}


class EmptySplitError(UserError, ValueError):
  """A split the run needs selects no example."""


class BadLabelsError(UserError, ValueError):
  """Labels outside the dataset's classes: a corrupt label file, or another dataset's."""


class OtherDatasetError(image_tree.FindingWithWayOut):
  """Files of another dataset than the config's; the way out trains on them."""


class DatasetRecordError(UserError, ValueError):
  """A run's record of its classes and image shape (dataset.json) cannot be read."""


@dataclasses.dataclass(frozen=True)
class DataOptions:
  """The config fields that say what data a run reads and how (see configs/default.py)."""
  dataset: str
  train_split: str = 'train'
  val_split: str = ''
  test_split: str = 'test'
  local_data_dir: str = ''
  tfds_data_dir: str = ''
  image_size: int = 0
  channels: int = 0
  image_key: str = ''
  label_key: str = ''
  data_in_memory: str = 'auto'
  data_workers: int = 0

  @classmethod
  def from_config(cls, config) -> 'DataOptions':
    values = {field.name: config[field.name] for field in dataclasses.fields(cls)}
    return cls(**{**values, 'data_in_memory': str(values['data_in_memory']).lower()})

  @property
  def workers(self) -> int:
    return self.data_workers or os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split | StreamedSplit
  val: Split | StreamedSplit | None
  test: Split | StreamedSplit
  class_names: tuple[str, ...]
  source: str

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train.image_shape)

  @property
  def streamed(self) -> bool:
    return self.train.streamed

  def fingerprints(self) -> dict[str, str]:
    """Per split, what identifies its examples in order: what a resumed run must see."""
    return {name: split.fingerprint() for name, split in
            (('train', self.train), ('val', self.val), ('test', self.test)) if split is not None}


def _sized(shape: tuple[Any, ...], options: DataOptions, source: str) -> tuple[int, int, int]:
  """`shape` (None where images vary) with `config.image_size` / `config.channels` applied."""
  height, width, channels = shape
  if options.image_size:
    height = width = options.image_size
  if options.channels:
    channels = options.channels
  if height is None or width is None:
    raise ConfigError(f'The images of {source} vary in size: choose the size they are resized '
                      'to with --config.image_size=N (e.g. 64).')
  if channels not in (1, 3):
    raise ConfigError(f'{source} has {channels}-channel images; set --config.channels=3 (RGB) '
                      'or 1 (grey).')
  return int(height), int(width), int(channels)


def describe(options: DataOptions) -> DatasetSpec:
  """The classes and (configured) image shape of the dataset `options` name."""
  name = options.dataset
  if name in DATASETS:
    known = DATASETS[name]
    return DatasetSpec(_sized(known.image_shape, options, name), known.class_names)
  if name == IMAGE_FOLDER:
    if not options.local_data_dir:
      raise ConfigError("config.dataset='image_folder' reads your own image tree: pass "
                        '--config.local_data_dir=DIR (DIR/train/<class>/*, DIR/test/<class>/*; '
                        "or Keras' DIR/<class>/*, read as the train split; or a .tar.gz, "
                        '.tar.bz2, .tar.xz, .tar or .zip of them).')
    if not (options.image_size and options.channels):
      raise ConfigError('Image folders are read at a size you choose: set --config.image_size=N '
                        'and --config.channels=3 (RGB) or 1 (grey).')
    root = _existing(options.local_data_dir)
    tree = _listed_tree(root)
    return DatasetSpec(_sized((None, None, None), options, root),
                       image_tree.class_names(tree, root), tree)
  by_letters = {re.sub('[^a-z0-9]', '', known): known for known in (*DATASETS, IMAGE_FOLDER)}
  meant = by_letters.get(re.sub('[^a-z0-9]', '', name.lower()))
  if meant:  # A slip ('fashion-mnist', 'cifar_10', 'FashionMNIST'): said before TF loads.
    raise ConfigError(f'Unknown dataset {name!r} (config.dataset); did you mean {meant!r}?')
  info = tfds_source.builder_info(name, options.tfds_data_dir)
  keys = tfds_source.feature_keys(info, options.image_key, options.label_key)
  return DatasetSpec(_sized(tfds_source.native_shape(info, keys[0]), options, f'TFDS {name}'),
                     tfds_source.class_names(info, keys[1]))


def check_split(split: Split | StreamedSplit, split_spec: str, num_classes: int, source: str
                ) -> Split | StreamedSplit:
  """`split`, if it has examples and every label names one of the `num_classes` classes
  (a streamed split's labels come from its classes' folders or TFDS' ClassLabel)."""
  if not len(split):
    raise EmptySplitError(f'Split {split_spec!r} of {source} selects no example; choose a '
                          'non-empty slice.')
  if split.streamed:
    return split
  bad = (split.labels < 0) | (split.labels >= num_classes)
  if bad.any():
    values = sorted({int(v) for v in split.labels[bad][:100]})[:5]
    from_one = split.labels.min() == 1 and split.labels.max() == num_classes
    raise BadLabelsError(
        f'{int(bad.sum())} label(s) of split {split_spec!r} of {source} are not classes 0..'
        f'{num_classes - 1} (e.g. {values}): ' + (
            f'the labels run 1..{num_classes}, numbered from 1 where the classes are numbered '
            'from 0: subtract 1 from each.' if from_one else
            'the label file is corrupt or belongs to another dataset.')
        + ' Nothing was trained or evaluated on this split.')
  return split


def _physical_memory() -> int:
  return host_memory.total_bytes()  # A container's cap, where it has one.


def _fits_in_memory(options: DataOptions, num_examples: int | None,
                    image_shape: tuple[int, int, int]) -> bool:
  if options.data_in_memory != 'auto':
    return options.data_in_memory == 'true'
  if num_examples is None:  # A size nobody recorded: the studies' behaviour.
    return True
  decoded = num_examples * int(np.prod(image_shape))
  return decoded <= MEMORY_FRACTION * _physical_memory()


def _listed_tree(root: str) -> image_tree.Listing:
  """The listing of the image tree at `root`. An archive is read whole into memory, so one
  larger than the share of memory a dataset may take is refused before it is read, where
  the system would otherwise kill the run partway through, without a word."""
  if not os.path.isdir(root):
    size, memory = os.path.getsize(root), _physical_memory()
    if size > MEMORY_FRACTION * memory:
      raise image_tree.LocalDataError(
          f'{root} is {size / 2**30:.1f} GiB, more than {MEMORY_FRACTION:.0%} of '
          f'{host_memory.whose()} {memory / 2**30:.1f} GiB of memory, and an archive is read '
          'whole into memory: unpack it and point config.local_data_dir at the folder '
          '(streamed where it does not fit in memory).')
  return image_tree.list_tree(root)


def _existing(local_data_dir: str) -> str:
  if not os.path.exists(local_data_dir):
    raise image_tree.LocalDataError(f'config.local_data_dir={local_data_dir!r} does not exist.')
  return local_data_dir


class _Loader:
  """Reads the splits of one dataset, sharing what several splits need (a tree's listing,
  a decoded IDX split that two slices take from)."""

  def __init__(self, options: DataOptions, spec: DatasetSpec):
    self.options, self.spec = options, spec
    root = options.local_data_dir and _existing(options.local_data_dir)
    self.kind = _local_kind(root) if root else 'tfds'
    self.source = f'local:{root}' if root else 'tfds'
    if self.kind == 'cifar':
      _check_batch_classes(root, spec.class_names, options.dataset)
    self._whole: dict[str, Any] = {}
    self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._tree = spec.tree  # A tree is listed once: here if `describe` did not.
    self._told_numbers = False  # Numbered class folders are said once, for every split.
    if self.kind == 'tfds':
      info = tfds_source.builder_info(options.dataset, options.tfds_data_dir)
      self.keys = tfds_source.feature_keys(info, options.image_key, options.label_key)
      self.info = info

  def in_memory(self, split_specs: list[str]) -> bool:
    """One decision for the whole dataset: every split held, or every split streamed.
    Arrays in files are read whole however large; held, they are also resized whole (to
    config.image_size), which can take far more memory than the files."""
    counts = [self._count(split_spec) for split_spec in split_specs]
    total = None if None in counts else sum(counts)
    return _fits_in_memory(self.options, total, self.spec.image_shape)

  def _count(self, split_spec: str) -> int | None:
    """Examples `split_spec` selects (files, for a tree: some may prove not to be images)."""
    if self.kind == 'tfds':
      return tfds_source.num_examples(self.info, split_spec)
    return sum(len(splits.slice_indices(part, self.split_size(part.name)))
               for part in splits.parse_split(split_spec))

  def split_size(self, name: str) -> int | None:
    """Examples in the whole split `name` (files, for a tree; None where TFDS does not
    know)."""
    if self.kind == 'tfds':
      return tfds_source.num_examples(self.info, name)
    return (len(self._read_arrays(name)[1]) if self.kind in ARRAY_KINDS
            else len(self._tree_files(name)))

  def _read_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `split`'s images and labels as the files hold them (`ARRAY_KINDS`), read once."""
    if split not in self._arrays:
      self._arrays[split] = ARRAY_KINDS[self.kind](self.options.local_data_dir, split)
    return self._arrays[split]

  def _tree_files(self, split: str) -> list[image_tree.TreeFile]:
    """Split `split`'s files; the tree is listed once for all splits (a large directory
    takes a while to list and sort)."""
    if self._tree is None:
      self._tree = _listed_tree(self.options.local_data_dir)
    files = image_tree.split_files(self._tree, self.options.local_data_dir, split)
    if self.options.dataset in DATASETS:
      files = _numbered_as_classes(files, split, self.options.local_data_dir,
                                   self.options.dataset, warn=not self._told_numbers)
      self._told_numbers = True
      _check_tree_is_the_dataset(files, split, self.options.local_data_dir, self.options.dataset)
    return files

  def load(self, split_spec: str, in_memory: bool) -> Split | StreamedSplit:
    options, shape = self.options, self.spec.image_shape
    if self.kind == 'tfds':
      if in_memory:
        return tfds_source.load_in_memory(options.dataset, split_spec, options.tfds_data_dir,
                                          self.keys, shape)
      return tfds_source.stream(options.dataset, split_spec, options.tfds_data_dir, self.keys,
                                shape, options.workers)
    if self.kind in ARRAY_KINDS and not in_memory:
      return self._streamed_arrays(split_spec)
    parts = []
    for part in splits.parse_split(split_spec):
      whole = self._whole_split(part.name, in_memory)
      parts.append((whole, np.asarray(splits.slice_indices(part, len(whole[1])), np.int64)))
    if self.kind in ARRAY_KINDS:
      return Split(*(np.concatenate([whole[k][index] for whole, index in parts])
                     for k in (0, 1)))
    files = [whole[2][i] for whole, index in parts for i in index]
    labels = np.concatenate([whole[1][index] for whole, index in parts])
    identity = image_tree.files_fingerprint(files, labels)
    if in_memory:
      images = np.concatenate([whole[0][index] for whole, index in parts])
      return Split(images, labels, identity)
    decode = image_tree.decoder(files, options.local_data_dir, shape, self._resize_allowed())
    return StreamedSplit(lambda i: (decode(i), labels[i]), len(files), shape, identity,
                         options.workers)

  def _resize_allowed(self) -> bool:
    """The studies' datasets keep their one size unless the config asks for another."""
    return self.options.dataset not in DATASETS or bool(self.options.image_size)

  def _whole_split(self, name: str, in_memory: bool) -> tuple:
    """(images or None, labels, files or None) of a whole split, read once."""
    key = (name, in_memory or self.kind in ARRAY_KINDS)
    if key not in self._whole:
      root, shape = self.options.local_data_dir, self.spec.image_shape
      if self.kind in ARRAY_KINDS:
        images, labels = self._read_arrays(name)
        self._whole[key] = (_shaped(images, shape, self._resize_allowed(),
                                    bool(self.options.channels), root, self.options.dataset),
                            labels, None)
      elif in_memory:
        self._whole[key] = image_tree.read_split(self._tree_files(name), root, name,
                                                 self.spec.class_names, shape,
                                                 self._resize_allowed())
      else:
        files, labels = image_tree.stream_split(self._tree_files(name), root, name,
                                                self.spec.class_names)
        self._whole[key] = (None, labels, files)
    return self._whole[key]

  def _streamed_arrays(self, split_spec: str) -> StreamedSplit:
    """An array source's examples (`ARRAY_KINDS`) through the streaming reader: the arrays as
    the files hold them are in memory, and each image is resized as a batch takes it. A
    resized split is recognised on resume by the arrays it was resized from ('resized:'),
    which an in-memory run's hash of the resized pixels is not compared with."""
    from cnnjax.data import images as images_lib
    parts = [(self._read_arrays(part.name), part) for part in splits.parse_split(split_spec)]
    indices = [np.asarray(splits.slice_indices(part, len(arrays[1])), np.int64)
               for arrays, part in parts]
    images, labels = (np.concatenate([arrays[k][index] for (arrays, _), index
                                      in zip(parts, indices)]) for k in (0, 1))
    raw, shape = Split(images, labels), self.spec.image_shape
    check_split(raw, split_spec, len(self.spec.class_names), self.source)  # Labels in memory.
    if raw.image_shape == tuple(shape):
      return StreamedSplit(lambda i: (images[i], labels[i]), len(raw), shape, raw.fingerprint(),
                           self.options.workers)
    _check_reshapable(raw.image_shape, shape, self._resize_allowed(),
                      bool(self.options.channels), self.options.local_data_dir,
                      self.options.dataset)
    return StreamedSplit(lambda i: (images_lib.fit_array(images[i], shape), labels[i]),
                         len(raw), shape, f'resized:{raw.fingerprint()}', self.options.workers)


# Local sources read as whole arrays, and how to read a split of each.
ARRAY_KINDS = {'idx': idx_files.read_idx_split, 'csv': csv_files.read_csv_split,
               'cifar': cifar_batches.read_split}


def _array_kind(root: str) -> str | None:
  """The kind of dataset files `root` (a folder or an archive) holds, where they are arrays
  rather than a tree."""
  if os.path.isdir(root) or dataset_files.archive_of_arrays(root):
    files = dataset_files.DatasetFiles(root)
    if idx_files.holds_idx_files(files):
      return 'idx'
    if csv_files.holds_csv_files(files):
      return 'csv'
  return 'cifar' if cifar_batches.is_cifar_batches(root) else None


def _local_kind(root: str) -> str:
  """How the files at `root` are read: 'idx', 'csv', 'cifar' or 'tree'. A folder with no
  train/ split whose sub-folder holds array files (the folder above the data, say) is an
  error naming that sub-folder, where it would be read as an empty image tree."""
  kind = _array_kind(root)
  if kind or not os.path.isdir(root) or os.path.isdir(os.path.join(root, 'train')):
    return kind or 'tree'
  for name in sorted(image_tree.folder_names(root)):
    inner = os.path.join(root, name)
    if os.path.isdir(inner) and _array_kind(inner):
      raise image_tree.LocalDataError(
          f'{root} holds no dataset files itself, but its folder {name}/ does: point '
          f'config.local_data_dir at {inner}.')
  return 'tree'


def _check_tree_is_the_dataset(files: list[image_tree.TreeFile], split: str, root: str,
                               dataset: str) -> None:
  """An error for a tree of `dataset` (one of `DATASETS`) none of whose class folders is a
  class of it: another dataset's images, where a folder-by-folder error had said to rename
  each folder."""
  folders = sorted({f.cls for f in files})
  class_names = DATASETS[dataset].class_names
  if not folders or set(folders) & set(class_names):
    return  # Its classes: image_tree names each folder that is not one.
  theirs = _dataset_of_classes(folders, dataset)
  if not theirs and any(image_tree.class_meant(name, class_names) for name in folders):
    return  # Misspelt: image_tree names each folder with the class it may mean.
  raise OtherDatasetError(
      f'None of the class folders of {split}/ in {root} ({image_tree.first_few(folders, ", ")}) '
      f'is a class of {dataset} ({", ".join(class_names)}): these are another dataset\'s '
      'images', f'; {_way_to_their_dataset(folders, dataset)}.')


def _numbered_as_classes(files: list[image_tree.TreeFile], split: str, root: str, dataset: str,
                         warn: bool) -> list[image_tree.TreeFile]:
  """`files`, whose class folders are `dataset`'s label numbers (`0/` ... `9/`, as exports of
  Fashion-MNIST or CIFAR-10 by label come), as the classes those numbers are, said in one
  warning (`warn`) that names each; `files` as they are where the folders are not numbers,
  or where the numbers are the dataset's class names (MNIST's)."""
  class_names = DATASETS[dataset].class_names
  folders = {f.cls for f in files}
  numbers = [str(i) for i in range(len(class_names))]
  if not folders or not folders <= set(numbers) or folders & set(class_names):
    return files
  if warn:
    theirs = _dataset_of_classes(sorted(folders), dataset)  # MNIST's classes are numbers.
    alike = theirs and DATASETS[theirs].image_shape == DATASETS[dataset].image_shape
    logging.warning('The class folders of %s/ in %s are numbers: read, there and in any other '
                    'split numbered alike, as %s\'s label numbers: %s%s.', split, root, dataset,
                    ', '.join(f'{i} = {name}' for i, name in enumerate(class_names)),
                    f' (for {theirs}, whose classes are these numbers, pass '
                    f'--config.dataset={theirs})' if alike else '')
  return [dataclasses.replace(f, cls=class_names[int(f.cls)]) for f in files]


def _way_to_their_dataset(classes: Sequence[str], dataset: str) -> str:
  """How to train on files whose classes (`classes`) are not `dataset`'s: the dataset of
  `DATASETS` they belong to, or an image folder of the user's own classes."""
  theirs = _dataset_of_classes(classes, dataset)
  if theirs:
    return f'pass --config.dataset={theirs}, or use a config made for it'
  return ('for images of your own classes use configs/image_folder.py '
          "(--config.dataset=image_folder), whose classes are the folders' names")


def _dataset_of_classes(classes: Sequence[str], dataset: str) -> str | None:
  """The dataset of `DATASETS` other than `dataset` whose classes `classes` all are, or None."""
  return next((name for name, spec in DATASETS.items()
               if name != dataset and set(classes) <= set(spec.class_names)), None)


def _check_batch_classes(root: str, class_names: tuple[str, ...], dataset: str) -> None:
  listed = cifar_batches.class_names(root)
  if listed is not None and listed != tuple(class_names):
    raise OtherDatasetError(
        f'{root} holds CIFAR batches of the classes {", ".join(listed)}; {dataset}\'s are '
        f'{", ".join(class_names)}', f': {_way_to_their_dataset(listed, dataset)}.')


def _shaped(images: np.ndarray, shape: tuple[int, int, int], resize: bool,
            convert_channels: bool, root: str, dataset: str) -> np.ndarray:
  """`images` in `shape`, by the image policy; resized only where `resize` (the studies'
  files keep their one size unless config.image_size asks for another), converted to grey
  or RGB where that or `convert_channels` (config.channels) allows it."""
  from cnnjax.data import images as images_lib
  if images.shape[1:] == tuple(shape):
    return images
  _check_reshapable(images.shape[1:], shape, resize, convert_channels, root, dataset)
  return np.stack([images_lib.fit_array(image, shape) for image in images])


def _check_reshapable(image_shape: tuple[int, ...], shape: tuple[int, int, int], resize: bool,
                      convert_channels: bool, root: str, dataset: str) -> None:
  """An error where images of `image_shape` may not become `shape` (see `_shaped`), naming
  the datasets whose images have that shape: such files are most often another study's."""
  if resize or (tuple(image_shape[:2]) == tuple(shape[:2]) and convert_channels):
    return
  shaped_so = [name for name, spec in DATASETS.items()
               if spec.image_shape == tuple(image_shape) and name != dataset]
  owners = [name + "'s" for name in shaped_so]
  like = f', as {" and ".join(owners)} do' if shaped_so else ''
  theirs = (f'For {owners[0]} files pass --config.dataset={shaped_so[0]}'
            + (f' (or {shaped_so[1]})' if shaped_so[1:] else '') + '; to' if shaped_so else 'To')
  raise OtherDatasetError(
      f'The images in {root} have shape {tuple(image_shape)}{like}; {dataset}\'s have '
      f'{tuple(shape)}', f'. {theirs} train on these resized to {dataset}\'s, pass '
      f'--config.image_size={shape[0]} --config.channels={shape[2]}.')


def load_dataset(options: DataOptions, spec: DatasetSpec | None = None) -> Dataset:
  """Loads the train, validation (`val_split=''`: none) and test splits `options` name."""
  spec = spec or describe(options)
  loader = _Loader(options, spec)
  split_specs = (options.train_split, options.val_split, options.test_split)
  in_memory = loader.in_memory([s for s in split_specs if s])
  loaded = [check_split(loader.load(s, in_memory), s, len(spec.class_names), loader.source)
            if s else None for s in split_specs]
  train, val, test = loaded
  _warn_of_examples_shared_with_training(options, loader)
  logging.info('Loaded %s from %s (%s): train %d, val %s, test %d examples.', options.dataset,
               loader.source, 'in memory' if in_memory else 'streamed', len(train),
               len(val) if val is not None else 'none', len(test))
  return Dataset(options.dataset, train, val, test, spec.class_names, loader.source)


def _warn_of_examples_shared_with_training(options: DataOptions, loader: _Loader) -> None:
  """Validation or test examples that are also trained on make their figures (and the epoch
  that validation picks) look better than the model is: a val_split set without narrowing
  train_split ('train' and 'train[80%:]') does so without a word."""
  for field, role in (('val_split', 'validation'), ('test_split', 'test')):
    spec = getattr(options, field)
    shared = spec and splits.shared_examples(options.train_split, spec, loader.split_size)
    if shared:
      logging.warning(
          'config.train_split=%r and config.%s=%r share %d examples: the %s figures measure '
          "examples the model trains on. Hold them out of training, as Keras' "
          "validation_split=0.2 does: --config.train_split='train[:80%%]' "
          "--config.val_split='train[80%%:]'.", options.train_split, field, spec, shared, role)


def load_split(options: DataOptions, split_spec: str, spec: DatasetSpec | None = None
               ) -> Split | StreamedSplit:
  """One split (TFDS syntax, e.g. 'test' or 'train[80%:]'), held or streamed as a run would."""
  spec = spec or describe(options)
  loader = _Loader(options, spec)
  return check_split(loader.load(split_spec, loader.in_memory([split_spec])), split_spec,
                     len(spec.class_names), loader.source)


DATASET_FILE = 'dataset.json'


def write_spec(workdir: str, spec: DatasetSpec) -> None:
  """Records the classes and image shape a run trains on, for evaluate and predict later
  (an image folder's classes cannot be found again without its files)."""
  with atomic.replaced_whole(os.path.join(workdir, DATASET_FILE)) as f:
    json.dump(spec.to_json(), f, indent=2)


def saved_spec(workdir: str, options: DataOptions) -> DatasetSpec:
  """The spec a run in `workdir` recorded; for runs from before it was recorded, described
  again from the config."""
  path = os.path.join(workdir, DATASET_FILE)
  if os.path.exists(path):
    try:
      with open(path, encoding='utf-8') as f:
        return DatasetSpec.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DatasetRecordError(f'{path} is unreadable ({type(e).__name__}: {e}). It records the run\'s '
                      'classes and image shape; restore it from a backup.') from e
  return describe(options)
