"""The IDX files of MNIST/Fashion-MNIST, read without TensorFlow.

Machines without network (and GPU/TPU boxes without TensorFlow) train from
files the user already has: the four IDX .gz files as distributed, or an
image tree (`image_tree`). Both give uint8 NHWC images and int32 labels, as
the TFDS path does. The files are found under the names they travel by
(`train-images-idx3-ubyte.gz`, unpacked `train-images-idx3-ubyte`, or the
`train-images.idx3-ubyte` of some mirrors), and a gzip stream is recognised
by its content, whatever the name says.
"""
import gzip
import struct
import zlib

import numpy as np

from cnnjax.data import image_tree
from cnnjax.data import splits
from cnnjax.data.dataset_files import DatasetFiles
from cnnjax.data.image_tree import LocalDataError

# IDX file name prefix of each split, as distributed.
IDX_PREFIX = {'train': 'train', 'test': 't10k'}
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b'\x1f\x8b'


# What an IDX file of each number of dimensions holds in MNIST-like datasets.
_IDX_CONTENT = {3: 'images', 1: 'labels'}


def _not_idx_message(path: str, data: bytes, expected_ndim: int) -> str:
  """Why `data` is not the IDX file expected: empty, the split's other file (its images and
  labels files swapped, or one renamed over the other), or something else."""
  if not data:
    return f'{path} is empty: copy or download it again.'
  found_ndim = data[3] if len(data) >= 4 and data[:3] == b'\0\0' + bytes([_IDX_UBYTE]) else None
  if found_ndim in _IDX_CONTENT and expected_ndim in _IDX_CONTENT:
    return (f'{path} holds {_IDX_CONTENT[found_ndim]} (an IDX file of {found_ndim}-d unsigned '
            f'bytes), not {_IDX_CONTENT[expected_ndim]}: the images and labels files were '
            'swapped or renamed; give each its own name, or copy or download them again.')
  return (f'{path} is not an IDX file of {expected_ndim}-d unsigned bytes '
          f'(header {data[:4].hex()}): copy or download it again.')


def read_idx(files: DatasetFiles, name: str, expected_ndim: int) -> np.ndarray:
  """Reads one (optionally gzipped) IDX file of unsigned bytes."""
  path = files.shown(name)
  try:
    with files.open(name) as f:
      data = f.read()
    if data[:2] == _GZIP_MAGIC:
      data = gzip.decompress(data)
  except PermissionError as e:
    raise image_tree.unreadable(e) from e
  except (OSError, EOFError, zlib.error) as e:
    raise LocalDataError(f'Cannot read IDX file {path} ({type(e).__name__}: {e}): copy or '
                         'download it again.') from e
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != _IDX_UBYTE or data[3] != expected_ndim:
    raise LocalDataError(_not_idx_message(path, data, expected_ndim))
  header_end = 4 + 4 * expected_ndim
  shape = struct.unpack(f'>{expected_ndim}I', data[4:header_end])
  body = np.frombuffer(data, np.uint8, offset=header_end)
  if body.size != int(np.prod(shape)):
    raise LocalDataError(f'{path} is truncated or padded: header says shape {shape} '
                         f'({int(np.prod(shape))} bytes) but it holds {body.size}: copy or '
                         'download it again.')
  return body.reshape(shape)


def idx_files(files: DatasetFiles, split: str) -> tuple[str, str]:
  """Names of the images and labels IDX files of `split`, .gz or not, named with '-idx' or
  '.idx'; each at the top of `files`, or in a folder of its own name there, as Kaggle's
  MNIST archive unzips (`train-images-idx3-ubyte/train-images-idx3-ubyte`)."""
  if split not in IDX_PREFIX:
    raise LocalDataError(splits.unknown_split_message('IDX datasets', split, IDX_PREFIX))
  found = []
  for kind, ndim in (('images', 3), ('labels', 1)):
    name = f'{IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte'
    names = [name + '.gz', name, f'{IDX_PREFIX[split]}-{kind}.idx{ndim}-ubyte']
    path = next((p for p in names + [f'{n}/{n}' for n in names] if files.is_file(p)), None)
    if path is None:
      raise LocalDataError(f'Missing {name}.gz in {files.root} (also looked for '
                           f'{" and ".join(names[1:])}).')
    found.append(path)
  return found[0], found[1]


def read_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  files = DatasetFiles(data_dir)
  images_name, labels_name = idx_files(files, split)
  images = read_idx(files, images_name, 3)[..., None]
  labels = read_idx(files, labels_name, 1).astype(np.int32)
  if len(images) != len(labels):
    raise LocalDataError(f'{files.shown(images_name)} holds {len(images)} images but '
                         f'{files.shown(labels_name)} holds {len(labels)} labels: the two are '
                         'one split\'s pair, so copy or download them again together.')
  return images, labels


def holds_idx_files(files: DatasetFiles) -> bool:
  """Whether `files` are IDX files (MNIST/Fashion-MNIST as distributed)."""
  return any(name.endswith(('-ubyte', '-ubyte.gz')) for name in files.names())
