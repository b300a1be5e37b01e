"""CIFAR-10 as distributed (Python and binary batches): read as Keras reads them, safely."""
import os
import pickle
import tarfile

import numpy as np
import pytest

from cnnjax.data import cifar_batches
from cnnjax.data import datasets
from cnnjax.data.image_tree import LocalDataError
from tests.helpers import load_dataset

CLASSES = datasets.DATASETS['cifar10'].class_names
PER_BATCH = 6


def batch_arrays(seed):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
          [int(label) for label in rng.integers(0, 10, PER_BATCH)])


def write_python_batches(folder):
  """The Python version's files: dicts with bytes keys, as Python 2 pickled the originals."""
  os.makedirs(folder)
  for seed, name in enumerate([*cifar_batches.SPLIT_BATCHES['train'], 'test_batch']):
    data, labels = batch_arrays(seed)
    with open(os.path.join(folder, name), 'wb') as f:
      pickle.dump({b'batch_label': name.encode(), b'labels': labels, b'data': data,
                   b'filenames': [b'x.png'] * PER_BATCH}, f, protocol=4)
  with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
    pickle.dump({b'label_names': [name.encode() for name in CLASSES], b'num_vis': 3072}, f,
                protocol=4)


def write_binary_batches(folder):
  os.makedirs(folder)
  for seed, name in enumerate([*cifar_batches.SPLIT_BATCHES['train'], 'test_batch']):
    data, labels = batch_arrays(seed)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
    with open(os.path.join(folder, name + '.bin'), 'wb') as f:
      f.write(records.tobytes())
  with open(os.path.join(folder, 'batches.meta.txt'), 'w') as f:
    f.write('\n'.join(CLASSES) + '\n\n')


def test_python_batches_read_as_keras_reads_them(tmp_path):
  from keras.src.datasets import cifar
  folder = tmp_path / 'cifar-10-batches-py'
  write_python_batches(str(folder))
  keras_train = [cifar.load_batch(str(folder / name))
                 for name in cifar_batches.SPLIT_BATCHES['train']]
  images, labels = cifar_batches.read_split(str(tmp_path), 'train')
  np.testing.assert_array_equal(  # Keras' arrays are NCHW; load_data transposes them.
      images, np.concatenate([x for x, _ in keras_train]).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(labels, np.concatenate([y for _, y in keras_train]))
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  assert cifar_batches.class_names(str(tmp_path)) == CLASSES


def test_every_form_gives_the_same_splits(tmp_path):
  write_python_batches(str(tmp_path / 'py' / 'cifar-10-batches-py'))
  write_binary_batches(str(tmp_path / 'bin' / 'cifar-10-batches-bin'))
  with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz') as archive:
    archive.add(tmp_path / 'py' / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
  roots = [tmp_path / 'py', tmp_path / 'py' / 'cifar-10-batches-py', tmp_path / 'bin',
           tmp_path / 'cifar-10-python.tar.gz']
  loaded = [load_dataset('cifar10', 'train[:80%]', 'train[80%:]', 'test',
                         local_data_dir=str(root)) for root in roots]
  first = loaded[0]
  assert (len(first.train), len(first.val), len(first.test)) == (24, 6, 6)
  _, labels = batch_arrays(4)  # train[80%:] is the last batch, as Keras' validation_split.
  np.testing.assert_array_equal(first.val.labels, labels)
  for data in loaded[1:]:
    for split in ('train', 'val', 'test'):
      np.testing.assert_array_equal(getattr(data, split).images, getattr(first, split).images)
      np.testing.assert_array_equal(getattr(data, split).labels, getattr(first, split).labels)
  streamed = load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(roots[0]),
                          data_in_memory='false')
  assert streamed.streamed
  np.testing.assert_array_equal(streamed.test.read(np.arange(6))[0], first.test.images)


def test_archives_packed_in_any_order_or_on_a_mac_are_read_as_batches(tmp_path):
  """Which reader an archive gets is told from its first files: a Mac's zip puts .DS_Store
  and __MACOSX/ copies first, and a tar of the folder may start with the readme, the class
  names and any batch."""
  import zipfile
  folder = tmp_path / 'cifar-10-batches-py'
  write_python_batches(str(folder))
  (folder / 'readme.html').write_text('<html></html>')
  with zipfile.ZipFile(tmp_path / 'mac.zip', 'w') as archive:
    archive.writestr('cifar-10-batches-py/.DS_Store', b'\0\0\0\1Bud1')
    archive.writestr('__MACOSX/cifar-10-batches-py/._.DS_Store', b'\0\5\26\7')
    for name in sorted(os.listdir(folder)):
      archive.write(folder / name, f'cifar-10-batches-py/{name}')
      archive.writestr(f'__MACOSX/cifar-10-batches-py/._{name}', b'\0\5\26\7')
  with tarfile.open(tmp_path / 'any_order.tar.gz', 'w:gz') as archive:
    for name in ['readme.html', 'batches.meta', 'data_batch_3', 'test_batch', 'data_batch_1',
                 'data_batch_2', 'data_batch_4', 'data_batch_5']:
      archive.add(folder / name, arcname=f'cifar-10-batches-py/{name}')
  expected = load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(folder))
  for archive in ('mac.zip', 'any_order.tar.gz'):
    assert cifar_batches.is_cifar_batches(str(tmp_path / archive))
    data = load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(tmp_path / archive))
    for split in ('train', 'test'):
      np.testing.assert_array_equal(getattr(data, split).images, getattr(expected, split).images)
      np.testing.assert_array_equal(getattr(data, split).labels, getattr(expected, split).labels)


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
  folder = tmp_path / 'cifar-10-batches-py'
  write_python_batches(str(folder))
  marker = tmp_path / 'ran'

  class Payload:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))
  with open(folder / 'data_batch_3', 'wb') as f:
    pickle.dump({b'data': Payload(), b'labels': []}, f, protocol=4)
  with pytest.raises(LocalDataError, match=r'data_batch_3 in .* is not a CIFAR-10 batch \(it '
                     r'would build (posix|nt)\.system, which no CIFAR batch holds\)'):
    cifar_batches.read_split(str(tmp_path), 'train')
  assert not marker.exists()


def test_damaged_or_mismatched_batches_are_named(tmp_path):
  write_binary_batches(str(tmp_path / 'cut'))
  path = tmp_path / 'cut' / 'data_batch_2.bin'
  path.write_bytes(path.read_bytes()[:-100])  # Cut short.
  with pytest.raises(LocalDataError, match='data_batch_2.bin in .* is not a CIFAR-10 batch'):
    cifar_batches.read_split(str(tmp_path / 'cut'), 'train')
  write_binary_batches(str(tmp_path / 'four'))
  os.remove(tmp_path / 'four' / 'data_batch_5.bin')
  with pytest.raises(LocalDataError, match='has no data_batch_5.bin'):
    cifar_batches.read_split(str(tmp_path / 'four'), 'train')
  with pytest.raises(LocalDataError, match="splits \\['test', 'train'\\], not 'val'"):
    cifar_batches.read_split(str(tmp_path / 'four'), 'val')
  write_python_batches(str(tmp_path / 'py'))  # Fashion-MNIST's classes are not CIFAR-10's.
  with pytest.raises(LocalDataError, match="CIFAR batches of the classes airplane.*; "
                     "fashion_mnist's are T-shirt/top.*: pass --config.dataset=cifar10, or "
                     'use a config made for it.$'):
    load_dataset('fashion_mnist', 'train', '', 'test', local_data_dir=str(tmp_path / 'py'))


def test_a_batch_the_user_may_not_read_is_named_with_the_fix(tmp_path, monkeypatch):
  """It was a PermissionError traceback. (Tests may run as root: the refusal is played.)"""
  import errno
  write_python_batches(str(tmp_path / 'py'))
  refused = str(tmp_path / 'py' / 'data_batch_3')

  def refusing_open(path, mode='r'):
    if path == refused:
      raise PermissionError(errno.EACCES, 'Permission denied', path)
    return open(path, mode)
  monkeypatch.setattr(cifar_batches, 'open', refusing_open, raising=False)
  with pytest.raises(LocalDataError, match=f'^{refused} cannot be read by this user \\(permission '
                     f'denied\\): make it readable \\(chmod -R a\\+rX {refused}\\)\\.$'):
    cifar_batches.read_split(str(tmp_path / 'py'), 'train')


def test_offline_tfds_points_at_the_copy_keras_downloaded(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(*args, **kwargs):
    raise ConnectionError('network unreachable')
  monkeypatch.setattr(tfds, 'load', offline)
  monkeypatch.setenv('KERAS_HOME', str(tmp_path / 'keras'))
  with pytest.raises(datasets.DatasetUnavailableError, match=r'--config.local_data_dir=DIR, '):
    load_dataset('cifar10', 'train', '', 'test', tfds_data_dir=str(tmp_path / 'tfds'))
  cache = tmp_path / 'keras' / 'datasets' / 'cifar-10-batches-py-target'  # As Keras 3 unpacks it.
  write_python_batches(str(cache / 'cifar-10-batches-py'))
  with pytest.raises(datasets.DatasetUnavailableError,
                     match=f'Keras downloaded this dataset to {cache} before: train from it with '
                           f'--config.local_data_dir={cache} '):
    load_dataset('cifar10', 'train', '', 'test', tfds_data_dir=str(tmp_path / 'tfds'))
  assert len(load_dataset('cifar10', 'train', '', 'test', local_data_dir=str(cache)).train) == 30
