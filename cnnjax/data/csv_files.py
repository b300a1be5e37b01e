"""MNIST and Fashion-MNIST as CSV files, as Kaggle distributes them, read without TensorFlow.

A folder holding one `.csv` file with `train` in its name and one with `test`
(`fashion-mnist_train.csv`, `fashion-mnist_test.csv`; `mnist_train.csv`, ...).
Each row is one example: its label, then its pixels row by row (784 of them for
28x28 images). A header row of column names (`label,pixel1,...`) is skipped where
there is one; where it names a `label` column other than the first, that column holds
the labels. Rows keep the file's order. Excel's ways of saving a CSV are read too:
a UTF-8 byte-order mark, UTF-16 ('Unicode Text'), and semicolons or tabs between the values.
"""
import os
import warnings

import numpy as np

from cnnjax.data import splits
from cnnjax.data.image_tree import LocalDataError

SPLITS = ('train', 'test')


def _split_files(root: str) -> dict[str, list[str]]:
  names = sorted(name for name in os.listdir(root) if name.lower().endswith('.csv'))
  return {split: [name for name in names if split in name.lower()] for split in SPLITS}


def is_csv_dir(root: str) -> bool:
  """Whether `root` is a folder of a train and a test CSV file (not an image tree, which may
  have CSV files of its own beside its train/ folder)."""
  return (os.path.isdir(root) and not os.path.isdir(os.path.join(root, 'train'))
          and all(_split_files(root).values()))


def _csv_path(root: str, split: str) -> str:
  if split not in SPLITS:
    raise LocalDataError(splits.unknown_split_message('CSV datasets', split, SPLITS))
  found = _split_files(root)[split]
  if len(found) != 1:
    raise LocalDataError(
        f'{root} holds {len(found) or "no"} .csv file(s) with {split!r} in the name'
        + (f' ({", ".join(found)})' if found else '') + ': it needs exactly one per split '
        '(e.g. fashion-mnist_train.csv and fashion-mnist_test.csv).')
  return os.path.join(root, found[0])


def _encoding(path: str) -> str:
  """UTF-16 where the file starts with its byte-order mark; else UTF-8, with or without one."""
  with open(path, 'rb') as f:
    return 'utf-16' if f.read(2) in (b'\xff\xfe', b'\xfe\xff') else 'utf-8-sig'


def read_csv_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Split `split` as uint8 (N, side, side, 1) images and int32 labels."""
  path = _csv_path(root, split)
  try:
    encoding = _encoding(path)
    with open(path, encoding=encoding) as f:
      first = f.readline()
    delimiter = next((d for d in ',;\t' if d in first), ',')
    names = [name.strip().strip('"').lower() for name in first.split(delimiter)]
    header = 0 if names[0].lstrip('-').isdigit() else 1
    label_column = names.index('label') if header and 'label' in names else 0
    with warnings.catch_warnings():  # numpy's 'input contained no data': said below.
      warnings.simplefilter('ignore', UserWarning)
      rows = np.loadtxt(path, delimiter=delimiter, dtype=np.int64, skiprows=header, ndmin=2,
                        encoding=encoding)
  except (OSError, ValueError, UnicodeError) as e:
    reason = f'{type(e).__name__}: {e}'
    if 'could not convert string' in str(e):  # Pixels in [0, 1], an empty cell, spaces.
      reason = (f'{str(e).rstrip(".")}; its values must be integers, pixels 0..255, separated by '
                'commas, semicolons or tabs')
    raise LocalDataError(f'{path} is not a CSV of a label and pixel values per row '
                         f'({reason}).') from e
  if not len(rows):
    raise LocalDataError(f'{path} holds no rows of examples '
                         + ('(only its header).' if first.strip() else '(it is empty).'))
  pixels = rows.shape[1] - 1
  side = int(round(pixels ** 0.5))
  if side * side != pixels:
    raise LocalDataError(f'{path} has {len(rows)} rows of a label and {pixels} pixel values; '
                         'a square grey image per row was expected (784 values for 28x28).')
  labels = rows[:, label_column]
  # Kaggle's label-first rows as a view: a copy of them all would add 8 bytes per value.
  images = rows[:, 1:] if label_column == 0 else np.delete(rows, label_column, axis=1)
  if images.min() < 0 or images.max() > 255:
    raise LocalDataError(f'{path} holds pixel values outside 0..255 ({images.min()} to '
                         f'{images.max()}).')
  return images.astype(np.uint8).reshape(-1, side, side, 1), labels.astype(np.int32)
