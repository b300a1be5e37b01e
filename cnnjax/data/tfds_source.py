"""Any TFDS image-classification dataset, by name: its description, in memory or streamed.

The image and label features are found in the dataset's `DatasetInfo`
(the supervised keys where it has them, else its one Image and one
ClassLabel feature), or named by `config.image_key` / `config.label_key`.
Images of varying size are converted to the configured size by
`images.fit_array`, the policy every other source uses. Only this module
imports TensorFlow, and only because TFDS reads its files with it.
"""
import contextlib
import functools
import io
import logging
import os
import re
import socket
import tempfile
import urllib.parse
from typing import Any, Iterator

import numpy as np

from cnnjax.data import examples
from cnnjax.data import images as images_lib
from cnnjax.errors import ConfigError
from cnnjax.errors import UserError


class DatasetUnavailableError(UserError, RuntimeError):
  """The dataset can be neither loaded from TFDS nor read from local files."""


# Where Keras' `load_data()` keeps the studies' datasets, in forms cnnjax reads: the IDX
# files, and the CIFAR-10 batches (Keras 3 unpacks them one folder further down).
KERAS_CACHE_FOLDERS = {'fashion_mnist': ('fashion-mnist',),
                       'cifar10': ('cifar-10-batches-py-target', 'cifar-10-batches-py')}


def keras_cache(name: str) -> str | None:
  """The folder of Keras' download of dataset `name` on this machine, if there is one."""
  root = os.path.join(os.environ.get('KERAS_HOME') or os.path.expanduser('~/.keras'),
                      'datasets')
  return next((os.path.join(root, folder) for folder in KERAS_CACHE_FOLDERS.get(name, ())
               if os.path.isdir(os.path.join(root, folder))), None)


def offline_help(name: str) -> str:
  cached = keras_cache(name)
  if cached:
    return (f'Keras downloaded this dataset to {cached} before: train from it with '
            f'--config.local_data_dir={cached} (no network, no TensorFlow).')
  return (f'To train from files you have instead (no network, no TensorFlow): '
          f'--config.local_data_dir=DIR, where DIR holds the four IDX .gz files or the two '
          f'CSV files (MNIST/Fashion-MNIST), the CIFAR-10 batches (cifar-10-python.tar.gz), or '
          f'train/<class>/* and test/<class>/* image folders (or a .tar.gz of that tree), '
          f'e.g. --config.local_data_dir=data/'
          f'{"cifar-10-python.tar.gz" if name == "cifar10" else name}.')


def hide_accelerators_from_tensorflow(tf) -> list[str]:
  """Keeps TensorFlow off the GPUs and TPUs: TFDS only reads files with it, and TensorFlow
  would otherwise reserve accelerator memory that JAX needs. Returns a warning for each
  kind it could not hide."""
  refused = []
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except RuntimeError as e:  # TensorFlow had already started on its devices.
      refused.append(f'Could not hide the {kind}s from TensorFlow ({e}).')
  return refused


# What TensorFlow's C++ code logs to stderr as it is imported, whatever TF_CPP_MIN_LOG_LEVEL
# says (oneDNN is on, no CUDA driver, absl's banner): lines in absl's format, and the banner.
_NATIVE_LOG_LINE = re.compile(r'^([IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] |'
                              r'WARNING: All log messages before absl::InitializeLog\(\))')


@contextlib.contextmanager
def _native_import_logs_hidden() -> Iterator[None]:
  """Hides what C++ code writes to stderr in absl's format while inside, where the console
  is to show the run's own lines only (absl's verbosity WARNING or quieter: cnnjax's tools
  without --verbosity); whatever else is written there meanwhile is shown when it ends. A
  crash inside would take its message with it: `--verbosity=0` shows everything as written."""
  from absl import logging as absl_logging
  if absl_logging.get_verbosity() >= absl_logging.INFO:
    yield
    return
  with tempfile.TemporaryFile('w+b') as captured:
    kept = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(kept, 2)
      os.close(kept)
      captured.seek(0)
      shown = [line for line in captured.read().decode('utf-8', 'replace').splitlines(True)
               if not _NATIVE_LOG_LINE.match(line)]
      if shown:
        os.write(2, ''.join(shown).encode())


class _HostNotFound(ConnectionError):
  """A download's host name did not resolve: no network, or no such host."""


class _NoRetryForAnUnresolvedHost(logging.Filter):
  """On urllib3's logger, which warns of each retry before it waits: a retry after a host
  name failed to resolve raises instead (where urllib3's warnings are on, as in cnnjax's
  tools). TFDS retries a download 10 times, for 3.5 minutes in all, which helps with a
  server's hiccup but not a machine that is offline; each retry would also print a warning
  for every file. It stays for the process's life: TFDS downloads in threads, and one still
  retrying after another's error ended the load would hold the process's exit."""

  def filter(self, record: logging.LogRecord) -> bool:
    cause = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else None
    if type(cause).__name__ == 'NameResolutionError':
      raise _HostNotFound(f'a download host did not resolve, so this machine looks offline: '
                          f'{cause}')
    return True


def import_tensorflow(keep_off_accelerators: bool = True):
  """TensorFlow, imported with what its C++ code logs meanwhile hidden: its start-up lines,
  and the 'failed call to cuInit' of its device probe (run here) on a machine with a CUDA
  library and no GPU. Kept off the accelerators unless asked otherwise (the benchmark's
  Keras side runs on them).

  Where nothing set `TF_CPP_MIN_LOG_LEVEL` (a script that imports this before JAX, which
  sets it to 1), it is set to 3 as cnnjax's tools set it: below that, TensorFlow's start-up
  message continues on a line that is not in absl's format ('To enable the following
  instructions: AVX2 ...'), which the hiding would let through.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # Read by TensorFlow as it is imported.
  with _native_import_logs_hidden():
    import tensorflow as tf
    tf.config.list_physical_devices()  # The device probe, which logs.
    refused = hide_accelerators_from_tensorflow(tf) if keep_off_accelerators else []
  for warning in refused:  # Shown: Python's logging may write in absl's format, as hidden.
    logging.warning(warning)
  return tf


def import_tfds(name: str):
  """tensorflow_datasets, with TensorFlow imported first (`import_tensorflow`)."""
  try:
    import_tensorflow()  # Only loading through TFDS needs TensorFlow.
  except ImportError as e:
    raise DatasetUnavailableError(
        f'Loading {name!r} through TFDS needs TensorFlow, which cnnjax does not install by '
        f'default ({e}). Add it with: pip install -e ".[tfds]". ' + offline_help(name)) from e
  downloads = logging.getLogger('urllib3.connectionpool')
  if not any(isinstance(f, _NoRetryForAnUnresolvedHost) for f in downloads.filters):
    downloads.addFilter(_NoRetryForAnUnresolvedHost())
  import tensorflow_datasets as tfds
  return tfds


@functools.lru_cache(maxsize=8)
def builder_info(name: str, data_dir: str):
  """The `DatasetInfo` of TFDS dataset `name` (from its code: nothing is downloaded; read
  once per process, for describing the dataset and for loading it)."""
  tfds = import_tfds(name)
  try:
    return tfds.builder(name, data_dir=data_dir or None).info
  except ValueError as e:  # DatasetNotFoundError is one, and so is a name TFDS cannot parse.
    if (not isinstance(e, tfds.core.registered.DatasetNotFoundError)
        and 'builder name string' not in str(e)):
      raise
    raise ConfigError(
        f'Unknown dataset {name!r} (config.dataset): it is neither one of cnnjax\'s '
        "(fashion_mnist, mnist, cifar10), nor 'image_folder' (your own folders, with "
        '--config.local_data_dir), nor a TFDS dataset (e.g. cifar100, svhn_cropped, '
        'tf_flowers).') from e


def _features_of_kind(info, kind: str) -> list[str]:
  return [key for key, feature in info.features.items() if type(feature).__name__ == kind]


def feature_keys(info, image_key: str, label_key: str) -> tuple[str, str]:
  """The image and label feature names: as configured, else from the info."""
  supervised = info.supervised_keys if isinstance(info.supervised_keys, tuple) else None
  found = []
  for key, kind, field, index in ((image_key, 'Image', 'image_key', 0),
                                  (label_key, 'ClassLabel', 'label_key', 1)):
    candidates = _features_of_kind(info, kind)
    if not key:
      if supervised and supervised[index] in candidates:
        key = supervised[index]
      elif len(candidates) == 1:
        key = candidates[0]
      else:
        raise ConfigError(
            f'TFDS dataset {info.name!r} has {len(candidates) or "no"} {kind} feature(s) '
            f'({", ".join(candidates) or "none"}); name one with --config.{field}=NAME.')
    elif key not in candidates:
      raise ConfigError(f'config.{field}={key!r} is not a {kind} feature of TFDS dataset '
                        f'{info.name!r}; its {kind} features: {", ".join(candidates) or "none"}.')
    found.append(key)
  return found[0], found[1]


def native_shape(info, image_key: str) -> tuple[Any, ...]:
  """The image feature's (H, W, C), with None where images vary."""
  return tuple(info.features[image_key].shape)


def class_names(info, label_key: str) -> tuple[str, ...]:
  return tuple(info.features[label_key].names)


def num_examples(info, split_spec: str) -> int | None:
  """Examples `split_spec` selects, where the info knows its splits (else None)."""
  try:
    return int(info.splits[split_spec].num_examples)
  except (KeyError, ValueError, TypeError):
    return None


def _unavailable(name: str, split_spec: str, e: Exception) -> DatasetUnavailableError:
  return DatasetUnavailableError(f'Could not load split {split_spec!r} of TFDS dataset {name!r}: '
                                 f'{type(e).__name__}: {e}. ' + offline_help(name))


def _unresolved_download_host(tfds, name: str, data_dir: str, **builder_kwargs) -> str | None:
  """A host of the files TFDS lists for `name` (its checksums) that does not resolve, where
  the dataset is still to be prepared; None where all do, or TFDS lists none."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, **builder_kwargs)
    # What `is_prepared()` checks, without its warning where the folder is not there yet.
    if (builder.data_path / 'dataset_info.json').exists():
      return None
    hosts = sorted({urllib.parse.urlparse(url).hostname for url in builder.url_infos or {}}
                   - {None})
  except Exception:  # pylint: disable=broad-except  # Left to the load, which says why.
    return None
  return next((host for host in hosts if not _resolves(host)), None)


@functools.lru_cache(maxsize=None)
def _resolves(host: str) -> bool:
  """Whether `host`'s name resolves (asked once per process: a slow resolver is slow once)."""
  try:
    socket.getaddrinfo(host, None)
  except (socket.gaierror, UnicodeError):
    return False
  return True


class _TfdsWarningsDropped(logging.Filter):
  """On absl's logger: TFDS' warnings (not its errors) about the folders of a dataset it
  fails to prepare."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or f'{os.sep}tensorflow_datasets{os.sep}' not in (
        record.pathname)


@contextlib.contextmanager
def _quiet_where_offline(tfds, name: str, data_dir: str, **builder_kwargs) -> Iterator[None]:
  """TFDS announces a download and draws its progress bars (a score of lines, in a log)
  before its first request; where a host of the files does not resolve, the request will
  fail (`_NoRetryForAnUnresolvedHost`), and the run's one error line is to stand alone. So
  there, TFDS prepares the dataset without them: what it can do offline (from downloads it
  kept, or mocked in tests) still succeeds, quietly. `tfds`: from `import_tfds`."""
  if _unresolved_download_host(tfds, name, data_dir, **builder_kwargs) is None:
    yield
    return
  from tensorflow_datasets.core.utils import tqdm_utils
  bars = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)
  absl_logger, dropped = logging.getLogger('absl'), _TfdsWarningsDropped()
  absl_logger.addFilter(dropped)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.removeFilter(dropped)
    tfds.display_progress_bar(bars)


def load_in_memory(name: str, split_spec: str, data_dir: str, keys: tuple[str, str],
                   image_shape: tuple[int, int, int]) -> examples.Split:
  """Split `split_spec` decoded into memory, every image in `image_shape`."""
  tfds = import_tfds(name)
  image_key, label_key = keys
  try:
    with _quiet_where_offline(tfds, name, data_dir):
      ds = tfds.load(name, split=split_spec, data_dir=data_dir or None, download=True)
    ds = ds.map(lambda example: (example[image_key], example[label_key]))
    if tuple(ds.element_spec[0].shape) == tuple(image_shape):
      # Batches of a fixed size: `batch_size=-1` is not supported by TFDS' mocks.
      images, labels = zip(*tfds.as_numpy(ds.batch(10_000)))
    else:  # Varying sizes: one image at a time, converted as any other source's.
      pairs = [(images_lib.fit_array(image, image_shape)[None], np.asarray([label]))
               for image, label in tfds.as_numpy(ds)]
      images, labels = zip(*pairs) if pairs else ((np.zeros((0,) + image_shape, np.uint8),),
                                                  (np.zeros((0,), np.int32),))
  except Exception as e:  # Download and preparation fail in many ways offline.
    raise _unavailable(name, split_spec, e) from e
  return examples.Split(np.concatenate(images).astype(np.uint8),
                        np.concatenate(labels).astype(np.int32))


def stream(name: str, split_spec: str, data_dir: str, keys: tuple[str, str],
           image_shape: tuple[int, int, int], workers: int) -> examples.StreamedSplit:
  """Split `split_spec` read example by example from TFDS' ArrayRecord files.

  Random access needs the dataset's ArrayRecord files (`tfds.data_source`
  asks for that format when it downloads and prepares the dataset); what
  TFDS says when it cannot give them ends the one error line.
  """
  tfds = import_tfds(name)
  image_key, label_key = keys
  try:
    with _quiet_where_offline(tfds, name, data_dir, file_format='array_record'):
      source = tfds.data_source(name, split=split_spec, data_dir=data_dir or None,
                                download=True, builder_kwargs={'file_format': 'array_record'})
  except Exception as e:
    raise _unavailable(name, split_spec, e) from e

  def read_example(i: int) -> tuple[np.ndarray, int]:
    example = source[i]
    return images_lib.fit_array(np.asarray(example[image_key]), image_shape), int(
        example[label_key])
  return examples.StreamedSplit(read_example, len(source), image_shape,
                                f'tfds:{name}/{split_spec}:{len(source)}', workers)
