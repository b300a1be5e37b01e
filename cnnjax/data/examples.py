"""A split's examples, held decoded in host memory or read when a batch needs them.

Both kinds answer the same two questions the pipeline asks: how many
examples, and `read(index)`, the images and labels of the examples at
`index` (in that order). Which kind a split is decides only where the bytes
come from, never which examples a batch holds: the order of batches is the
pipeline's, a function of (seed, epoch) alone.
"""
import dataclasses
import hashlib
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory: uint8 NHWC images, int32 labels.

  `identity`: how a resumed run recognises these examples when hashing the
  decoded pixels is not the right test ('' = hash them; image trees name
  their files, so that a tree decoded into memory and the same tree
  streamed are the same examples).
  """
  images: np.ndarray
  labels: np.ndarray
  identity: str = ''
  streamed = False

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.images.shape[1:])

  def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[index], self.labels[index]

  def fingerprint(self) -> str:
    if self.identity:
      return self.identity
    digest = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
    digest.update(np.ascontiguousarray(self.images).tobytes())
    return f'{len(self)}:{digest.hexdigest()[:16]}'


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
  """One split read and decoded batch by batch, never held whole.

  `read_example(i)` gives example i's uint8 image (in `image_shape`) and
  label; the pipeline calls `read` for each batch from `workers` threads
  (decoding in Pillow and TFDS releases the GIL), a few batches ahead of
  the device.
  """
  read_example: Callable[[int], tuple[np.ndarray, int]]
  size: int
  image_shape: tuple[int, int, int]
  identity: str
  workers: int
  streamed = True

  def __len__(self) -> int:
    return self.size

  def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(index),) + tuple(self.image_shape), np.uint8)
    labels = np.empty((len(index),), np.int32)
    for row, i in enumerate(index):
      images[row], labels[row] = self.read_example(int(i))
    return images, labels

  def fingerprint(self) -> str:
    return self.identity


def example_count(fingerprint: str) -> int | None:
  """How many examples a fingerprint names, where it says: pixels hashed ('N:…'), files
  named ('names:N:…'), either resized ('resized:…'), a TFDS split ('tfds:name/split:N')."""
  head, _, rest = fingerprint.partition(':')
  if head.isdigit():
    return int(head)
  if head == 'resized':
    return example_count(rest)
  number = rest.split(':')[0] if head == 'names' else rest.rpartition(':')[2]
  return int(number) if head in ('names', 'tfds') and number.isdigit() else None


def same_examples(saved: str, now: str) -> bool:
  """Whether two fingerprints name the same examples. Fingerprints of different kinds
  (pixels hashed, files named, a TFDS split named) cannot be compared: they pass."""
  def kind(fingerprint: str) -> str:
    head = fingerprint.split(':', 1)[0]
    return 'pixels' if head.isdigit() else head
  return kind(saved) != kind(now) or saved == now
