"""Readers for datasets in their own distribution format, without TensorFlow.

Machines without network (and GPU/TPU boxes without TensorFlow) train from
files the user already has: the four IDX .gz files of MNIST/Fashion-MNIST,
or an image tree `train/<class>/*.png|jpg` and `test/<class>/*` (CIFAR-10 as
image folders), given as a directory or as a .tar.gz of that tree. Every
reader returns uint8 NHWC images and int32 labels, like the TFDS path.
"""
import gzip
import hashlib
import io
import logging
import os
import re
import struct
import tarfile
import zlib
from typing import Sequence

import numpy as np

from cnnjax.errors import UserError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
# IDX file name prefix of each split, as distributed.
IDX_PREFIX = {'train': 'train', 'test': 't10k'}
_IDX_UBYTE = 0x08


class LocalDataError(UserError, ValueError):
  """A local dataset file or tree is missing or malformed."""


def read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Reads one (optionally gzipped) IDX file of unsigned bytes."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise LocalDataError(f'Cannot read IDX file {path}: {e}') from e
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != _IDX_UBYTE or data[3] != expected_ndim:
    raise LocalDataError(f'{path} is not an IDX file of {expected_ndim}-d unsigned bytes '
                         f'(header {data[:4].hex()}).')
  header_end = 4 + 4 * expected_ndim
  shape = struct.unpack(f'>{expected_ndim}I', data[4:header_end])
  body = np.frombuffer(data, np.uint8, offset=header_end)
  if body.size != int(np.prod(shape)):
    raise LocalDataError(f'{path} is truncated or padded: header says shape {shape} '
                         f'({int(np.prod(shape))} bytes) but it holds {body.size}.')
  return body.reshape(shape)


def idx_files(data_dir: str, split: str) -> tuple[str, str]:
  """Paths of the images and labels IDX files of `split`, .gz or not."""
  if split not in IDX_PREFIX:
    raise LocalDataError(f"IDX datasets have splits {sorted(IDX_PREFIX)}, not {split!r}.")
  found = []
  for kind, ndim in (('images', 3), ('labels', 1)):
    stem = os.path.join(data_dir, f'{IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte')
    path = next((p for p in (stem + '.gz', stem) if os.path.exists(p)), None)
    if path is None:
      raise LocalDataError(f'Missing {stem}.gz in {data_dir}.')
    found.append(path)
  return found[0], found[1]


def read_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  images_path, labels_path = idx_files(data_dir, split)
  images = read_idx(images_path, 3)[..., None]
  labels = read_idx(labels_path, 1).astype(np.int32)
  if len(images) != len(labels):
    raise LocalDataError(f'{images_path} holds {len(images)} images but {labels_path} '
                         f'holds {len(labels)} labels.')
  return images, labels


def _folder_entries(root: str, split: str) -> list[tuple[str, str, bytes]]:
  """(class, file name, bytes) of each image of `split` in a tree or .tar.gz."""
  entries = []
  if os.path.isdir(root):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise LocalDataError(f'No {split}/ folder in {root}.')
    for cls in sorted(os.listdir(split_dir)):
      cls_dir = os.path.join(split_dir, cls)
      for fname in sorted(os.listdir(cls_dir)) if os.path.isdir(cls_dir) else ():
        if fname.lower().endswith(IMAGE_SUFFIXES):
          with open(os.path.join(cls_dir, fname), 'rb') as f:
            entries.append((cls, fname, f.read()))
    return entries
  entries = _archive_entries(root, split)
  if not entries:
    raise LocalDataError(f'No {split}/<class>/<image> entries in {root}.')
  return entries


def _archive_entries(root: str, split: str) -> list[tuple[str, str, bytes]]:
  """(class, file name, bytes) of each image of `split` in a .tar.gz (or .tar) of a tree.

  One sequential pass (seeking in a gzip stream decompresses it again each
  time), read to the very end of the file: tarfile's stream mode takes a
  short read for the end of the archive, so a cut-off file would otherwise
  yield part of a split without a word. The gzip stream's own end marker,
  or a plain tar's closing zero blocks, say the file is whole.
  """
  entries = []
  try:
    with open(root, 'rb') as raw:
      gzipped = raw.read(2) == b'\x1f\x8b'
      if not gzipped:
        raw.seek(0, os.SEEK_END)
        size = raw.tell()
        raw.seek(max(size - 1024, 0))
        if size % 512 or raw.read(1024).strip(b'\0'):
          raise tarfile.ReadError('the archive does not end with its closing zero blocks')
    with (gzip.open(root, 'rb') if gzipped else open(root, 'rb')) as stream:
      with tarfile.open(fileobj=stream, mode='r|') as tar:
        for member in tar:
          parts = member.name.lstrip('./').split('/')
          if (member.isfile() and len(parts) == 3 and parts[0] == split
              and parts[2].lower().endswith(IMAGE_SUFFIXES)):
            entries.append((parts[1], parts[2], tar.extractfile(member).read()))
      while stream.read(1 << 20):  # To the end: a cut-off gzip stream fails here.
        pass
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise LocalDataError(f'{root} is truncated or corrupt ({type(e).__name__}: {e}): it would '
                         'give only part of the dataset. Copy or download it again.') from e
  return entries


def example_order_key(cls: str, fname: str) -> str:
  """A fixed pseudo-random order of an image tree's files: a hash of their path.

  Folders group images by class, but split slices (`train[80%:]`) must draw
  from every class, as they do from TFDS' splits, which are stored shuffled.
  A hash of the path gives such an order that is the same on every machine
  and for every reading of the same tree, directory or archive alike.
  """
  return hashlib.sha256(f'{cls}/{fname}'.encode()).hexdigest()


def read_image_folder_split(root: str, split: str, class_names: Sequence[str],
                            image_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Reads `root/split/<class>/*` in `example_order_key` order.

  Class folders must be named as the dataset's classes; label = its index.
  Images are converted to the dataset's channels and must have its size.
  """
  from PIL import Image  # Only image folders need Pillow.

  index = {name: i for i, name in enumerate(class_names)}
  height, width, channels = image_shape
  mode = {1: 'L', 3: 'RGB'}[channels]
  images, labels = [], []
  entries = sorted(_folder_entries(root, split), key=lambda e: example_order_key(e[0], e[1]))
  for cls, fname, payload in entries:
    if cls not in index:
      raise LocalDataError(f'Folder {split}/{cls} in {root} is not a class of this dataset '
                           f'({", ".join(class_names)}).')
    try:
      image = np.asarray(Image.open(io.BytesIO(payload)).convert(mode), np.uint8)
    except (OSError, Image.DecompressionBombError) as e:
      reason = re.sub(r'<_io\.BytesIO object at 0x[0-9a-f]+>', 'it', str(e))
      raise LocalDataError(f'Cannot decode {split}/{cls}/{fname} in {root}: {reason}. Remove '
                           'or replace the file.') from e
    if image.shape[:2] != (height, width):
      raise LocalDataError(f'{split}/{cls}/{fname} in {root} is {image.shape[1]}x'
                           f'{image.shape[0]}; this dataset has {width}x{height} images.')
    images.append(image.reshape(height, width, channels))
    labels.append(index[cls])
  if not images:
    raise LocalDataError(f'No images under {split}/ in {root}.')
  missing = [name for name in class_names if name not in {cls for cls, _, _ in entries}]
  if missing:
    logging.warning('Split %s/ in %s has no images of class(es) %s: their rows of the confusion '
                    'matrix and report will be empty.', split, root, ', '.join(missing))
  return np.stack(images), np.asarray(labels, np.int32)


def read_local_split(root: str, split: str, class_names: Sequence[str],
                     image_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Reads whole split `split` from IDX files or an image tree under `root`."""
  if not os.path.exists(root):
    raise LocalDataError(f'config.local_data_dir={root!r} does not exist.')
  if os.path.isdir(root) and any(f.endswith(('-ubyte', '-ubyte.gz')) for f in os.listdir(root)):
    images, labels = read_idx_split(root, split)
    if images.shape[1:] != tuple(image_shape):
      raise LocalDataError(f'IDX images in {root} have shape {images.shape[1:]}; '
                           f'this dataset has {tuple(image_shape)}.')
    return images, labels
  return read_image_folder_split(root, split, class_names, image_shape)
