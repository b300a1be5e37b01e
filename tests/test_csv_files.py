"""MNIST / Fashion-MNIST as Kaggle's CSV files: the same arrays as the IDX files."""
import numpy as np
import pytest

from cnnjax.data import csv_files
from cnnjax.data.image_tree import LocalDataError
from tests.helpers import load_dataset, make_idx_dataset


def write_csv(path, images, labels, header=True, delimiter=',', encoding='utf-8'):
  rows = np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1)
  with open(path, 'w', encoding=encoding) as f:
    if header:
      f.write(f'label{delimiter}'
              + delimiter.join(f'pixel{i + 1}' for i in range(rows.shape[1] - 1)) + '\n')
    np.savetxt(f, rows, fmt='%d', delimiter=delimiter)


def test_kaggle_csv_files_give_the_idx_files_arrays(tmp_path):
  for kind in ('idx', 'csv'):
    (tmp_path / kind).mkdir()
  arrays = make_idx_dataset(str(tmp_path / 'idx'), num_train=30, num_test=10)
  write_csv(tmp_path / 'csv' / 'fashion-mnist_train.csv', *arrays['train'])
  write_csv(tmp_path / 'csv' / 'fashion-mnist_test.csv', *arrays['t10k'], header=False)
  from_idx, from_csv = (
      load_dataset('fashion_mnist', 'train[:80%]', 'train[80%:]', 'test',
                   local_data_dir=str(tmp_path / kind)) for kind in ('idx', 'csv'))
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(getattr(from_csv, split).images, getattr(from_idx, split).images)
    np.testing.assert_array_equal(getattr(from_csv, split).labels, getattr(from_idx, split).labels)
  assert from_csv.source == f'local:{tmp_path}/csv'


@pytest.mark.parametrize('delimiter, encoding', [(',', 'utf-8-sig'), (';', 'utf-8'),
                                                 ('\t', 'utf-8-sig'), ('\t', 'utf-16')])
@pytest.mark.parametrize('header', [False, True])
def test_csv_files_as_excel_saves_them(delimiter, encoding, header, tmp_path):
  """A byte-order mark ('CSV UTF-8'), UTF-16 ('Unicode Text'), semicolons (where ',' is the decimal mark) or tabs: every
  row read. The mark before a first row of numbers once made it look like a header, dropped."""
  arrays = make_idx_dataset(str(tmp_path), num_train=30, num_test=10)
  for split, name in (('train', 'train'), ('t10k', 'test')):
    write_csv(tmp_path / f'fashion-mnist_{name}.csv', *arrays[split], header, delimiter,
              encoding)
    images, labels = csv_files.read_csv_split(str(tmp_path), name)
    np.testing.assert_array_equal(images[..., 0], arrays[split][0])
    np.testing.assert_array_equal(labels, arrays[split][1])


def test_csv_files_that_do_not_fit_are_named(tmp_path):
  images = np.zeros((4, 28, 28), np.uint8)
  labels = np.arange(4)
  write_csv(tmp_path / 'train.csv', images, labels)
  write_csv(tmp_path / 'test.csv', images[:, :27, :], labels)  # 756 pixels: not a square.
  with pytest.raises(LocalDataError, match='test.csv has 4 rows of a label and 756 pixel values'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  with open(tmp_path / 'test.csv', 'a') as f:
    f.write('3,1,2\n')  # A short row.
  with pytest.raises(LocalDataError, match='test.csv is not a CSV of a label and pixel values'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  write_csv(tmp_path / 'test.csv', images, labels, delimiter=' ')  # Neither , nor ; nor tab.
  with pytest.raises(LocalDataError, match="not a CSV .*could not convert string '0 0 0 "
                     ".*separated by commas, semicolons or tabs"):
    csv_files.read_csv_split(str(tmp_path), 'test')
  write_csv(tmp_path / 'test.csv', images.astype(np.int64) + 300, labels)
  with pytest.raises(LocalDataError, match='pixel values outside 0..255 \\(300 to 300\\)'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  write_csv(tmp_path / 'old_train.csv', images, labels)
  with pytest.raises(LocalDataError, match="holds 2 .csv file\\(s\\) with 'train' in the name"):
    csv_files.read_csv_split(str(tmp_path), 'train')
  assert not csv_files.is_csv_dir(str(tmp_path / 'nowhere')) and csv_files.is_csv_dir(str(tmp_path))
  (tmp_path / 'train').mkdir()  # An image tree with CSV files beside it is a tree.
  assert not csv_files.is_csv_dir(str(tmp_path))


def test_a_header_naming_the_label_column_elsewhere_is_followed(tmp_path):
  """Some exports put the label last (pixel1,...,pixel784,label): read by the header's name,
  not taken for pixels (which ended in 'labels are not classes 0..9')."""
  arrays = make_idx_dataset(str(tmp_path), num_train=30, num_test=10)
  images, labels = arrays['train']
  flat = images.reshape(len(images), -1)
  with open(tmp_path / 'train.csv', 'w') as f:
    f.write(','.join(f'pixel{i + 1}' for i in range(flat.shape[1])) + ',"Label"\n')
    np.savetxt(f, np.concatenate([flat, labels[:, None]], axis=1), fmt='%d', delimiter=',')
  read_images, read_labels = csv_files.read_csv_split(str(tmp_path), 'train')
  np.testing.assert_array_equal(read_images[..., 0], images)
  np.testing.assert_array_equal(read_labels, labels)


def test_an_empty_csv_or_one_of_fractions_is_named(tmp_path, recwarn):
  (tmp_path / 'test.csv').write_text('label,' + ','.join(f'pixel{i + 1}' for i in range(784)))
  with pytest.raises(LocalDataError, match=r'test.csv holds no rows of examples \(only its '
                     r'header\)\.$'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  assert not [w for w in recwarn if 'no data' in str(w.message)]  # numpy's warning not shown.
  (tmp_path / 'test.csv').write_text('')
  with pytest.raises(LocalDataError, match=r'test.csv holds no rows of examples \(it is empty\)'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  (tmp_path / 'test.csv').write_text('label,pixel1,pixel2\n3,0.5,0.25\n')
  with pytest.raises(LocalDataError, match="could not convert string '0.5' .*; its values must "
                     'be integers, pixels 0..255'):
    csv_files.read_csv_split(str(tmp_path), 'test')
