"""Image trees `<split>/<class>/<file>`, as a directory or an archive (.tar.gz, .tar.bz2,
.tar.xz, .tar or .zip): listing and reading.

Keras' own layout, `<class>/<file>` with no split folders (what
`image_dataset_from_directory` reads, and how TF's flower_photos.tgz comes), is
read as the train split alone: the other splits are slices of it.

A tree is listed once (`list_tree`): every file of every split, in a fixed
pseudo-random order (`example_order_key`). As in Keras'
`image_dataset_from_directory`, a class folder's sub-folders are part of it:
`train/cat/2019/a.jpg` is a cat named `2019/a.jpg`. A split is then either decoded
whole into memory (`read_split`, files that are not readable images skipped
with one warning) or kept as a list of files that a streamed run decodes when
a batch needs them (`stream_split`, files whose header is not an image's
skipped the same way). A directory is read from disk file by file; an
archive, which cannot be read at random, is read in one pass and its
compressed files kept in memory (for a tree larger than memory, unpack it
and point `config.local_data_dir` at the directory).
"""
import bz2
import csv
import dataclasses
import difflib
import functools
import gzip
import hashlib
import logging
import lzma
import os
import posixpath
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from typing import IO, Callable, Iterator, Sequence

import numpy as np

from cnnjax.data import images as images_lib
from cnnjax.data.examples import UnreadableExample
from cnnjax.errors import UserError, unreadable_message

_SHOWN = 3  # Files a warning names.


def first_few(names: Sequence[str], separator: str = '; ', shown: int = _SHOWN) -> str:
  """The first few of `names` and how many more: what a warning about many files lists."""
  more = f' and {len(names) - shown} more' if len(names) > shown else ''
  return separator.join(names[:shown]) + more


class LocalDataError(UserError, ValueError):
  """A local dataset file or tree is missing or malformed."""


class FindingWithWayOut(LocalDataError):
  """What is wrong with the data (`finding`), then the way out for a training run (`way`:
  config fields, another config), which a tool bound to a run's config, such as
  `cnnjax.evaluate`, replaces with its own."""

  def __init__(self, finding: str, way: str = ''):
    super().__init__(finding + way)
    self.finding = finding


class KerasLayoutSplitError(FindingWithWayOut):
  """A split asked of a tree in Keras' layout, all of which is the train split."""


def unreadable(error: OSError) -> LocalDataError:
  """A dataset file or folder the system will not read (no permission): the fault it is,
  named, where os.walk would pass a folder over (its class gone missing) and a read end in a
  traceback."""
  return LocalDataError(unreadable_message(error.filename) + '.')


def _raise_unreadable(error: OSError) -> None:
  raise unreadable(error) from error


def folder_names(folder: str) -> list[str]:
  """os.listdir(folder), a folder that cannot be listed said by `unreadable`."""
  try:
    return os.listdir(folder)
  except OSError as e:
    raise unreadable(e) from e


@dataclasses.dataclass(frozen=True)
class TreeFile:
  """One file of a tree: on disk (`path`) or read from an archive (`payload`), with the
  class it was read as. `where` is its place under the tree's root as the tree spells it,
  which messages name: `Training/cat/1.png` of split train, `cat/1.png` in Keras' layout,
  `train/17.png` with a label file, `train/3/1.png` of a class named for a label number."""
  cls: str
  name: str
  path: str = ''
  payload: bytes | None = None
  where: str = dataclasses.field(kw_only=True)  # Required: every message names the file by it.

  def read(self) -> bytes:
    """The file's bytes; a file the system will not give (a link to nothing, no permission)
    is an `ImageInputError`, skipped and named as an unreadable image is."""
    if self.payload is not None:
      return self.payload
    try:
      with open(self.path, 'rb') as f:
        return f.read()
    except OSError as e:
      reason = f'{type(e).__name__}: {e.strerror or e}'
      raise images_lib.ImageInputError(f'cannot be read ({reason})', reason) from e


def example_order_key(cls: str, fname: str) -> str:
  """A fixed pseudo-random order of an image tree's files: a hash of their path.

  Folders group images by class, but split slices (`train[80%:]`) must draw
  from every class, as they do from TFDS' splits, which are stored shuffled.
  A hash of the path gives such an order that is the same on every machine
  and for every reading of the same tree, directory or archive alike.
  """
  # surrogateescape: a file name the file system's encoding could not decode keeps its bytes.
  return hashlib.sha256(f'{cls}/{fname}'.encode('utf-8', 'surrogateescape')).hexdigest()


# What systems write into folders of their own accord: macOS' zip forks, Windows' thumbnail
# caches and bins, a Synology NAS's thumbnails (`@eaDir/`, in every folder) and recycle bin, a
# file system's recovered files. A NAS's `@eaDir/` inside `train/` would be a class of
# thumbnails, and inside a class folder, smaller copies of its images.
_SYSTEM_NAMES = ('__macosx', 'thumbs.db', 'ehthumbs.db', 'desktop.ini', '$recycle.bin',
                 'system volume information', '@eadir', '#recycle', '#snapshot', 'lost+found')


def visible(name: str) -> bool:
  """Hidden files (.DS_Store, ._resource forks) and the system's own (`_SYSTEM_NAMES`) are no
  one's images and not worth a warning."""
  return not name.startswith('.') and name.lower() not in _SYSTEM_NAMES


SPLIT_NAMES = frozenset({'train', 'test', 'val', 'validation'})


def _holds_a_tree(folders: set[str]) -> bool:
  """Whether a folder whose sub-folders with files are `folders` holds a tree: a train/
  split, or two or more class folders (Keras' layout)."""
  return 'train' in folders or len(folders - SPLIT_NAMES) >= 2


class Listing(dict):
  """Each split's files (`dict[str, list[TreeFile]]`); `keras_layout`: the tree had no split
  folders, and its class folders are the train split."""
  keras_layout = False


def _as_keras_layout(tree: dict[str, list[TreeFile]], loose: dict[str, list[TreeFile]]
                     ) -> Listing | None:
  """Keras' `<class>/<file>` layout, read as split `train`, where the top folders are no
  splits: none is named as one, and two or more hold images directly. Sub-folders of a
  class folder stay part of it."""
  tops = set(tree) | set(loose)
  if tops & SPLIT_NAMES or len(loose) < 2:
    return None
  train = [dataclasses.replace(f, cls=top) for top, files in loose.items() for f in files]
  train += [dataclasses.replace(f, cls=top, name=f'{f.cls}/{f.name}')
            for top, files in tree.items() for f in files]
  listing = Listing(train=train)
  listing.keras_layout = True
  return listing


def _listing(tree: dict[str, list[TreeFile]], loose: dict[str, list[TreeFile]], root: str
             ) -> Listing:
  """The listing of a tree read as `<split>/<class>/<file>` (or in Keras' layout), in example
  order; files outside any class folder are warned about."""
  listing = _as_keras_layout(tree, loose)
  if listing is None:
    _warn_loose({split: [f.name for f in files] for split, files in loose.items()}, root)
    listing = Listing(tree)
  for split, files in listing.items():
    files = [dataclasses.replace(f, cls=readable_name(f.cls)) for f in files]
    listing[split] = sorted(files, key=lambda f: example_order_key(f.cls, f.name))
  return listing


def readable_name(name: str) -> str:
  """`name` as text that every file and console takes. A name that the file system's encoding
  could not decode (a folder from a Latin-1 system: 'caf\\xe9') holds surrogates in Python,
  which end any UTF-8 writer (a report, dataset.json); it keeps its undecoded bytes as
  `\\xNN` escapes instead."""
  try:
    name.encode('utf-8')
    return name
  except UnicodeEncodeError:
    return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')


def _warn_loose(loose: dict[str, list[str]], root: str) -> None:
  """One warning per split for files lying in it outside any class folder (a class is a
  folder: such a file has no label)."""
  for split, names in sorted(loose.items()):
    label_file_name = _LABEL_FILES[0].format(split=split)
    listed = (f', or list their classes in {os.path.join(root, label_file_name)}'
              if os.path.isdir(root) else ' (or unpack the archive and list their classes in '
              f'{label_file_name} beside {split}/)')
    logging.warning('Left out %d file(s) lying directly in %s/ of %s, outside any class folder: '
                    '%s. Put each in %s/<class>/ to use it%s.', len(names), split, root,
                    first_few(names, ', '), split, listed)


# Files that give the classes of the images lying directly in a split's folder (Kaggle's
# layout: `train/1.png`, ... and `trainLabels.csv` beside `train/`), by split, compared
# without case. Each row names an image (its file name, with or without the extension) and
# its class; a first row of column names is skipped, and where it names a label column
# (`_LABEL_COLUMNS`), that column holds the classes (else the second), the first other one
# the images.
_LABEL_FILES = ('{split}Labels.csv', '{split}_labels.csv', '{split}.csv')
_LABEL_COLUMNS = ('label', 'labels', 'class', 'category', 'target')
_IMAGE_COLUMNS = ('id', 'image', 'image_id', 'file', 'filename', 'file_name', 'name', 'path')


def label_file(root: str, split: str) -> str | None:
  """The CSV file in directory `root` that lists the classes of `split`'s loose images."""
  wanted = [name.format(split=split).lower() for name in _LABEL_FILES]
  found = {name.lower(): name for name in folder_names(root)
           if os.path.isfile(os.path.join(root, name))}
  return next((os.path.join(root, found[name]) for name in wanted if name in found), None)


def csv_delimiter(first_line: str) -> str:
  """The delimiter of a CSV file from its first line: commas, or the semicolons or tabs that
  Excel writes where ',' is the decimal mark."""
  return next((d for d in ',;\t' if d in first_line), ',')


def read_label_file(path: str) -> dict[str, str]:
  """Image file name -> class, from a CSV label file (see `_LABEL_FILES`)."""
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      delimiter = csv_delimiter(f.readline())
      f.seek(0)
      rows = [[cell.strip() for cell in row] for row in csv.reader(f, delimiter=delimiter)
              if any(row)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LocalDataError(f'{path} cannot be read as a CSV file of image names and classes '
                         f'({type(e).__name__}: {e}).') from e
  if not rows or len(rows[0]) < 2:
    raise LocalDataError(f'{path} is not a CSV file of image names and classes: it needs two '
                         'columns or more (e.g. id,label), one row per image.')
  header = [cell.lower() for cell in rows[0]]
  label = next((i for i, cell in enumerate(header) if cell in _LABEL_COLUMNS), 1)
  image = next(i for i in range(len(header)) if i != label)
  if set(header) & set(_LABEL_COLUMNS + _IMAGE_COLUMNS):
    rows = rows[1:]
  classes: dict[str, str] = {}
  for row in rows:
    if len(row) > max(image, label) and row[label]:
      # An image named by its path (`train/1.png`, `images\1.png`) is the file of that name.
      name = row[image].replace('\\', '/').rsplit('/', 1)[-1]
      if classes.setdefault(name, row[label]) != row[label]:
        raise LocalDataError(f'{path} lists {name} twice, as {classes[name]} and as '
                             f'{row[label]}: keep the row of its true class.')
  return classes


def _labelled_from_file(files: list[TreeFile], path: str, split: str, root: str
                        ) -> list[TreeFile]:
  """`files`, lying directly in `split`/, with their classes from the label file at `path`;
  those it does not list are left out with one warning."""
  classes = read_label_file(path)
  labelled, unlisted, found = [], [], set()
  for file in files:
    name = next((n for n in (file.name, os.path.splitext(file.name)[0]) if n in classes), None)
    if name is None:
      unlisted.append(file.name)
    else:
      found.add(name)
      labelled.append(dataclasses.replace(file, cls=classes[name]))
  if unlisted:
    logging.warning('Left out %d file(s) of %s/ in %s that %s does not list with a class: %s.',
                    len(unlisted), split, root, os.path.basename(path),
                    first_few(unlisted, ', '))
  missing = [name for name in classes if name not in found]
  if missing:  # A name written otherwise than the file's (`1.jpg` for 1.png) shows here.
    logging.warning('%s lists %d image(s) that %s/ in %s does not hold: %s.',
                    os.path.basename(path), len(missing), split, root, first_few(missing, ', '))
  return labelled


def files_under(directory: str) -> list[str]:
  """The visible files under `directory`, at any depth, as '/'-joined relative names.
  Linked sub-folders are not followed (a link back up would never end)."""
  names = []
  for parent, folders, files in os.walk(directory, onerror=_raise_unreadable):
    folders[:] = sorted(filter(visible, folders))
    relative = os.path.relpath(parent, directory)
    for name in sorted(filter(visible, files)):
      path = os.path.join(parent, name)  # A dangling link is kept: it is skipped, and said.
      if os.path.isfile(path) or os.path.islink(path) and not os.path.isdir(path):
        names.append(name if relative == '.' else f'{relative.replace(os.sep, "/")}/{name}')
  return names


def _directory_files(root: str) -> Listing:
  tree: dict[str, list[TreeFile]] = {}
  loose: dict[str, list[TreeFile]] = {}
  empty: list[str] = []
  for split in sorted(filter(visible, folder_names(root))):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for cls in sorted(filter(visible, folder_names(split_dir))):
      cls_dir = os.path.join(split_dir, cls)
      if os.path.isfile(cls_dir):
        loose.setdefault(split, []).append(TreeFile('', cls, path=cls_dir,
                                                    where=f'{split}/{cls}'))
      elif os.path.isdir(cls_dir):
        files = [TreeFile(cls, name, path=os.path.join(cls_dir, name),
                          where=f'{split}/{cls}/{name}') for name in files_under(cls_dir)]
        tree.setdefault(split, []).extend(files)
        if not files:
          empty.append(f'{split}/{cls}')
  if empty:  # Keras would make each a class that no example has.
    logging.warning('Left out empty class folder(s) %s in %s: a class is a folder with images.',
                    ', '.join(empty), root)
  for split in sorted(loose):
    if path := label_file(root, split):
      tree.setdefault(split, []).extend(_labelled_from_file(loose.pop(split), path, split, root))
  return _listing(tree, loose, root)


def _is_tar_header(block: bytes) -> bool:
  return block[257:262] == b'ustar' or (len(block) == 512 and not block.strip(b'\0'))


# A tar archive's compressions, by their magic number: how to open each.
_COMPRESSIONS = {b'\x1f\x8b': ('gzip', gzip.open), b'BZh': ('bzip2', bz2.open),
                 b'\xfd7zXZ\x00': ('xz', lzma.open)}


def _compression(head: bytes) -> tuple[str, Callable[..., IO[bytes]]] | None:
  return next((found for magic, found in _COMPRESSIONS.items() if head.startswith(magic)), None)


def _archive_kind(root: str) -> str:
  """'gzip', 'bzip2', 'xz' (a compressed tar), 'zip' or 'tar', from the file's first bytes
  (a compressed file's, once decompressed); an error naming what the file is instead (one
  IDX file, say) for anything else."""
  with open(root, 'rb') as f:
    head = f.read(512)
  compression = _compression(head)
  kind = compression[0] if compression else None
  if compression:
    try:
      with compression[1](root, 'rb') as f:
        head = f.read(512)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):  # Damaged: reading it says how.
      return kind
  if head[:3] == b'\0\0\x08':  # An IDX file's magic number: unsigned bytes.
    raise LocalDataError(f'{root} is one IDX file: config.local_data_dir takes the folder that '
                         'holds the four (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,'
                         ' t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz).')
  if kind is None and head[:4] in (b'PK\x03\x04', b'PK\x05\x06'):  # Members; none.
    return 'zip'
  if _is_tar_header(head):
    return kind or 'tar'
  if not kind:
    _refuse_one_dataset_file(root)
  raise LocalDataError(
      f'{root} is ' + (f'{kind}-compressed but holds no tar archive' if kind else
                       'neither a directory nor a .tar.gz, .tar.bz2, .tar.xz, .tar or .zip '
                       'archive')
      + ' (of train/<class>/<image> files): point config.local_data_dir at one.')


def _refuse_one_dataset_file(root: str) -> None:
  """An error naming what `root` is, where it is one file of a dataset (a CSV file, a
  CIFAR batch, an image) that config.local_data_dir took in place of the folder of them."""
  name = os.path.basename(root)
  if name.lower().endswith('.csv'):
    raise LocalDataError(f'{root} is one CSV file: config.local_data_dir takes the folder that '
                         'holds the train and the test CSV files (fashion-mnist_train.csv and '
                         'fashion-mnist_test.csv).')
  if re.fullmatch(r'(data_batch_\d|test_batch|batches\.meta)(\.bin|\.txt)?', name):
    raise LocalDataError(f'{root} is one CIFAR batch file: config.local_data_dir takes the '
                         'folder that holds them all (cifar-10-batches-py/ or '
                         'cifar-10-batches-bin/), or the .tar.gz they came in.')
  if not images_lib.header_problem(root):
    raise LocalDataError(f'{root} is one image: config.local_data_dir takes the folder of the '
                         'tree (train/<class>/<image> and test/<class>/<image>), or an archive '
                         'of it.')


def _add_member(tree: dict[str, list[TreeFile]], loose: dict[str, list[TreeFile]],
                parts: list[str], payload: bytes) -> None:
  """Files `<split>/<class>/<file>` (or deeper in the class) go in `tree`;
  `<split>/<file>` ones in `loose`."""
  where = '/'.join(parts)
  if len(parts) >= 3:
    tree.setdefault(parts[0], []).append(TreeFile(parts[1], '/'.join(parts[2:]), payload=payload,
                                                  where=where))
  elif len(parts) == 2:
    loose.setdefault(parts[0], []).append(TreeFile('', parts[1], payload=payload, where=where))


def _tar_members(root: str, kind: str) -> Iterator[tuple[str, bytes]]:
  """(name, content) of each file of a tar, compressed (`kind` 'gzip', 'bzip2', 'xz') or not
  ('tar'). One sequential pass (seeking in a compressed stream decompresses it again each
  time), read to the very end of the file: tarfile's stream mode takes a short read for the
  end of the archive, so a cut-off file would otherwise yield part of a split without a
  word. The compressed stream's own end marker, or a plain tar's closing zero blocks, say
  the file is whole."""
  open_compressed = next((opener for name, opener in _COMPRESSIONS.values() if name == kind),
                         None)
  if open_compressed is None:
    with open(root, 'rb') as raw:
      raw.seek(0, os.SEEK_END)
      end = raw.tell()
      raw.seek(max(end - 1024, 0))
      if end % 512 or raw.read(1024).strip(b'\0'):
        raise tarfile.ReadError('the archive does not end with its closing zero blocks')
  files: dict[str, bytes] = {}
  links: dict[str, str] = {}
  with (open_compressed or open)(root, 'rb') as stream:
    with tarfile.open(fileobj=stream, mode='r|') as tar:
      for member in tar:
        if member.isfile():
          payload = files[posixpath.normpath(member.name)] = tar.extractfile(member).read()
          yield member.name, payload
        elif member.issym() or member.islnk():
          links[member.name] = _link_target(member.name, member.linkname, member.islnk())
    while stream.read(1 << 20):  # To the end: a cut-off gzip stream fails here.
      pass
  yield from _linked_files(links, files, root)


def _link_target(name: str, linkname: str, hard: bool = False) -> str:
  """The archive name that link `name` to `linkname` leads to ('' for one leading out of
  the archive)."""
  if hard:  # A hard link names its target from the archive's top.
    return posixpath.normpath(linkname)
  if linkname.startswith('/'):
    return ''
  target = posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))
  return '' if target.startswith('../') or target == '..' else target


def _linked_files(links: dict[str, str], files: dict[str, bytes], root: str
                  ) -> Iterator[tuple[str, bytes]]:
  """(name, content) of each link of an archive that leads to a file in it (`tar`, and `zip
  -y`, keep a tree's links as links); one warning names those that lead elsewhere, which
  are left out."""
  normalised = {posixpath.normpath(name): target for name, target in links.items()}
  outside = []
  for name, target in links.items():
    for _ in range(40):  # A link to a link; a cycle ends as a link to nowhere.
      if target not in normalised:
        break
      target = normalised[target]
    if target in files:
      yield name, files[target]
    else:
      outside.append(name)
  if outside:
    logging.warning('Left out %d link(s) in %s that lead to no file inside it: %s. Pack the '
                    'files themselves to use them (tar -h follows links, as zip does without -y).',
                    len(outside), root, first_few(outside, ', '))


# Compression methods Python's zipfile reads (stored, deflate, bzip2, LZMA), and the names of
# others a user's zip tool may have chosen.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_OTHER_ZIP_METHODS = {9: 'Deflate64, which Windows chooses for large zips', 93: 'Zstandard',
                      95: 'XZ', 98: 'PPMd', 99: 'AES encryption'}


def _zip_members(root: str) -> Iterator[tuple[str, bytes]]:
  """(name, content) of each file. A zip's directory is at its end, so a cut-off zip does
  not open; each member's CRC is checked as it is read. A password or a compression method
  Python cannot read is named before any member is read."""
  unzip = ('unzip it (Windows Explorer, 7-Zip, unzip) and point config.local_data_dir at the '
           'folder')
  with zipfile.ZipFile(root) as archive:
    members = [m for m in archive.infolist() if not _zip_name(m).endswith('/')]  # No folders.
    for member in members:
      if member.flag_bits & 0x1:
        raise LocalDataError(f'{root} is password-protected ({_zip_name(member)} is encrypted): '
                             f'{unzip}.')
      if member.compress_type not in _ZIP_METHODS:
        method = _OTHER_ZIP_METHODS.get(member.compress_type, 'unknown to Python')
        raise LocalDataError(f'{root} is compressed with method {member.compress_type} '
                             f'({method}), which Python cannot read: {unzip}, or zip it again '
                             'with the usual Deflate.')
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for member in members:
      name = _zip_name(member)
      if member.create_system == 3 and stat.S_ISLNK(member.external_attr >> 16):
        # Info-ZIP's `zip -y` keeps a link as a link: its content is the path it leads to.
        links[name] = _link_target(name, archive.read(member).decode('utf-8', 'replace'))
        continue
      payload = files[posixpath.normpath(name)] = archive.read(member)
      yield name, payload
  yield from _linked_files(links, files, root)


def _zip_name(member: zipfile.ZipInfo) -> str:
  """A member's name as its maker wrote it, with '/' between folders.

  Python reads a name without the zip's UTF-8 flag as cp437, but common tools
  (Info-ZIP's zip, macOS' Archive Utility) write UTF-8 names without the flag:
  `été/` would become `├⌐t├⌐/`, a class nobody named. Such a name is read as
  UTF-8 where its bytes are valid UTF-8, as cp437 where they are not. Some
  Windows tools (.NET Framework's, so older PowerShell `Compress-Archive`)
  separate folders with '\\', which the zip format does not allow in names.
  """
  name = member.filename
  if not member.flag_bits & 0x800:
    try:
      name = name.encode('cp437').decode('utf-8')
    except UnicodeError:
      pass
  return name.replace('\\', '/')


def _without_wrapper(members: list[tuple[list[str], bytes]]) -> list[tuple[list[str], bytes]]:
  """Members without the one folder an archive may wrap the tree in (`cifar10/train/...`,
  `flower_photos/daisy/...`, as archives made of a folder are): stripped when every member
  lies in one folder that is no split itself and holds `train/` (the split every tree has)
  or two or more folders with files (Keras' layout)."""
  tops = {parts[0] for parts, _ in members}
  if len(tops) == 1 and not tops & SPLIT_NAMES and _holds_a_tree(
      {parts[1] for parts, _ in members if len(parts) >= 3}):
    return [(parts[1:], payload) for parts, payload in members]
  return members


def archive_members(root: str) -> Iterator[tuple[str, bytes]]:
  """(name, content) of each file of the .tar.gz/.bz2/.xz, .tar or .zip at `root`, in the
  archive's order. Damage is a `LocalDataError` where it is met: read to the end, a cut-off
  archive always fails."""
  kind = _archive_kind(root)
  try:
    yield from _zip_members(root) if kind == 'zip' else _tar_members(root, kind)
  except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
          lzma.LZMAError) as e:
    raise LocalDataError(f'{root} is truncated or corrupt ({type(e).__name__}: {e}): it would '
                         'give only part of the dataset. Copy or download it again.') from e


def visible_members(root: str) -> Iterator[tuple[str, bytes]]:
  """`archive_members`, named without the `./` that `tar -C DIR .` writes before each, and
  without the files that are hidden or the system's, or lie in such a folder (`__MACOSX/`)."""
  for name, payload in archive_members(root):
    name = re.sub(r'^(\./|/)+', '', name)
    if all(map(visible, name.split('/'))):
      yield name, payload


@functools.lru_cache(maxsize=2)
def _archive_files(root: str, mtime_ns: int, size: int) -> Listing:
  """Every file of a tar (compressed or not) or zip of a tree, keyed by split (cached per file
  version). All of it is read: a damaged archive is an error, never part of a split."""
  del mtime_ns, size  # The cache key: a rewritten archive is read again.
  members = [(name.split('/'), payload) for name, payload in visible_members(root)]
  tree: dict[str, list[TreeFile]] = {}
  loose: dict[str, list[TreeFile]] = {}
  for parts, payload in _without_wrapper(members):
    _add_member(tree, loose, parts, payload)
  return _listing(tree, loose, root)


def list_tree(root: str) -> Listing:
  """Each split's files of the tree at `root` (directory or archive), in example order."""
  if os.path.isdir(root):
    return _directory_files(root)
  info = os.stat(root)
  return _archive_files(root, info.st_mtime_ns, info.st_size)


# How datasets spell the split folders besides train/, test/ and val/ (compared without case):
# Kaggle's often come as Train/ and Test/, or Training/ and Testing/.
_SPLIT_SPELLINGS = {'train': ('train', 'training'), 'test': ('test', 'testing'),
                    'val': ('val', 'valid', 'validation'),
                    'validation': ('validation', 'val', 'valid')}


def _split_folder(tree: dict[str, list[TreeFile]], split: str) -> str:
  """The folder of `tree` that holds split `split`: its own name, else the one folder that
  spells it otherwise (Train/, TRAINING/, valid/ for val)."""
  if split in tree:
    return split
  spellings = _SPLIT_SPELLINGS.get(split.lower(), (split.lower(),))
  found = [name for name in tree if name.lower() in spellings]
  return found[0] if len(found) == 1 else split


def split_files(tree: dict[str, list[TreeFile]], root: str, split: str) -> list[TreeFile]:
  """Split `split`'s files in a listing of the tree at `root` (`list_tree`)."""
  files = tree.get(_split_folder(tree, split))
  if not files and getattr(tree, 'keras_layout', False):
    raise KerasLayoutSplitError(
        f'{root} holds class folders with no split folders (Keras\' <class>/<image> layout), '
        f'read as the train split: there is no {split}/ split',
        ". Take it from part of train, e.g. --config.train_split='train[:80%]' "
        "--config.val_split='train[80%:90%]' --config.test_split='train[90%:]'; or put the "
        'folders in train/ beside test/<class>/ ones.')
  if not files:
    has = f' (it has {", ".join(f"{name}/" for name in sorted(tree))})' if tree else ''
    wrappers = [name for name in sorted(tree) if os.path.isdir(os.path.join(root, name, split))
                or (os.path.isdir(root) and len(tree) == 1 and name not in SPLIT_NAMES
                    and _holds_a_tree({f.cls for f in tree[name]}))]
    if wrappers:  # A directory holding the tree one level down (archives are unwrapped).
      hint = (f': the tree seems to be in {os.path.join(root, wrappers[0])}; point '
              'config.local_data_dir at it')
    elif split == 'train' or 'train' not in tree:
      hint = ''
    else:
      hint = (f': add {split}/<class>/ folders, or take the split from part of train (e.g. '
              f"'train[90%:]', with the train split ending at 'train[:90%]')")
    raise LocalDataError(f'No {split}/<class>/<image> files in {root}{has}{hint}.')
  return files


def class_names(tree: dict[str, list[TreeFile]], root: str, split: str = 'train'
                ) -> tuple[str, ...]:
  """The classes of a listing of the tree at `root` (`list_tree`): its `split`'s class
  folders, sorted (label i = the i-th)."""
  names = tuple(sorted({f.cls for f in split_files(tree, root, split)}))
  if len(names) < 2:  # One softmax output: loss 0 and accuracy 1 whatever the images.
    raise LocalDataError(f'{split}/ in {root} has one class folder ({names[0]}); a classifier '
                         f'needs two or more: put each class\'s images in its own '
                         f'{split}/<class>/ folder.')
  return names


def _folded(name: str) -> str:
  """`name` as two names that look alike to a user compare: case, Unicode form and spaces
  at the ends ignored."""
  return unicodedata.normalize('NFC', name).casefold().strip()


def class_meant(folder: str, class_names_: Sequence[str]) -> str | None:
  """The class of `class_names_` a folder named `folder` stands for, or is a misspelling of
  ('airplanes' for 'airplane'), or None."""
  if folder in class_names_:
    return folder
  by_folded = {_folded(name): name for name in class_names_}
  close = difflib.get_close_matches(_folded(folder), list(by_folded), n=1, cutoff=0.8)
  return by_folded[close[0]] if close else None


def _check_classes(files: Sequence[TreeFile], split: str, root: str,
                   class_names_: Sequence[str]) -> None:
  known = set(class_names_)
  for f in files:
    if f.cls not in known:
      twin = next((name for name in class_names_ if _folded(name) == _folded(f.cls)), None)
      meant = class_meant(f.cls, class_names_)
      hint = (f' ({", ".join(class_names_)}): '
              + (f'did you mean {meant}? Rename it' if meant else 'rename it to one of them')
              + f', or move it out of {split}/')
      if twin is not None:
        shown = twin
        if twin.strip() == f.cls.strip():
          how, shown = 'spaces at its ends alone', repr(twin)  # Quoted: the spaces show.
        elif twin.casefold() == f.cls.casefold():
          how = 'case alone'
        else:
          how = ("Unicode form alone (macOS writes 'é' as 'e' and an accent, other systems as "
                 'one character)')
        hint = f': it differs from class {shown} in {how}; rename one of the two folders'
      raise LocalDataError(f'Folder {split}/{f.cls} in {root} is not a class of this dataset'
                           f'{hint}.')


def _report(skipped: list[tuple[TreeFile, str]], split: str, root: str,
            kept: Sequence[TreeFile], class_names_: Sequence[str], how: str) -> None:
  """One warning for the skipped files; an error for a class left with none; a warning for a
  class that has no folder at all."""
  if skipped:
    logging.warning('Skipped %d file(s) of split %s in %s that %s: %s.', len(skipped), split,
                    root, how, first_few([f'{f.where} ({why})' for f, why in skipped]))
  if not kept:
    raise LocalDataError(f'No readable image in split {split} of {root}.')
  present = {f.cls for f in kept}
  emptied = sorted({f.cls for f, _ in skipped} - present)
  if emptied:  # Named as classes: a folder may be a label number, or the class a label file's.
    raise LocalDataError(f'No readable image of class(es) {", ".join(emptied)} in split {split} '
                         f'of {root}: each was skipped (above). Add readable images of it, or '
                         'remove the class (its folder, or its rows of the label file).')
  missing = [name for name in class_names_ if name not in present]
  if missing:
    logging.warning('Split %s of %s has no images of class(es) %s: their rows of the confusion '
                    'matrix will be empty, and the report lists them only where they are '
                    'predicted.', split, root, ', '.join(missing))


def read_split(files: Sequence[TreeFile], root: str, split: str, class_names_: Sequence[str],
               image_shape: tuple[int, int, int], resize: bool
               ) -> tuple[np.ndarray, np.ndarray, list[TreeFile]]:
  """Decodes `files`, split `split` of the tree at `root`: uint8 images, int32 labels and
  the files kept.

  Files that are not images Pillow can decode are skipped (one warning);
  an image of another size is resized (`resize`) or an error.
  """
  _check_classes(files, split, root, class_names_)
  index = {name: i for i, name in enumerate(class_names_)}
  images, labels, kept, skipped = [], [], [], []
  for f in files:
    try:
      images.append(images_lib.decode(f.read(), image_shape, resize))
    except images_lib.ImageSizeError as e:
      raise LocalDataError(f'{f.where} in {root} {e}.') from e
    except images_lib.ImageInputError as e:
      skipped.append((f, e.reason))
      continue
    labels.append(index[f.cls])
    kept.append(f)
  _report(skipped, split, root, kept, class_names_, 'are not readable images')
  return np.stack(images), np.asarray(labels, np.int32), kept


def stream_split(files: Sequence[TreeFile], root: str, split: str, class_names_: Sequence[str]
                 ) -> tuple[list[TreeFile], np.ndarray]:
  """Those of `files` (split `split`) whose header is an image's, and their labels, to
  decode later.

  A file that passes this check but fails to decode is met while training,
  where another example stands in for it (see `examples.StreamedSplit`).
  """
  _check_classes(files, split, root, class_names_)
  problems = [images_lib.header_problem(f.payload if f.payload is not None else f.path)
              for f in files]
  kept = [f for f, problem in zip(files, problems) if not problem]
  skipped = [(f, problem) for f, problem in zip(files, problems) if problem]
  _report(skipped, split, root, kept, class_names_, 'are not images')
  index = {name: i for i, name in enumerate(class_names_)}
  return kept, np.asarray([index[f.cls] for f in kept], np.int32)


def files_fingerprint(files: Sequence[TreeFile], labels: np.ndarray) -> str:
  """A tree's examples, identified by path and label in order, whether they are decoded
  into memory or streamed (reading every byte again on each start would cost as much as an
  epoch for a large tree). Not by size: a file a streamed run could not decode, fixed in
  place (a truncated image replaced by a whole one), is the same example, and the run resumes.
  Fingerprints of this kind are 'names:'; a run saved with the earlier 'files:' kind, which
  counted sizes, resumes unchecked (`examples.same_examples`)."""
  digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
  for f in files:
    digest.update(f'{f.cls}/{f.name}\n'.encode('utf-8', 'surrogateescape'))
  return f'names:{len(files)}:{digest.hexdigest()[:16]}'


def decoder(files: Sequence[TreeFile], root: str, image_shape: tuple[int, int, int],
            resize: bool) -> Callable[[int], np.ndarray]:
  """Decodes example i of `files`. A file that cannot be decoded is `UnreadableExample`,
  named where it lies (the streamed split stands another example in for it); an image of
  another size where none may be resized stops the run, as it does held in memory."""
  def decode(i: int) -> np.ndarray:
    f = files[i]
    try:
      return images_lib.decode(f.read(), image_shape, resize)
    except images_lib.ImageSizeError as e:
      raise LocalDataError(f'{f.where} in {root} {e}.') from e
    except (images_lib.ImageInputError, OSError) as e:
      raise UnreadableExample(f'{f.where} in {root} {e}') from e
  return decode
