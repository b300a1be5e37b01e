"""MNIST / Fashion-MNIST as Kaggle's CSV files: the same arrays as the IDX files."""
import numpy as np
import pytest

from cnnjax.data import csv_files
from cnnjax.data.dataset_files import DatasetFiles
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
  with open(tmp_path / 'test.csv', 'w') as f:  # pandas' to_csv writes its row numbers first.
    f.write(',label,' + ','.join(f'pixel{i + 1}' for i in range(784)) + '\n')
    f.writelines(f'{i},{i},' + ','.join(['0'] * 784) + '\n' for i in range(4))
  with pytest.raises(LocalDataError, match="and 785 pixel values; a square grey image per row "
                     "was expected: 784 would be a 28x28 image, so a column besides the label "
                     "and the pixels is there, such as the row numbers pandas' to_csv writes "
                     r'\(save with index=False'):
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
  with pytest.raises(LocalDataError, match=r'pixel values outside 0..255 \(300 to 300; the first '
                     r'in example 1 of the file\): pixels are 8-bit grey levels, so rescale'):
    csv_files.read_csv_split(str(tmp_path), 'test')
  write_csv(tmp_path / 'old_train.csv', images, labels)
  with pytest.raises(LocalDataError, match="holds 2 .csv file\\(s\\) with 'train' in the name"):
    csv_files.read_csv_split(str(tmp_path), 'train')
  assert csv_files.holds_csv_files(DatasetFiles(str(tmp_path)))
  (tmp_path / 'train').mkdir()  # An image tree with CSV files beside it is a tree.
  assert not csv_files.holds_csv_files(DatasetFiles(str(tmp_path)))


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


@pytest.mark.parametrize('header', [False, True])
def test_a_bad_row_is_named_by_its_line_in_the_file(header, tmp_path):
  """numpy counts rows after the header, from 0 or from 1 depending on the fault, and
  advises `usecols`, which no one here can pass: the message gives the editor's line."""
  top = 'label,pixel1,pixel2,pixel3,pixel4\n' if header else ''
  rows = ['1,0,0,0,0', '2,5,5,5,5', '3,7,7,7,7']
  for bad, message in (('4,7,7,x,7', "could not convert string 'x' to int64 on line {}, column "
                        '4; its values must be integers'),
                       ('4,7,7', 'the number of columns changed from 5 to 3 on line {}).')):
    (tmp_path / 'test.csv').write_text(top + '\n'.join([*rows, bad, '5,1,1,1,1']) + '\n')
    with pytest.raises(LocalDataError) as raised:
      csv_files.read_csv_split(str(tmp_path), 'test')
    assert message.format(4 + header) in str(raised.value) and 'usecols' not in str(raised.value)


def kaggle_archives(tmp_path, arrays):
  """{name: path} of archives of the same IDX/CSV files, laid out as users get them."""
  import gzip
  import shutil
  import tarfile
  import zipfile
  folder = tmp_path / 'fashion-mnist'
  folder.mkdir()
  for split, name in (('train', 'train'), ('t10k', 'test')):
    write_csv(folder / f'fashion-mnist_{name}.csv', *arrays[split])
  make_idx_dataset(str(folder), num_train=30, num_test=10)
  for path in folder.glob('*.gz'):  # Kaggle's are unpacked.
    path.with_suffix('').write_bytes(gzip.decompress(path.read_bytes()))
    path.unlink()
  made = {}

  def zipped(name, members):
    made[name] = tmp_path / name
    with zipfile.ZipFile(made[name], 'w', zipfile.ZIP_DEFLATED) as archive:
      for inner, path in members:
        archive.write(path, inner)
  files = sorted(folder.iterdir())
  # Kaggle's archive.zip: both CSVs, then the four IDX files, at the top.
  zipped('archive.zip', [(path.name, path) for path in files])
  zipped('csv_only.zip', [(path.name, path) for path in files if path.suffix == '.csv'])
  # Finder's Compress: the folder, with __MACOSX/ resource forks beside it.
  zipped('finder.zip', [(f'fashion-mnist/{path.name}', path) for path in files]
         + [(f'__MACOSX/fashion-mnist/._{path.name}', files[0]) for path in files])
  # A folder of the IDX files zipped with its LICENSE and README, which come first.
  notes = tmp_path / 'README.md'
  notes.write_text('Fashion-MNIST\n')
  zipped('readme_first.zip', [(f'fashion-mnist/{name}', notes) for name in ('LICENSE', 'README.md')]
         + [(f'fashion-mnist/{path.name}', path) for path in files if path.suffix != '.csv'])
  # Kaggle's MNIST archive: each IDX file in a folder of its own name.
  zipped('nested.zip', [(f'{path.name}/{path.name}', path) for path in files
                        if path.suffix != '.csv'])
  made['folder.tar.gz'] = tmp_path / 'folder.tar.gz'
  with tarfile.open(made['folder.tar.gz'], 'w:gz') as archive:
    archive.add(folder, arcname='.')  # `./fashion-mnist_train.csv`...
  shutil.rmtree(folder)
  return made


def test_an_archive_of_the_csv_or_idx_files_is_read_as_their_folder(tmp_path):
  """Kaggle ships Fashion-MNIST as one archive.zip of its CSV and IDX files: it was read as an
  image tree ('No train/<class>/<image> files')."""
  (tmp_path / 'idx').mkdir()
  arrays = make_idx_dataset(str(tmp_path / 'idx'), num_train=30, num_test=10)
  expected = load_dataset('fashion_mnist', 'train[:80%]', 'train[80%:]', 'test',
                          local_data_dir=str(tmp_path / 'idx'))
  for name, path in kaggle_archives(tmp_path, arrays).items():
    for in_memory in ('true', 'false'):
      read = load_dataset('fashion_mnist', 'train[:80%]', 'train[80%:]', 'test',
                          local_data_dir=str(path), data_in_memory=in_memory)
      for split in ('train', 'val', 'test'):
        assert getattr(read, split).fingerprint() == getattr(expected, split).fingerprint(), (
            name, in_memory, split)
