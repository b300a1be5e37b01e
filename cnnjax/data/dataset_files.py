"""The files of an array dataset (IDX, CSV) in a folder, or in an archive of that folder.

Such a dataset is a few files, and it travels as a folder of them or as one archive:
Kaggle ships Fashion-MNIST as an archive.zip of its CSV and IDX files. The readers
(`idx_files`, `csv_files`) find and open the files by name through `DatasetFiles`,
so an archive is read as the folder it unpacks to. Its files are read into memory
once (the arrays in them are held whole anyway), passing over hidden and system
files and the one folder that an archive made of a folder wraps them in.
"""
import functools
import io
import itertools
import os
from typing import BinaryIO

from cnnjax.data import image_tree
from cnnjax.data.image_tree import LocalDataError

# The names array files travel by: IDX files (gzipped or not, '-idx3-ubyte' or '.idx3-ubyte'),
# and CSV files.
IDX_FILE_ENDINGS = ('-ubyte', '-ubyte.gz')
ARRAY_FILE_ENDINGS = (*IDX_FILE_ENDINGS, '.csv')
# The files of an archive read to tell an archive of arrays from one of an image tree.
_FILES_PEEKED = 3


class DatasetFiles:
  """The files at `root` (a folder, or an archive of one) by their '/'-separated names."""

  def __init__(self, root: str):
    self.root = root
    self._archived = None
    if not os.path.isdir(root):
      stat = os.stat(root)
      self._archived = _archived_files(root, stat.st_mtime_ns, stat.st_size)

  def names(self, folder: str = '') -> list[str]:
    """The names of the files and folders directly in `folder` ('': at the top), sorted."""
    if self._archived is None:
      path = os.path.join(self.root, folder)
      return sorted(image_tree.folder_names(path)) if os.path.isdir(path) else []
    prefix = f'{folder}/' if folder else ''
    return sorted({name[len(prefix):].split('/')[0] for name in self._archived
                   if name.startswith(prefix)})

  def is_file(self, name: str) -> bool:
    if self._archived is None:
      return os.path.isfile(os.path.join(self.root, name))
    return name in self._archived

  def is_folder(self, name: str) -> bool:
    if self._archived is None:
      return os.path.isdir(os.path.join(self.root, name))
    return any(member.startswith(f'{name}/') for member in self._archived)

  def open(self, name: str) -> BinaryIO:
    if self._archived is None:
      return open(os.path.join(self.root, name), 'rb')
    return io.BytesIO(self._archived[name])

  def shown(self, name: str) -> str:
    """The file as messages name it: its path (inside the archive's, for an archive)."""
    return os.path.join(self.root, name)


def archive_of_arrays(root: str) -> bool:
  """Whether the file `root` is an archive whose first files are all array files (an image
  tree's may have a CSV of labels among its images, not before all of them), or include an
  IDX file, which no image tree holds (a README may come first): reading a few costs little,
  where reading all of a large tree's archive twice would not."""
  try:
    names = (name for name, _ in image_tree.visible_members(root))
    first = list(itertools.islice(names, _FILES_PEEKED))
    return bool(first) and (all(name.endswith(ARRAY_FILE_ENDINGS) for name in first)
                            or any(name.endswith(IDX_FILE_ENDINGS) for name in first))
  except LocalDataError:  # Not an archive, or a damaged one: the tree reader says which.
    return False


@functools.lru_cache(maxsize=1)
def _archived_files(root: str, mtime_ns: int, size: int) -> dict[str, bytes]:
  """The visible files of the archive at `root` by name, without a wrapping folder (read once
  per version of the file)."""
  del mtime_ns, size  # The cache key: a rewritten archive is read again.
  files = dict(image_tree.visible_members(root))
  tops = {name.split('/')[0] for name in files}
  if len(tops) == 1 and all('/' in name for name in files):  # `fashion-mnist/train.csv`...
    files = {name.split('/', 1)[1]: payload for name, payload in files.items()}
  return files
