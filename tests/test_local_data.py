"""Local IDX and image-folder sources: exact arrays, split slicing, clear errors."""
import dataclasses
import gzip
import logging
import os
import pickle
import re
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from cnnjax.data import datasets
from cnnjax.data import examples
from cnnjax.data import image_tree
from tests.helpers import load_dataset, make_idx_dataset, write_idx


def test_idx_reads_back_exactly_what_was_written(tmp_path):
  arrays = make_idx_dataset(str(tmp_path), num_train=30, num_test=12)
  data = load_dataset('fashion_mnist', 'train[:80%]', 'train[80%:]', 'test',
                               local_data_dir=str(tmp_path))
  images, labels = arrays['train']
  np.testing.assert_array_equal(data.train.images, images[:24, ..., None])
  np.testing.assert_array_equal(data.val.labels, labels[24:])
  np.testing.assert_array_equal(data.test.images[..., 0], arrays['t10k'][0])
  assert data.train.images.dtype == np.uint8 and data.train.labels.dtype == np.int32
  assert data.class_names[0] == 'T-shirt/top' and data.num_classes == 10


def test_truncated_idx_file_is_named(tmp_path):
  make_idx_dataset(str(tmp_path))
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  payload = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(payload[:-100]))
  with pytest.raises(image_tree.LocalDataError, match='train-images-idx3-ubyte.gz is truncated'
                     '.*: copy or download it again'):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  path.write_bytes(gzip.compress(b'<html>' * 9))  # A download that saved an error page.
  with pytest.raises(image_tree.LocalDataError, match='is not an IDX file of 3-d unsigned bytes '
                     r'\(header 3c68746d\): copy or download it again'):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  path.write_bytes(gzip.compress(payload[:4] + (39).to_bytes(4, 'big') + payload[8:-784]))
  with pytest.raises(image_tree.LocalDataError, match='holds 39 images but .*holds 40 labels: '
                     "the two are one split's pair, so copy or download them again together"):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))


def test_an_empty_or_swapped_idx_file_says_so(tmp_path):
  """An empty file showed an empty header, and a labels file under the images' name the
  labels' header bytes, leaving the user to decode 00000801."""
  make_idx_dataset(str(tmp_path))
  images = tmp_path / 'train-images-idx3-ubyte.gz'
  labels = tmp_path / 'train-labels-idx1-ubyte.gz'
  images_bytes, labels_bytes = images.read_bytes(), labels.read_bytes()
  images.write_bytes(labels_bytes)
  labels.write_bytes(images_bytes)
  with pytest.raises(image_tree.LocalDataError, match=(
      r'train-images-idx3-ubyte.gz holds labels \(an IDX file of 1-d unsigned bytes\), not '
      'images: the images and labels files were swapped or renamed; give each its own name')):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  images.write_bytes(images_bytes)
  with pytest.raises(image_tree.LocalDataError, match=(
      r'train-labels-idx1-ubyte.gz holds images \(an IDX file of 3-d unsigned bytes\), not '
      'labels')):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  labels.write_bytes(b'')
  with pytest.raises(image_tree.LocalDataError, match=(
      '^.*train-labels-idx1-ubyte.gz is empty: copy or download it again.$')):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))


def test_data_the_user_may_not_read_is_named_with_the_fix(tmp_path, monkeypatch):
  """A data folder without read permission was a PermissionError traceback, and an IDX file
  'to copy or download again'. (Tests may run as root: the system's refusal is played.)"""
  import errno
  from cnnjax import config_validation
  from cnnjax.data import dataset_files
  from tests.helpers import load_config, validate
  make_idx_dataset(str(tmp_path))
  config = load_config('cnn_simple')
  config.local_data_dir = str(tmp_path)
  monkeypatch.setattr(config_validation.os, 'access', lambda path, mode: False)
  with pytest.raises(config_validation.ConfigError, match=(
      f"^config.local_data_dir='{tmp_path}' cannot be read by this user \\(permission denied\\): "
      f'make it readable \\(chmod -R a\\+rX {tmp_path}\\), or copy the dataset')):
    validate(config)
  monkeypatch.undo()

  def refused(self, name):
    raise PermissionError(errno.EACCES, 'Permission denied', os.path.join(self.root, name))
  monkeypatch.setattr(dataset_files.DatasetFiles, 'open', refused)
  with pytest.raises(image_tree.LocalDataError, match=(
      r'-ubyte.gz cannot be read by this user \(permission denied\): make it readable \(chmod')):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))


def test_the_folder_above_the_data_names_the_data_folder(tmp_path):
  """`--config.local_data_dir=data` where the files are in data/fashion_mnist/: read as an
  image tree, it warned of 4 loose files, then found no train/<class>/ images."""
  os.makedirs(tmp_path / 'data' / 'fashion_mnist')
  make_idx_dataset(str(tmp_path / 'data' / 'fashion_mnist'))
  (tmp_path / 'data' / 'notes.txt').write_text('downloaded on Monday')
  with pytest.raises(image_tree.LocalDataError,
                     match="holds no dataset files itself, but its folder fashion_mnist/ does: "
                           f"point config.local_data_dir at {tmp_path}/data/fashion_mnist"):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path / 'data'))


def test_idx_files_under_the_names_and_packings_they_travel_by(tmp_path):
  arrays = make_idx_dataset(str(tmp_path))
  # Unpacked; unpacked but still named .gz; gzipped without .gz; a mirror's dotted names.
  renamed = {'train-images-idx3-ubyte.gz': ('train-images-idx3-ubyte', gzip.decompress),
             'train-labels-idx1-ubyte.gz': ('train-labels-idx1-ubyte.gz', gzip.decompress),
             't10k-images-idx3-ubyte.gz': ('t10k-images.idx3-ubyte', lambda b: b),
             't10k-labels-idx1-ubyte.gz': ('t10k-labels.idx1-ubyte', gzip.decompress)}
  for old, (new, transform) in renamed.items():
    payload = transform((tmp_path / old).read_bytes())
    (tmp_path / old).unlink()
    (tmp_path / new).write_bytes(payload)
  data = load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  np.testing.assert_array_equal(data.train.images[..., 0], arrays['train'][0])
  np.testing.assert_array_equal(data.train.labels, arrays['train'][1])
  np.testing.assert_array_equal(data.test.images[..., 0], arrays['t10k'][0])
  np.testing.assert_array_equal(data.test.labels, arrays['t10k'][1])
  labels = (tmp_path / 't10k-labels.idx1-ubyte').read_bytes()
  (tmp_path / 't10k-labels.idx1-ubyte').unlink()
  with pytest.raises(image_tree.LocalDataError, match=r'Missing t10k-labels-idx1-ubyte.gz in .* '
                     r'\(also looked for t10k-labels-idx1-ubyte and t10k-labels.idx1-ubyte\)'):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  # Kaggle's MNIST archive unzips each file into a folder of its own name.
  (tmp_path / 't10k-labels-idx1-ubyte').mkdir()
  (tmp_path / 't10k-labels-idx1-ubyte' / 't10k-labels-idx1-ubyte').write_bytes(labels)
  data = load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))
  np.testing.assert_array_equal(data.test.labels, arrays['t10k'][1])


def test_wrong_image_size_is_rejected(tmp_path):
  make_idx_dataset(str(tmp_path))
  write_idx(str(tmp_path / 'train-images-idx3-ubyte.gz'), np.zeros((40, 32, 32), np.uint8))
  with pytest.raises(image_tree.LocalDataError, match=r'shape \(32, 32, 1\)'):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path))


def write_image_tree(root, images, labels, class_names, split):
  for i, (image, label) in enumerate(zip(images, labels)):
    folder = os.path.join(root, split, class_names[label])
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f'{i:05d}.png'))


@pytest.mark.parametrize('train_class, test_class, message', [
    ('cat', 'Cat', 'Folder test/Cat in .* is not a class of this dataset: it differs from class '
                   'cat in case alone; rename one of the two folders'),
    ('cat', 'bird', r'Folder test/bird in .* is not a class of this dataset \(cat, dog\): '
                    'rename it to one of them, or move it out of test/'),
    ('caf\u00e9', 'cafe\u0301', 'Folder test/cafe\u0301 in .* is not a class of this dataset: it '
                             'differs from class caf\u00e9 in Unicode form alone'),
    ('cat ', 'cat', "Folder test/cat in .* is not a class of this dataset: it differs from class "
                    "'cat ' in spaces at its ends alone"),
])
def test_a_test_folder_that_names_no_training_class(train_class, test_class, message, tmp_path):
  images = np.zeros((4, 6, 6, 3), np.uint8)
  write_image_tree(str(tmp_path), images, [0, 0, 1, 1], [train_class, 'dog'], 'train')
  write_image_tree(str(tmp_path), images, [0, 0, 1, 1], [test_class, 'dog'], 'test')
  with pytest.raises(image_tree.LocalDataError, match=message):
    datasets.load_dataset(datasets.DataOptions('image_folder', 'train', '', 'test',
                                               local_data_dir=str(tmp_path), image_size=6,
                                               channels=3))


@pytest.mark.parametrize('folders', [('Train', 'Test', 'Valid'), ('TRAINING', 'TESTING', 'VAL'),
                                     ('training', 'testing', 'validation')])
def test_split_folders_spelled_as_datasets_come(folders, tmp_path):
  """Kaggle's trees come as Train/ and Test/, or Training/ and Testing/: 'No train/<class>/
  <image> files (it has Test/, Train/)' made the user rename them."""
  images = np.random.default_rng(0).integers(0, 256, (12, 6, 6, 3), np.uint8)
  labels = [0, 1] * 6
  spelled, plain = tmp_path / 'spelled', tmp_path / 'plain'
  for folder, standard, part in zip(folders, ('train', 'test', 'val'), np.split(np.arange(12), 3)):
    for root, name in ((spelled, folder), (plain, standard)):
      write_image_tree(str(root), images[part], [labels[i] for i in part], ['cat', 'dog'], name)
  expected, read = (
      datasets.load_dataset(datasets.DataOptions('image_folder', 'train', 'val', 'test',
                                                 local_data_dir=str(root), image_size=6,
                                                 channels=3)) for root in (plain, spelled))
  for split in ('train', 'val', 'test'):
    np.testing.assert_array_equal(getattr(read, split).images, getattr(expected, split).images)
    np.testing.assert_array_equal(getattr(read, split).labels, getattr(expected, split).labels)


def local_order(labels, class_names):
  """The order the reader gives files written by `write_image_tree` (named by index)."""
  keys = [image_tree.example_order_key(class_names[label], f'{i:05d}.png')
          for i, label in enumerate(labels)]
  return np.argsort(keys, kind='stable')


def test_image_folder_equals_tfds_for_the_same_images(tmp_path, mock_tfds):
  tfds_data = load_dataset('cifar10', 'train', '', 'test')
  names = datasets.DATASETS['cifar10'].class_names
  for split in ('train', 'test'):
    arrays = getattr(tfds_data, split)
    write_image_tree(str(tmp_path), arrays.images, arrays.labels, names, split)
  local = load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path))
  for split in ('train', 'test'):
    arrays = getattr(tfds_data, split)
    order = local_order(arrays.labels, names)
    np.testing.assert_array_equal(getattr(local, split).images, arrays.images[order])
    np.testing.assert_array_equal(getattr(local, split).labels, arrays.labels[order])
    assert getattr(local, split).images.dtype == getattr(tfds_data, split).images.dtype


def test_class_folders_numbered_by_label_are_those_labels_classes(tmp_path, caplog):
  """Exports by label number (`train/0/`, ... `train/9/`) of a dataset whose classes have
  names had been 'another dataset's images (MNIST's)'. Read in place and streamed, they are
  the same examples as the named folders; a broken one is named by its folder."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(10), 2)
  names = datasets.DATASETS['cifar10'].class_names
  numbers = [str(i) for i in range(10)]
  for split in ('train', 'test'):
    write_image_tree(str(tmp_path / 'named'), images, labels, names, split)
    write_image_tree(str(tmp_path / 'numbered'), images, labels, numbers, split)
  named = load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path / 'named'))
  with caplog.at_level(logging.WARNING):
    numbered = load_dataset('cifar10', 'train', '', 'test',
                            local_data_dir=str(tmp_path / 'numbered'))
  by_example = lambda split: sorted(zip(split.labels.tolist(), map(bytes, split.images)))
  for split in ('train', 'test'):
    assert by_example(getattr(numbered, split)) == by_example(getattr(named, split))
  (warning,) = [r.getMessage() for r in caplog.records if 'are numbers' in r.getMessage()]
  assert warning.endswith("as cifar10's label numbers: 0 = airplane, 1 = automobile, 2 = bird, "
                          '3 = cat, 4 = deer, 5 = dog, 6 = frog, 7 = horse, 8 = ship, 9 = truck.')
  broken = tmp_path / 'numbered' / 'train' / '3' / '00006.png'
  broken.write_bytes(broken.read_bytes()[:200])  # An image's header, its pixels cut off.
  streamed = load_dataset('cifar10', 'train', '', 'test', data_in_memory='false',
                          local_data_dir=str(tmp_path / 'numbered'))
  with pytest.raises(examples.UnreadableExample, match=r'^train/3/00006.png in .*numbered '):
    [streamed.train.read_example(i) for i in range(len(streamed.train))]
  broken.unlink()
  mnist = load_dataset('mnist', 'train', '', 'test', local_data_dir=str(tmp_path / 'numbered'),
                       image_size=32, channels=3)  # Its class names are the numbers.
  assert sorted(set(mnist.train.labels.tolist())) == list(range(10))


def test_image_folder_tarball_and_slicing(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  labels = np.repeat(np.arange(10), 2)
  names = datasets.DATASETS['cifar10'].class_names
  tree = tmp_path / 'tree'
  write_image_tree(str(tree), images, labels, names, 'train')
  write_image_tree(str(tree), images[:10], labels[:10], names, 'test')
  archive = tmp_path / 'cifar.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tree / 'train', arcname='train')
    tar.add(tree / 'test', arcname='test')
  zipped = shutil.make_archive(str(tmp_path / 'cifar'), 'zip', tree)  # As Kaggle ships them.
  from_dir = load_dataset('cifar10', 'train[:75%]', 'train[75%:]', 'test',
                                   local_data_dir=str(tree))
  assert len(from_dir.train) == 15 and len(from_dir.val) == 5 and len(from_dir.test) == 10
  np.testing.assert_array_equal(from_dir.train.images, images[local_order(labels, names)][:15])
  for packed in (archive, zipped):
    from_archive = load_dataset('cifar10', 'train[:75%]', 'train[75%:]', 'test',
                                local_data_dir=str(packed))
    for split in ('train', 'val', 'test'):
      np.testing.assert_array_equal(getattr(from_dir, split).images,
                                    getattr(from_archive, split).images)
      np.testing.assert_array_equal(getattr(from_dir, split).labels,
                                    getattr(from_archive, split).labels)


def test_links_in_a_tar_or_zip_are_the_files_they_lead_to(tmp_path, caplog):
  """`tar` (and `zip -y`) keep a tree's symbolic and hard links as links, which the readers
  passed over without a word (or took for files that are not images): they read fewer
  images than the folder holds."""
  from tests.helpers import tiny_image_tree
  tree = tmp_path / 'tree'
  shutil.copytree(tiny_image_tree(3), tree)
  ant, bee = tree / 'train' / 'ant', tree / 'train' / 'bee'
  os.symlink('0.png', ant / 'same.png')
  os.symlink('same.png', ant / 'chain.png')  # A link to a link.
  os.symlink('../bee/1.png', ant / 'other.png')
  os.link(bee / '0.png', bee / 'hard.png')
  Image.new('RGB', (20, 20), (1, 2, 3)).save(tmp_path / 'outside.png')
  os.symlink(tmp_path / 'outside.png', bee / 'outside.png')  # Out of the archive.
  os.symlink('loop2.png', bee / 'loop1.png')  # A cycle leads nowhere.
  os.symlink('loop1.png', bee / 'loop2.png')
  archive = tmp_path / 'tree.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tree, arcname='tree')
  zipped = tmp_path / 'tree.zip'  # As `zip -ry`: a link's entry holds the path it leads to.
  with zipfile.ZipFile(zipped, 'w') as archive_file:
    for path in sorted(tree.rglob('*')):
      name = f'tree/{path.relative_to(tree)}'
      if path.is_symlink():
        info = zipfile.ZipInfo(name)
        info.create_system, info.external_attr = 3, (0o120777 << 16)
        archive_file.writestr(info, os.readlink(path))
      elif path.is_file():
        archive_file.write(path, name)

  def examples(root):
    data = load_dataset('image_folder', 'train', '', 'test', local_data_dir=str(root),
                        image_size=20, channels=3)
    return sorted((image.tobytes(), int(label)) for image, label in zip(data.train.images,
                                                                        data.train.labels))
  with caplog.at_level(logging.WARNING):
    from_dir, from_tar, from_zip = examples(tree), examples(archive), examples(zipped)
  outside = (np.full((20, 20, 3), (1, 2, 3), np.uint8).tobytes(), 1)
  assert len(from_dir) == 9 + 4 + 1 and outside in from_dir  # The folder follows each link.
  from_dir.remove(outside)
  assert from_tar == from_dir and from_zip == from_dir
  warnings = [r.getMessage() for r in caplog.records if 'link(s)' in r.getMessage()]
  for packed, warning in zip((archive, zipped), warnings, strict=True):
    assert warning.startswith(f'Left out 3 link(s) in {packed} that lead to no file inside it: ')
    assert all(f'tree/train/bee/{name}' in warning for name in ('outside.png', 'loop1.png'))


def test_images_in_sub_folders_of_a_class_belong_to_it(tmp_path):
  tree = tmp_path / 'tree'
  names = ['train/cat/a.png', 'train/cat/2019/b.png', 'train/cat/2019/x/c.png',
           'train/dog/d.png', 'train/dog/.thumbnails/d.png', 'train/dog/.e.png']
  for i, name in enumerate(names):
    os.makedirs(tree / os.path.dirname(name), exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tree / name)
  archive = tmp_path / 'tree.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tree / 'train', arcname='train')
  compressed = [tmp_path / f'tree.tar.{kind}' for kind in ('bz2', 'xz')]
  for path in compressed:
    with tarfile.open(path, f'w:{path.suffix[1:]}') as tar:
      tar.add(tree / 'train', arcname='train')
  zipped = shutil.make_archive(str(tmp_path / 'tree'), 'zip', tree)
  # Archives of the folder itself, as a file manager makes them: tree/train/cat/...
  wrapped = shutil.make_archive(str(tmp_path / 'wrapped'), 'zip', tmp_path, 'tree')
  (tree / 'README.txt').write_text('My photos.')  # Beside train/: not an image of any split.
  wrapped_tar = tmp_path / 'wrapped.tar'
  with tarfile.open(wrapped_tar, 'w') as tar:
    tar.add(tree, arcname='tree')
  for root in (tree, archive, *compressed, zipped, wrapped, wrapped_tar):
    listed = image_tree.list_tree(str(root))
    assert sorted((f.cls, f.name) for f in listed['train']) == [
        ('cat', '2019/b.png'), ('cat', '2019/x/c.png'), ('cat', 'a.png'), ('dog', 'd.png')]
    assert [f.read()[:4] for f in listed['train']] == [b'\x89PNG'] * 4


def test_a_damaged_zip_or_a_file_that_is_no_archive_is_named(tmp_path):
  tree = tmp_path / 'tree'
  write_image_tree(str(tree), np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 1],
                   datasets.DATASETS['cifar10'].class_names, 'train')
  payload = open(shutil.make_archive(str(tmp_path / 'cifar'), 'zip', tree), 'rb').read()
  cut, flipped, notes = tmp_path / 'cut.zip', tmp_path / 'flipped.zip', tmp_path / 'notes.rar'
  cut.write_bytes(payload[:len(payload) // 2])
  with zipfile.ZipFile(flipped, 'w', zipfile.ZIP_STORED) as archive:  # Images as they are.
    for path in sorted(tree.rglob('*.png')):
      archive.write(path, path.relative_to(tree).as_posix())
  corrupt = bytearray(flipped.read_bytes())
  corrupt[corrupt.index(b'\x89PNG') + 60] ^= 0xFF  # Inside the first image: its CRC fails.
  flipped.write_bytes(bytes(corrupt))
  notes.write_text('Rar!' + 'x' * 1000)
  cut_xz = tmp_path / 'cut.tar.xz'
  with tarfile.open(cut_xz, 'w:xz') as tar:
    tar.add(tree, arcname='.')
  cut_xz.write_bytes(cut_xz.read_bytes()[:-200])
  csv = tmp_path / 'labels.csv.gz'  # Gzip, but no tar inside.
  csv.write_bytes(gzip.compress(b'file,label\n' * 100))
  idx_dir = tmp_path / 'idx'  # One file of an IDX dataset, gzipped or not.
  idx_dir.mkdir()
  make_idx_dataset(str(idx_dir))
  labels = idx_dir / 'train-labels-idx1-ubyte.gz'
  unpacked = tmp_path / 'train-images-idx3-ubyte'
  unpacked.write_bytes(gzip.decompress((idx_dir / 'train-images-idx3-ubyte.gz').read_bytes()))
  # Other single files of a dataset, given for its folder: each had been 'neither a directory
  # nor a .tar.gz ... archive'.
  kaggle_csv = tmp_path / 'fashion-mnist_train.csv'
  kaggle_csv.write_text('label,pixel1\n0,0\n')
  batch = tmp_path / 'data_batch_1'
  batch.write_bytes(pickle.dumps({'data': [0]}, protocol=2))
  image = next(tree.rglob('*.png'))
  for path, message in ((kaggle_csv, 'fashion-mnist_train.csv is one CSV file: config.local_data_'
                                     'dir takes the folder that holds the train and the test CSV'),
                        (batch, 'data_batch_1 is one CIFAR batch file: config.local_data_dir '
                                'takes the folder that holds them all'),
                        (image, r'\.png is one image: config.local_data_dir takes the folder of '
                                r'the tree \(train/<class>/<image>'),
                        (cut, 'cut.zip is truncated or corrupt'),
                        (flipped, 'flipped.zip is truncated or corrupt'),
                        (cut_xz, 'cut.tar.xz is truncated or corrupt'),
                        (notes, 'notes.rar is neither a directory nor a .tar.gz, .tar.bz2, '
                                '.tar.xz, .tar or .zip'),
                        (csv, 'labels.csv.gz is gzip-compressed but holds no tar archive'),
                        (labels, 'train-labels-idx1-ubyte.gz is one IDX file: config.local_data_'
                                 'dir takes the folder that holds the four'),
                        (unpacked, 'train-images-idx3-ubyte is one IDX file')):
    with pytest.raises(image_tree.LocalDataError, match=message):
      load_dataset('cifar10', 'train', '', 'train', local_data_dir=str(path))


def test_a_missing_split_names_what_the_tree_has_and_the_way_out(tmp_path):
  write_image_tree(str(tmp_path / 'tree'), np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 1],
                   datasets.DATASETS['cifar10'].class_names, 'train')
  with pytest.raises(image_tree.LocalDataError,
                     match=r"No test/<class>/<image> files in .*tree \(it has train/\): add "
                           r"test/<class>/ folders, or take the split from part of train"):
    load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path / 'tree'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(image_tree.LocalDataError,
                     match=r'No train/<class>/<image> files in .*empty\.$'):
    load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path / 'empty'))
  with pytest.raises(image_tree.LocalDataError,  # A directory holding the tree's folder.
                     match=r'\(it has tree/\): the tree seems to be in .*tree; point '
                           r'config.local_data_dir at it\.$'):
    load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path))


def test_utf8_names_in_a_zip_without_the_utf8_flag_are_read_as_utf8(tmp_path):
  """Info-ZIP's zip and macOS write UTF-8 names without the flag that says so; Python alone
  would read them as cp437 and make up a class (`├⌐t├⌐` for `été`)."""
  placeholder, name = 'XXXXX', 'été'  # The same length in UTF-8 bytes.
  assert len(placeholder) == len(name.encode())
  path = tmp_path / 'tree.zip'
  with zipfile.ZipFile(path, 'w') as archive:  # ASCII names: Python sets no UTF-8 flag.
    for split in ('train', 'test'):
      for cls in ('hiver', placeholder):
        png = tmp_path / 'image.png'
        Image.new('RGB', (4, 4)).save(png)
        archive.write(png, f'{split}/{cls}/0.png')
  path.write_bytes(path.read_bytes().replace(placeholder.encode(), name.encode()))
  with zipfile.ZipFile(path) as archive:
    assert not any(member.flag_bits & 0x800 for member in archive.infolist())
    assert 'train/├⌐t├⌐/0.png' in archive.namelist()  # Python's reading.
  listing = image_tree.list_tree(str(path))
  assert image_tree.class_names(listing, str(path)) == ('hiver', name)
  # A name whose bytes are not UTF-8 (an old DOS zip's cp437) stays as Python reads it.
  dos = zipfile.ZipInfo('train/café/0.png')
  dos.flag_bits = 0
  assert image_tree._zip_name(dos) == 'train/café/0.png'  # pylint: disable=protected-access


def test_names_not_in_the_file_systems_encoding_are_read_and_written(tmp_path):
  """Folders from a Latin-1 system ('caf\\xe9' on a UTF-8 one): the fingerprint of the files
  ended the run in UnicodeEncodeError, and no UTF-8 writer (reports, dataset.json) takes such
  names."""
  import json
  tree = tmp_path / 'tree'
  for split in (b'train', b'test'):
    for cls in (b'caf\xe9', b'th\xe9'):
      folder = os.path.join(os.fsencode(tree), split, cls)
      os.makedirs(folder)
      for i in range(2):
        image = os.fsdecode(os.path.join(folder, b'\xff%d.png' % i))
        Image.new('RGB', (4, 4), (i, 0, 0)).save(image)
  with tarfile.open(tmp_path / 'tree.tar.gz', 'w:gz') as archive:
    archive.add(tree, arcname='.')
  fingerprints = []
  for root in (tree, tmp_path / 'tree.tar.gz'):
    for in_memory in ('true', 'false'):
      data = load_dataset('image_folder', 'train', '', 'test', local_data_dir=str(root),
                          image_size=4, channels=3, data_in_memory=in_memory)
      assert data.class_names == ('caf\\xe9', 'th\\xe9')
      json.dumps(data.class_names, ensure_ascii=False).encode('utf-8')  # What writers do.
      fingerprints.append(data.test.fingerprint())
  assert len(set(fingerprints)) == 1


def test_a_zip_with_backslashes_between_folders_is_read_as_a_tree(tmp_path):
  """.NET Framework's zip writer (older PowerShell Compress-Archive) wrote 'train\\cat\\0.png'."""
  path, png = tmp_path / 'windows.zip', tmp_path / 'image.png'
  Image.new('RGB', (4, 4)).save(png)
  with zipfile.ZipFile(path, 'w') as archive:
    for split in ('train', 'test'):
      for cls in ('cat', 'dog'):
        archive.writestr(f'{split}\\{cls}\\', b'')  # A folder entry, as such tools write one.
        archive.write(png, f'{split}\\{cls}\\0.png')
  listing = image_tree.list_tree(str(path))
  assert sorted(f'{f.cls}/{f.name}' for f in listing['train']) == ['cat/0.png', 'dog/0.png']
  assert image_tree.class_names(listing, str(path)) == ('cat', 'dog')


def test_unknown_class_folder_is_named(tmp_path):
  write_image_tree(str(tmp_path), np.zeros((1, 32, 32, 3), np.uint8), [0], ['airplanes'], 'train')
  with pytest.raises(image_tree.LocalDataError, match=r'train/airplanes.*not a class of this '
                     r'dataset \(airplane, .*, truck\): did you mean airplane\? Rename it, or '
                     r'move it out of train/.$'):
    load_dataset('cifar10', 'train', '', 'train', local_data_dir=str(tmp_path))


@pytest.mark.parametrize('as_archive', [False, True])
def test_files_outside_class_folders_are_left_out_with_a_warning(tmp_path, caplog, as_archive):
  tree = tmp_path / 'tree'
  for cls in ('a', 'b'):
    os.makedirs(tree / 'train' / cls)
    Image.new('L', (4, 4)).save(tree / 'train' / cls / '0.png')
  for name in ('loose1.png', 'loose2.png', '.DS_Store', 'Thumbs.db', 'desktop.ini'):
    Image.new('L', (4, 4)).save(tree / 'train' / name, 'PNG')
  for cls in ('a', 'b'):  # Windows' own files in a class folder: not images, not warned of.
    (tree / 'train' / cls / 'Thumbs.db').write_bytes(b'\xd0\xcf\x11\xe0 thumbnail cache')
  (tree / 'README.txt').write_text('root files belong to no split')
  root = str(tree)
  if as_archive:
    root = str(tmp_path / 'tree.tar.gz')
    with tarfile.open(root, 'w:gz') as tar:
      tar.add(tree / 'train', arcname='train')
      tar.add(tree / 'README.txt', arcname='README.txt')
  listing = image_tree.list_tree(root)
  assert sorted(f'{f.cls}/{f.name}' for f in listing['train']) == ['a/0.png', 'b/0.png']
  warnings = [r.getMessage() for r in caplog.records if 'outside any class folder' in
              r.getMessage()]
  listed = (' (or unpack the archive and list their classes in trainLabels.csv beside train/)'
            if as_archive else f', or list their classes in {tree}/trainLabels.csv')
  assert warnings == [f'Left out 2 file(s) lying directly in train/ of {root}, outside any '
                      'class folder: loose1.png, loose2.png. Put each in train/<class>/ to '
                      f'use it{listed}.']


def test_the_folders_a_nas_or_a_disk_adds_are_neither_classes_nor_images(tmp_path, caplog):
  # A Synology NAS writes @eaDir/ into every folder, with thumbnails of each image; its bin
  # is #recycle/, a Windows drive's $RECYCLE.BIN/, an ext4 disk's lost+found/.
  for cls in ('a', 'b'):
    os.makedirs(tmp_path / 'train' / cls / '@eaDir' / '0.png')
    Image.new('L', (4, 4)).save(tmp_path / 'train' / cls / '0.png')
    Image.new('L', (2, 2)).save(tmp_path / 'train' / cls / '@eaDir' / '0.png' / 'THUMB_M.jpg')
  for system in ('@eaDir', '#recycle', '$RECYCLE.BIN', 'lost+found'):
    os.makedirs(tmp_path / 'train' / system / 'a')
    for name in ('1.png', 'a/2.png'):
      Image.new('L', (4, 4)).save(tmp_path / 'train' / system / name)
  listing = image_tree.list_tree(str(tmp_path))
  assert sorted(f'{f.cls}/{f.name}' for f in listing['train']) == ['a/0.png', 'b/0.png']
  assert image_tree.class_names(listing, str(tmp_path)) == ('a', 'b')
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_empty_class_folder_is_left_out_with_a_warning(tmp_path, caplog):
  for cls in ('a', 'b'):
    os.makedirs(tmp_path / 'train' / cls)
    Image.new('L', (4, 4)).save(tmp_path / 'train' / cls / '0.png')
  os.makedirs(tmp_path / 'train' / 'c' / 'later')  # Nothing in it yet, at any depth.
  listing = image_tree.list_tree(str(tmp_path))
  assert image_tree.class_names(listing, str(tmp_path)) == ('a', 'b')
  assert [r.getMessage() for r in caplog.records if 'empty' in r.getMessage()] == [
      f'Left out empty class folder(s) train/c in {tmp_path}: a class is a folder with images.']


def test_offline_tfds_failure_says_how_to_use_local_files(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(*args, **kwargs):
    raise ConnectionError('network unreachable')
  monkeypatch.setattr(tfds, 'load', offline)
  with pytest.raises(datasets.DatasetUnavailableError, match='--config.local_data_dir'):
    load_dataset('fashion_mnist', 'train', '', 'test', tfds_data_dir=str(tmp_path))


def test_image_folder_slices_draw_from_every_class(tmp_path):
  """Class folders must not become class-sorted splits: train[80%:] is no 'last two classes'."""
  names = datasets.DATASETS['cifar10'].class_names
  labels = np.repeat(np.arange(10), 10)
  write_image_tree(str(tmp_path), np.zeros((100, 32, 32, 3), np.uint8), labels, names, 'train')
  write_image_tree(str(tmp_path), np.zeros((10, 32, 32, 3), np.uint8), labels[::10], names, 'test')
  data = load_dataset('cifar10', 'train[:80%]', 'train[80%:]', 'test',
                               local_data_dir=str(tmp_path))
  assert len(np.unique(data.val.labels)) >= 8
  assert len(np.unique(data.train.labels)) == 10


@pytest.mark.parametrize('form', ['folder', 'tar.gz in its folder', 'zip'])
def test_keras_class_folders_without_splits_are_the_train_split(tmp_path, caplog, form):
  """`<class>/<image>`, as `image_dataset_from_directory` reads it (and TF's flower_photos.tgz
  holds it, in its folder and beside a LICENSE.txt): one pool, the train split."""
  tree, rng = tmp_path / 'flower_photos', np.random.default_rng(0)
  pixels = {}
  for cls, names in (('daisy', ('a.jpg', 'b.png')), ('tulips', ('c.png', 'old/d.png'))):
    for name in names:
      os.makedirs(os.path.dirname(tree / cls / name), exist_ok=True)
      pixels[f'{cls}/{name}'] = rng.integers(0, 256, (6, 6, 3), np.uint8)
      Image.fromarray(pixels[f'{cls}/{name}']).save(tree / cls / name, 'PNG')
  (tree / 'LICENSE.txt').write_text('not an example')
  root = str(tree)
  if form == 'tar.gz in its folder':
    root = str(tmp_path / 'flower_photos.tgz')
    with tarfile.open(root, 'w:gz') as tar:
      tar.add(tree, arcname='flower_photos')
  elif form == 'zip':
    root = shutil.make_archive(str(tmp_path / 'flowers'), 'zip', tree)
  listing = image_tree.list_tree(root)
  assert listing.keras_layout and list(listing) == ['train']
  assert sorted(f'{f.cls}/{f.name}' for f in listing['train']) == sorted(pixels)
  assert image_tree.class_names(listing, root) == ('daisy', 'tulips')
  assert not [r for r in caplog.records if r.levelno >= 30]  # Nothing left out to warn about.
  data = datasets.load_dataset(datasets.DataOptions(
      'image_folder', 'train[:50%]', '', 'train[50%:]', local_data_dir=root, image_size=6,
      channels=3))
  both = np.concatenate([data.train.images, data.test.images])
  ordered = sorted(pixels, key=lambda path: image_tree.example_order_key(*path.split('/', 1)))
  np.testing.assert_array_equal(both, np.stack([pixels[path] for path in ordered]))
  np.testing.assert_array_equal(np.concatenate([data.train.labels, data.test.labels]),
                                [path.startswith('tulips') for path in ordered])
  with pytest.raises(image_tree.LocalDataError,
                     match=r"no split folders \(Keras' <class>/<image> layout\), read as the "
                           r"train split: there is no test/ split.*--config.test_split="):
    datasets.load_dataset(datasets.DataOptions('image_folder', 'train', '', 'test',
                                               local_data_dir=root, image_size=6, channels=3))
  if form == 'folder':  # The folder that holds it: named.
    with pytest.raises(image_tree.LocalDataError,
                       match=r'the tree seems to be in .*flower_photos; point'):
      image_tree.class_names(image_tree.list_tree(str(tmp_path)), str(tmp_path))


def test_folders_named_as_splits_are_never_read_as_keras_classes(tmp_path, caplog):
  for split in ('test', 'val'):  # No train/: an error naming it, not classes 'test', 'val'.
    os.makedirs(tmp_path / split)
    Image.new('L', (4, 4)).save(tmp_path / split / '0.png')
  with pytest.raises(image_tree.LocalDataError, match=r'No train/<class>/<image> files'):
    image_tree.class_names(image_tree.list_tree(str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize('flags, method, message', [
    (0x1, zipfile.ZIP_DEFLATED, r'is password-protected \(train/cat/0.png is encrypted\): unzip '
                                r'it \(Windows Explorer, 7-Zip, unzip\) and point'),
    (0x0, 9, r'is compressed with method 9 \(Deflate64, which Windows chooses for large zips\), '
             r'which Python cannot read: unzip it'),
])
def test_a_zip_python_cannot_open_is_named_with_the_way_out(flags, method, message, tmp_path):
  """A password, or Windows' Deflate64: zipfile raised RuntimeError / NotImplementedError."""
  import struct
  path = tmp_path / 'dataset.zip'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name in ('train/cat/0.png', 'train/dog/0.png'):
      archive.writestr(name, b'not read')
  data = bytearray(path.read_bytes())
  for signature, offset in ((b'PK\x03\x04', 6), (b'PK\x01\x02', 8)):  # Local, central headers:
    at = data.find(signature)                                       # their flags and method.
    while at >= 0:
      data[at + offset:at + offset + 4] = struct.pack('<HH', flags, method)
      at = data.find(signature, at + 4)
  path.write_bytes(bytes(data))
  with pytest.raises(image_tree.LocalDataError, match=message):
    image_tree.list_tree(str(path))


def test_a_zip_made_on_a_mac_is_read_without_its_macosx_folder(tmp_path, caplog):
  """Finder's Compress wraps the tree in its folder and adds __MACOSX/ with a '._' resource
  fork for every file: a second top folder, which used to hide the wrapper."""
  tree = tmp_path / 'dataset'
  for split in ('train', 'test'):
    for cls in ('cat', 'dog'):
      os.makedirs(tree / split / cls)
      Image.new('RGB', (4, 4)).save(tree / split / cls / '0.png')
  path = tmp_path / 'dataset.zip'
  with zipfile.ZipFile(path, 'w') as archive:
    for file in sorted(tree.rglob('*.png')):
      name = file.relative_to(tmp_path).as_posix()
      archive.write(file, name)
      folder, base = os.path.split(name)
      archive.writestr(f'__MACOSX/{folder}/._{base}', b'\0\5\26\7 resource fork')
  listing = image_tree.list_tree(str(path))
  assert {split: sorted(f'{f.cls}/{f.name}' for f in files) for split, files in listing.items()
          } == {'train': ['cat/0.png', 'dog/0.png'], 'test': ['cat/0.png', 'dog/0.png']}
  assert not caplog.records  # Nothing of __MACOSX/ is warned about.
  with zipfile.ZipFile(path) as archive:  # Unzipped, its __MACOSX/ is passed over as well.
    archive.extractall(tmp_path / 'unzipped')
  assert image_tree.list_tree(str(tmp_path / 'unzipped' / 'dataset')) == listing.__class__(
      {split: [dataclasses.replace(f, payload=None, path=str(tmp_path / 'unzipped' / 'dataset' /
                                                             split / f.cls / f.name))
               for f in files] for split, files in listing.items()})
  with pytest.raises(image_tree.LocalDataError, match=r'the tree seems to be in .*unzipped/dataset'):
    image_tree.split_files(image_tree.list_tree(str(tmp_path / 'unzipped')),
                           str(tmp_path / 'unzipped'), 'train')
  assert not caplog.records


def test_an_archive_larger_than_memory_allows_is_refused_before_it_is_read(tmp_path,
                                                                          monkeypatch):
  tree = tmp_path / 'tree'
  for split in ('train', 'test'):
    for cls in ('a', 'b'):
      os.makedirs(tree / split / cls)
      Image.new('L', (8, 8), 7).save(tree / split / cls / '0.png')
  archive = shutil.make_archive(str(tmp_path / 'tree'), 'gztar', tree)
  monkeypatch.setattr(datasets, '_physical_memory', lambda: 2 * os.path.getsize(archive) - 2)
  read = []
  monkeypatch.setattr(image_tree, 'archive_members', lambda root: read.append(root) or iter(()))
  options = datasets.DataOptions('image_folder', 'train', '', 'test', local_data_dir=archive,
                                 image_size=8, channels=1)
  with pytest.raises(image_tree.LocalDataError,
                     match=r'tree.tar.gz is 0.0 GiB, more than 50% of this machine.s 0.0 GiB of '
                           r'memory, and an archive is read whole into memory: unpack it'):
    datasets.load_dataset(options)
  assert not read
  unpacked = datasets.load_dataset(dataclasses.replace(options, local_data_dir=str(tree)))
  assert len(unpacked.train) == len(unpacked.test) == 2


def test_local_arrays_convert_to_the_channels_the_config_asks_for(tmp_path):
  arrays = make_idx_dataset(str(tmp_path))
  rgb = load_dataset('fashion_mnist', local_data_dir=str(tmp_path), channels=3)
  np.testing.assert_array_equal(rgb.train.images, np.repeat(arrays['train'][0][..., None], 3, -1))
  with pytest.raises(image_tree.LocalDataError,  # Other sizes still need config.image_size.
                     match=r"have shape \(24, 24, 1\); grey32's have \(32, 32, 1\). To train "
                           r"on these resized to grey32's, pass --config.image_size=32 "
                           r'--config.channels=1.$'):
    datasets._shaped(rgb.train.images[:, :24, :24, :1], (32, 32, 1), False, True, 'files',
                     'grey32')
  resized = datasets._shaped(rgb.train.images[..., :1], (32, 32, 3), True, True, 'files',
                             'cifar10')
  assert resized.shape == (40, 32, 32, 3)


def test_arrays_resized_beyond_the_memory_are_streamed_and_resized_as_read(tmp_path,
                                                                          monkeypatch):
  """IDX (or CSV, CIFAR batch) files resized by config.image_size are held whole where they
  fit, else streamed: each image resized as a batch takes it, to the same pixels."""
  make_idx_dataset(str(tmp_path))  # 40 train, 20 test.
  options = datasets.DataOptions('fashion_mnist', 'train[:30]', 'train[30:]', 'test',
                                 local_data_dir=str(tmp_path), image_size=56)
  resized = 60 * 56 * 56  # Every split, decoded at the new size.
  monkeypatch.setattr(datasets, '_physical_memory', lambda: 2 * resized)
  held = datasets.load_dataset(options)
  assert not held.streamed and held.train.images.shape == (30, 56, 56, 1)
  monkeypatch.setattr(datasets, '_physical_memory', lambda: 2 * resized - 1)
  streamed = datasets.load_dataset(options)
  for split in ('train', 'val', 'test'):
    part, whole = getattr(streamed, split), getattr(held, split)
    assert part.streamed and len(part) == len(whole)
    images, labels = part.read(np.arange(len(part)))
    np.testing.assert_array_equal(images, whole.images)
    np.testing.assert_array_equal(labels, whole.labels)
    assert part.fingerprint().startswith('resized:')  # Not compared with the held pixels'.
  own_size = datasets.load_dataset(dataclasses.replace(options, image_size=0,
                                                       data_in_memory='false'))
  assert own_size.streamed and own_size.train.fingerprint() == load_dataset(
      'fashion_mnist', 'train[:30]', local_data_dir=str(tmp_path)).train.fingerprint()


def test_streamed_arrays_are_checked_as_held_ones(tmp_path):
  """Labels outside the classes, and an empty slice, are errors when IDX arrays stream too."""
  make_idx_dataset(str(tmp_path))  # 40 train, 20 test.
  options = datasets.DataOptions('fashion_mnist', local_data_dir=str(tmp_path), image_size=32,
                                 data_in_memory='false')
  with pytest.raises(datasets.EmptySplitError, match=r"Split 'train\[40:\]' of local:.* "
                     'selects no example'):
    datasets.load_split(options, 'train[40:]')
  labels = np.zeros(20, np.uint8)
  labels[3] = 12
  write_idx(str(tmp_path / 't10k-labels-idx1-ubyte.gz'), labels)
  with pytest.raises(datasets.BadLabelsError, match=r'are not classes 0\.\.9 \(e\.g\. \[12\]\)'):
    datasets.load_split(options, 'test')


def test_labels_numbered_from_one_are_named_so():
  from cnnjax.data.examples import Split
  labels = np.arange(30) % 10 + 1  # 1..10, as a spreadsheet or MATLAB numbers them.
  split = Split(np.zeros((30, 28, 28, 1), np.uint8), labels.astype(np.int32))
  with pytest.raises(datasets.BadLabelsError, match=re.escape(
      "3 label(s) of split 'train' of local:x are not classes 0..9 (e.g. [10]): the labels "
      'run 1..10, numbered from 1 where the classes are numbered from 0: subtract 1 from '
      'each. Nothing was trained')):
    datasets.check_split(split, 'train', 10, 'local:x')
  labels[0] = 11  # Not 1..10 throughout: corrupt.
  with pytest.raises(datasets.BadLabelsError, match='corrupt or belongs to another dataset'):
    datasets.check_split(Split(split.images, labels.astype(np.int32)), 'train', 10, 'local:x')
