"""A split's examples, held decoded in host memory or read when a batch needs them.

Both kinds answer the same two questions the pipeline asks: how many
examples, and `read_flagged(index)`, the images and labels of the examples
at `index` (in that order) and which of them are their own (a streamed
file that fails to decode has a stand-in; `read` leaves the flags out).
Which kind a split is decides only where the bytes come from, never which
examples a batch holds: the order of batches is the pipeline's, a function
of (seed, epoch) alone.
"""
import dataclasses
import hashlib
import logging
import threading
from typing import Callable

import numpy as np

from cnnjax.errors import UserError

# How many examples after an unreadable one a streamed split tries for a stand-in before it
# concludes that its files are gone (a disk unmounted, a folder moved) rather than broken.
STAND_IN_TRIES = 64
# Files a streamed split names as it stands in for them; past these, one line says more came
# (a scrape with thousands of broken files would otherwise bury the run's own lines).
STAND_INS_NAMED = 10


class UnreadableExample(Exception):
  """Example i's bytes cannot be decoded (an image cut short after its header, a file
  removed while training); the message names it where it lies."""


class UnreadableSplitError(UserError):
  """A streamed split's files cannot be read at all any more."""


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

  def read_flagged(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`read`, and which examples are their own (all: a held split was decoded whole)."""
    return *self.read(index), np.ones(len(index), bool)

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

  Only a header is checked before a streamed run, so a file can still fail
  to decode while training (`UnreadableExample`). A batch keeps its shape:
  the next readable example stands in for it (`read_flagged` says which
  rows are stand-ins, and evaluation leaves them out), with one warning per
  file. The stand-in depends on the index alone, so a resumed run, any
  device count and any number of reader threads see the same batches, and a
  run goes on where stopping it would cost a restart per broken file of a
  large scraped tree.
  """
  read_example: Callable[[int], tuple[np.ndarray, int]]
  size: int
  image_shape: tuple[int, int, int]
  identity: str
  workers: int
  streamed = True
  _warned: set = dataclasses.field(default_factory=set, init=False, repr=False,
                                   compare=False)
  _warned_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False,
                                                   repr=False, compare=False)

  def __len__(self) -> int:
    return self.size

  def read(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = self.read_flagged(index)
    return images, labels

  def read_flagged(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images and labels of the examples at `index`, and which rows are their own (False:
    that example could not be decoded and the next readable one stands in for it)."""
    images = np.empty((len(index),) + tuple(self.image_shape), np.uint8)
    labels = np.empty((len(index),), np.int32)
    own = np.ones(len(index), bool)
    for row, i in enumerate(index):
      (images[row], labels[row]), own[row] = self._read_or_stand_in(int(i))
    return images, labels, own

  def _read_or_stand_in(self, i: int) -> tuple[tuple[np.ndarray, int], bool]:
    unreadable = []
    for tried in range(min(STAND_IN_TRIES, self.size)):
      try:
        return self.read_example((i + tried) % self.size), not unreadable
      except UnreadableExample as e:
        self._warn_once(str(e))
        unreadable.append(str(e))
    raise UnreadableSplitError(
        f'{len(unreadable)} examples in a row could not be read while streaming, the first: '
        f'{unreadable[0]}. Are the files still where the run found them? Make them readable '
        'and run the same command again: the run resumes from its last checkpoint.')

  def _warn_once(self, problem: str) -> None:
    with self._warned_lock:
      if problem in self._warned:
        return
      self._warned.add(problem)
      count = len(self._warned)
    if count <= STAND_INS_NAMED:
      logging.warning('While streaming: %s. It is left out: a training batch takes the next '
                      'readable example in its place, an evaluation does not count it. Replace '
                      'it with a readable image of the same name to have it used.', problem)
    elif count == STAND_INS_NAMED + 1:
      logging.warning('While streaming: more than %d files of this split could not be decoded; '
                      'each is stood in for the same way, without a line of its own.',
                      STAND_INS_NAMED)

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
