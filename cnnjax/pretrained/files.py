"""Where ImageNet weight files come from: a cache, filled once from Keras' URLs.

The files are Keras' own application weights. Online, the first run
downloads the one it needs into `$CNNJAX_CACHE` (default `~/.cache/cnnjax`);
offline, `config.pretrained_path` names a file the user has. Where Keras has
already downloaded it (`~/.keras/models`, or `$KERAS_HOME/models`: the studies'
own runs put it there), that copy fills the cache instead, with no network. A
download lands under a temporary name and becomes the cached file only after
it is verified: its size is what the server announced, its MD5 the published
one where Keras publishes one (VGG16), and its HDF5 structure that of the
backbone. So a cut-off download never passes for the cache, and neither does
a Keras copy that fails the same checks.
"""
import contextlib
import dataclasses
import http.client
import logging
import os
import shutil
import socket
import urllib.request
from typing import Callable, Iterator

from cnnjax.pretrained import h5
from cnnjax.pretrained.h5 import WeightsFileError

KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'
# Keras publishes MobileNetV2 weights for these input sizes; others get 224's, as in Keras.
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  name: str
  url: str
  md5: str | None  # Published checksum; None where Keras publishes none.


def imagenet_weights_file(backbone: str, image_size: int) -> WeightsFile:
  """The Keras application file (include_top=False) for `backbone` at `image_size`."""
  if backbone == 'vgg16':
    name = 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
    return WeightsFile(name, KERAS_URL + 'vgg16/' + name, '6d6bbae143d832006294945121d1f1fc')
  if backbone == 'mobilenet_v2':
    size = image_size if image_size in MOBILENET_V2_SIZES else 224
    name = f'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5'
    return WeightsFile(name, KERAS_URL + 'mobilenet_v2/' + name, None)
  raise ValueError(f'No ImageNet weights are known for backbone {backbone!r}.')


def published_md5(file_name: str) -> str | None:
  """The published MD5 of a Keras weights file of that name, if Keras publishes one."""
  for backbone in ('vgg16', 'mobilenet_v2'):
    for size in MOBILENET_V2_SIZES:
      file = imagenet_weights_file(backbone, size)
      if file.name == file_name:
        return file.md5
  return None


def cache_dir() -> str:
  return os.environ.get('CNNJAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                        'cnnjax')


def check_md5(path: str, expected: str | None) -> str:
  """The file's MD5; an error naming both sums when it is not the published one."""
  actual = h5.md5sum(path)
  if expected and actual != expected:
    raise WeightsFileError(
        f'{path} has MD5 {actual}, but the published file has {expected}: it is corrupt, '
        'truncated or another file. Delete it and download it again.')
  return actual


def _offline_help(file: WeightsFile, target: str) -> str:
  return (f'Without network, download {file.url} on another machine and either put it at '
          f'{target} or pass --config.pretrained_path=/path/to/{file.name}.')


def _fetch(file: WeightsFile, partial: str, target: str) -> None:
  """Streams `file.url` into `partial` with a progress bar; checks the announced size."""
  import tqdm
  try:
    with urllib.request.urlopen(file.url, timeout=60) as response:
      announced = response.headers.get('Content-Length')
      announced = int(announced) if announced else None
      received = 0
      with open(partial, 'wb') as out, tqdm.tqdm(total=announced, unit='B', unit_scale=True,
                                                 desc=file.name, leave=False) as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
  except (OSError, http.client.HTTPException) as e:  # URLError is an OSError.
    raise WeightsFileError(f'Could not download ImageNet weights from {file.url} '
                           f'({type(e).__name__}: {e}). ' + _offline_help(file, target)) from e
  if announced is not None and received != announced:
    raise WeightsFileError(f'The download of {file.url} stopped after {received} of '
                           f'{announced} bytes. Run again to retry. '
                           + _offline_help(file, target))


@contextlib.contextmanager
def _placed_whole(target: str) -> Iterator[str]:
  """A temporary path beside `target` that becomes `target` when the block ends without an
  error, and is removed otherwise: the cache holds a whole, verified file or none."""
  from cnnjax.runs import workdir as workdir_lib  # Its imports take seconds: only here.
  folder = os.path.dirname(target)
  workdir_lib.check_folder_can_be_written(folder, 'CNNJAX_CACHE', f'The weights cache {folder}')
  os.makedirs(folder, exist_ok=True)
  partial = f'{target}.part-{socket.gethostname()}-{os.getpid()}'
  try:
    yield partial
    os.replace(partial, target)  # Atomic.
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def download(file: WeightsFile, target: str, check_structure: Callable[[str], None]) -> None:
  """Fetches `file` to `target` through a temporary file that must pass every check."""
  logging.info('Downloading %s to %s', file.url, target)
  with _placed_whole(target) as partial:
    _fetch(file, partial, target)
    check_md5(partial, file.md5)
    check_structure(partial)


def keras_cache_dir() -> str:
  """Where Keras keeps the application weights it downloads (`keras.utils.get_file`)."""
  return os.path.join(os.environ.get('KERAS_HOME') or os.path.join(os.path.expanduser('~'),
                                                                   '.keras'), 'models')


def copy_from_keras(source: str, target: str, md5: str | None,
                    check_structure: Callable[[str], None]) -> None:
  """Fills the cache's `target` with Keras' copy `source`, checked as a download is (a
  failing copy is named, and the cache is left without the file)."""
  check_md5(source, md5)
  check_structure(source)
  with _placed_whole(target) as partial:
    shutil.copyfile(source, partial)


def ensure_cached(file: WeightsFile, check_structure: Callable[[str], None]) -> str:
  """Path of the verified cached `file`, copied from Keras' cache or downloaded first if it
  is not there."""
  target = os.path.join(cache_dir(), file.name)
  if os.path.exists(target):
    return target
  keras_copy = os.path.join(keras_cache_dir(), file.name)
  if os.path.isfile(keras_copy):
    logging.info('Copying %s, which Keras downloaded, to %s', keras_copy, target)
    copy_from_keras(keras_copy, target, file.md5, check_structure)
  else:
    download(file, target, check_structure)
  return target
