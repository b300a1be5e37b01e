"""MNIST and Fashion-MNIST as CSV files, as Kaggle distributes them, read without TensorFlow.

A folder holding one `.csv` file with `train` in its name and one with `test`
(`fashion-mnist_train.csv`, `fashion-mnist_test.csv`; `mnist_train.csv`, ...), or an
archive of such a folder (Kaggle's archive.zip: `dataset_files`).
Each row is one example: its label, then its pixels row by row (784 of them for
28x28 images). A header row of column names (`label,pixel1,...`) is skipped where
there is one; where it names a `label` column other than the first, that column holds
the labels. Rows keep the file's order. Excel's ways of saving a CSV are read too:
a UTF-8 byte-order mark, UTF-16 ('Unicode Text'), and semicolons or tabs between the values.
"""
import io
import re
import warnings

import numpy as np

from cnnjax.data import splits
from cnnjax.data.dataset_files import DatasetFiles
from cnnjax.data import image_tree
from cnnjax.data.image_tree import LocalDataError

SPLITS = ('train', 'test')


def _split_files(files: DatasetFiles) -> dict[str, list[str]]:
  names = [name for name in files.names() if name.lower().endswith('.csv')]
  return {split: [name for name in names if split in name.lower()] for split in SPLITS}


def holds_csv_files(files: DatasetFiles) -> bool:
  """Whether `files` are a train and a test CSV file (not an image tree, which may have CSV
  files of its own beside its train/ folder)."""
  return not files.is_folder('train') and all(_split_files(files).values())


def _csv_name(files: DatasetFiles, split: str) -> str:
  if split not in SPLITS:
    raise LocalDataError(splits.unknown_split_message('CSV datasets', split, SPLITS))
  found = _split_files(files)[split]
  if len(found) != 1:
    raise LocalDataError(
        f'{files.root} holds {len(found) or "no"} .csv file(s) with {split!r} in the name'
        + (f' ({", ".join(found)})' if found else '') + ': it needs exactly one per split '
        '(e.g. fashion-mnist_train.csv and fashion-mnist_test.csv).')
  return found[0]


def _text(files: DatasetFiles, name: str) -> io.TextIOWrapper:
  """The file's text: UTF-16 where it starts with its byte-order mark; else UTF-8, with or
  without one."""
  raw = files.open(name)
  encoding = 'utf-16' if raw.read(2) in (b'\xff\xfe', b'\xfe\xff') else 'utf-8-sig'
  raw.seek(0)
  return io.TextIOWrapper(raw, encoding=encoding)


def _with_file_lines(message: str, header: int) -> str:
  """numpy's loadtxt message with its row, counted after the header (from 0 for a value it
  cannot convert, from 1 for a row of another length), as the file's line number that an
  editor shows; numpy's advice on `usecols`, which a user cannot pass, left out."""
  def line(match: re.Match) -> str:
    first = 0 if 'could not convert' in message else 1
    return f'on line {int(match[1]) - first + 1 + header}'
  message = message.split('; use `usecols`')[0]
  return re.sub(r'at row (\d+)', line, message)


def read_csv_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Split `split` as uint8 (N, side, side, 1) images and int32 labels."""
  files = DatasetFiles(root)
  name = _csv_name(files, split)
  path = files.shown(name)
  try:
    with _text(files, name) as f:
      first = f.readline()
    delimiter = image_tree.csv_delimiter(first)
    columns = [column.strip().strip('"').lower() for column in first.split(delimiter)]
    header = 0 if columns[0].lstrip('-').isdigit() else 1
    label_column = columns.index('label') if header and 'label' in columns else 0
    with warnings.catch_warnings(), _text(files, name) as f:
      warnings.simplefilter('ignore', UserWarning)  # numpy's 'input contained no data': below.
      rows = np.loadtxt(f, delimiter=delimiter, dtype=np.int64, skiprows=header, ndmin=2)
  except (OSError, ValueError, UnicodeError) as e:
    message = _with_file_lines(str(e), header)
    reason = f'{type(e).__name__}: {message}'
    if 'could not convert string' in message:  # Pixels in [0, 1], an empty cell, spaces.
      reason = (f'{message.rstrip(".")}; its values must be integers, pixels 0..255, separated '
                'by commas, semicolons or tabs')
    raise LocalDataError(f'{path} is not a CSV of a label and pixel values per row '
                         f'({reason}).') from e
  if not len(rows):
    raise LocalDataError(f'{path} holds no rows of examples '
                         + ('(only its header).' if first.strip() else '(it is empty).'))
  pixels = rows.shape[1] - 1
  side = int(round(pixels ** 0.5))
  if side * side != pixels:
    fewer = int(round((pixels - 1) ** 0.5))
    extra = (f': {pixels - 1} would be a {fewer}x{fewer} image, so a column besides the '
             "label and the pixels is there, such as the row numbers pandas' to_csv writes "
             '(save with index=False, or delete that column)'
             if pixels > 1 and fewer * fewer == pixels - 1 else ' (784 values for 28x28)')
    raise LocalDataError(f'{path} has {len(rows)} rows of a label and {pixels} pixel values; '
                         f'a square grey image per row was expected{extra}.')
  labels = rows[:, label_column]
  # Kaggle's label-first rows as a view: a copy of them all would add 8 bytes per value.
  images = rows[:, 1:] if label_column == 0 else np.delete(rows, label_column, axis=1)
  if images.min() < 0 or images.max() > 255:
    first = int(np.argmax(((images < 0) | (images > 255)).any(axis=1))) + 1
    raise LocalDataError(f'{path} holds pixel values outside 0..255 ({images.min()} to '
                         f'{images.max()}; the first in example {first} of the file): pixels '
                         'are 8-bit grey levels, so rescale them to 0..255 (or check that the '
                         'label is the first column, or one named "label").')
  return images.astype(np.uint8).reshape(-1, side, side, 1), labels.astype(np.int32)
