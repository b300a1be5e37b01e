"""Your own data: image folders of any classes and formats, any TFDS dataset, streaming."""
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

from cnnjax import predict
from cnnjax import sharding
from cnnjax.data import datasets
from cnnjax.data import examples
from cnnjax.data import image_tree
from cnnjax.data import images as images_lib
from cnnjax.data import pipeline
from cnnjax.runs import checkpoints
from tests.helpers import (REPO_ROOT, assert_same_run, defaults, load_config, read_jsonl,
                           shrink, train_and_evaluate)

CLASSES = ('cactus', 'fern', 'orchid')
# (mode, size, format): every mode and format the policy converts, at mixed sizes.
KINDS = [('RGB', (20, 14), 'PNG'), ('L', (9, 9), 'JPEG'), ('RGBA', (16, 16), 'PNG'),
         ('P', (12, 30), 'BMP'), ('CMYK', (25, 25), 'JPEG'), ('RGB', (16, 16), 'WEBP'),
         ('I;16', (16, 16), 'PNG')]


def write_tree(root, per_class=8, seed=0):
  """3 classes in train/ and test/, mixed modes, sizes and formats; plus one file that is not
  an image (.txt) and one corrupt image in each split."""
  rng = np.random.default_rng(seed)
  for split in ('train', 'test'):
    for c, name in enumerate(CLASSES):
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for i in range(per_class):
        mode, size, fmt = KINDS[(i + c) % len(KINDS)]
        pixels = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        pixels[..., c] = 255  # Each class has its own dominant channel: learnable.
        image = Image.fromarray(pixels).convert(mode if mode != 'I;16' else 'L')
        if mode == 'I;16':
          image = Image.fromarray(np.asarray(image, np.uint16) * 257)
        image.save(os.path.join(folder, f'{i}.{fmt.lower()}'), fmt)
    with open(os.path.join(root, split, CLASSES[0], 'notes.txt'), 'w') as f:
      f.write('not an image')
    with open(os.path.join(root, split, CLASSES[1], 'broken.png'), 'wb') as f:
      f.write(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  return root


def folder_config(root, **overrides):
  config = shrink(load_config('image_folder'), local_data_dir=str(root), image_size=16,
                  train_split='train', val_split='', num_train_steps=-1, num_epochs=2)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_image_folder_trains_reports_and_predicts_its_own_classes(tmp_path, caplog):
  root = write_tree(str(tmp_path / 'plants'))
  workdir = tmp_path / 'run'
  with caplog.at_level(logging.WARNING):
    results = train_and_evaluate(folder_config(root), workdir)
  skipped = [r.getMessage() for r in caplog.records if 'Skipped' in r.getMessage()]
  assert len(skipped) == 2 and all('Skipped 2 file(s)' in m for m in skipped), skipped
  assert 'notes.txt (not in an image format Pillow reads)' in skipped[0]
  assert 'broken.png (' in skipped[0]
  assert results['epochs'] == 2 and len(read_jsonl(workdir / 'metrics.jsonl')) == 2
  assert results['params_total'] > 0
  header = (workdir / 'confusion_matrix.csv').read_text().splitlines()[0]
  assert header.split(',')[1:] == list(CLASSES)
  report = (workdir / 'classification_report.txt').read_text()
  assert all(name in report for name in CLASSES)
  assert json.loads((workdir / 'dataset.json').read_text()) == {
      'image_shape': [16, 16, 3], 'class_names': list(CLASSES)}
  # Predict needs only the workdir: the classes were recorded, the tree may be gone.
  image = os.path.join(root, 'test', 'orchid', '0.png')
  os.rename(root, str(tmp_path / 'moved'))
  top = predict.predict(str(workdir), [image.replace(root, str(tmp_path / 'moved'))],
                        defaults())[0]['top']
  assert {p['class'] for p in top} == set(CLASSES)


def test_every_mode_and_size_becomes_the_configured_shape(tmp_path):
  root = write_tree(str(tmp_path / 'plants'), per_class=len(KINDS))
  options = datasets.DataOptions('image_folder', 'train', '', 'test', local_data_dir=root,
                                 image_size=12, channels=1)
  data = datasets.load_dataset(options)
  assert data.class_names == CLASSES and data.train.images.shape == (3 * len(KINDS), 12, 12, 1)
  assert data.train.images.dtype == np.uint8 and data.train.images.max() > 0


@pytest.mark.parametrize('in_memory', ['true', 'false'])
def test_a_link_to_nothing_is_skipped_and_named_not_dropped_unsaid(in_memory, tmp_path, caplog):
  """A link whose target is gone was left out without a word, or, read, was a traceback."""
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  os.symlink(tmp_path / 'moved.png', os.path.join(root, 'train', 'orchid', 'gone.png'))
  options = datasets.DataOptions('image_folder', 'train', '', 'test', local_data_dir=root,
                                 image_size=8, channels=3, data_in_memory=in_memory)
  with caplog.at_level(logging.WARNING):
    data = datasets.load_dataset(options)
  assert len(data.train) == 6 and data.streamed == (in_memory == 'false')
  (skipped,) = [r.getMessage() for r in caplog.records if 'of split train' in r.getMessage()]
  assert skipped.startswith('Skipped 3 file(s) of split train in ') and (
      'train/orchid/gone.png (FileNotFoundError: ' in skipped), skipped


@pytest.mark.parametrize('channels', [1, 3])
def test_a_cielab_tiff_is_read_as_its_colours_not_skipped(channels):
  """Pillow converts LAB to RGB but not to grey: a grey dataset skipped such a file as
  unreadable."""
  import io
  from cnnjax.data import images
  red = Image.new('LAB', (6, 4), (136, 208, 195))  # CIELAB L=53, a=80, b=67: sRGB red.
  payload = io.BytesIO()
  red.save(payload, 'TIFF')
  array = images.decode(payload.getvalue(), (4, 6, channels))
  expected = Image.new('RGB', (6, 4), (255, 0, 0)).convert({1: 'L', 3: 'RGB'}[channels])
  assert array.shape == (4, 6, channels)
  assert np.abs(array.astype(int) - np.asarray(expected).reshape(4, 6, channels)).max() <= 12


@pytest.mark.parametrize('refused', ['train', 'train/fern', 'test/orchid/old'])
def test_a_folder_the_user_may_not_read_is_named_not_passed_over(refused, tmp_path,
                                                                 monkeypatch):
  """A class folder without read permission was 'empty', its class left out with a warning;
  a split folder was a PermissionError traceback. (Tests may run as root, whom no permission
  stops: the system's refusal is played.)"""
  import errno
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  os.makedirs(os.path.join(root, 'test', 'orchid', 'old'))
  refused_path = os.path.join(root, refused)
  listdir, scandir = os.listdir, os.scandir

  def refusing(real):
    def list_folder(path='.'):
      if os.fspath(path) == refused_path:
        raise PermissionError(errno.EACCES, 'Permission denied', refused_path)
      return real(path)
    return list_folder
  monkeypatch.setattr(os, 'listdir', refusing(listdir))
  monkeypatch.setattr(os, 'scandir', refusing(scandir))
  options = datasets.DataOptions('image_folder', 'train', '', 'test', local_data_dir=root,
                                 image_size=8, channels=3)
  with pytest.raises(image_tree.LocalDataError, match=(
      f'^{refused_path} cannot be read by this user \\(permission denied\\): make it readable '
      f'\\(chmod -R a\\+rX {refused_path}\\)\\.$')):
    datasets.load_dataset(options)


def test_a_200_megapixel_phone_photo_is_read_without_a_warning(tmp_path, recwarn):
  from cnnjax.data import images
  path = tmp_path / 'IMG_0001.png'
  # A 200 MP sensor's frame: over the 179 MP Pillow refuses by default, and warns over 89.5 MP.
  Image.new('1', (16320, 12240), 1).save(path)
  array = images.load_image(str(path), (28, 28, 1))
  assert array.shape == (28, 28, 1) and (array == 255).all()
  assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillows_warnings_about_a_file_stay_off_the_console(tmp_path):
  # A TIFF cut short in its directory: Pillow warned 'UserWarning: Truncated File Read' in
  # Python's format among the run's lines, then the file was skipped with its reason anyway.
  # A TIFF of 2048 samples per pixel: Pillow logged 'More samples per pixel than can be
  # decoded' as an error before refusing it.
  whole = io.BytesIO()
  Image.new('RGB', (20, 20)).save(whole, 'TIFF')
  (tmp_path / 'cut.tif').write_bytes(whole.getvalue()[:50])
  samples = b'\x15\x01\x03\x00\x01\x00\x00\x00'  # Tag 277, one SHORT: 3, now 2048.
  assert whole.getvalue().count(samples + b'\x03\x00') == 1
  (tmp_path / 'samples.tif').write_bytes(whole.getvalue().replace(samples + b'\x03\x00',
                                                                  samples + b'\x00\x08'))
  script = ('import sys; from cnnjax.data import images\n'
            'for path in sys.argv[1:]:\n'
            '  print(images.header_problem(path))\n'
            '  try:\n    images.decode(open(path, "rb").read(), (8, 8, 3))\n'
            '  except images.ImageInputError as e:\n    print(e.reason)\n')
  read = subprocess.run([sys.executable, '-c', script, str(tmp_path / 'cut.tif'),
                         str(tmp_path / 'samples.tif')],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert (read.returncode, read.stderr) == (0, '')
  assert read.stdout == 'not in an image format Pillow reads\n' * 4


def test_a_file_pillow_raises_an_unexpected_error_on_is_an_unreadable_image(tmp_path):
  # A DDS file of a pixel format Pillow does not know raised NotImplementedError, not one of
  # the errors Pillow means for a bad file: a traceback, in memory or streamed.
  dds = io.BytesIO()
  Image.new('RGBA', (4, 4)).save(dds, 'DDS')
  flags = dds.getbuffer()[80:84]  # The pixel format's flags: 0x41, RGB and alpha.
  assert bytes(flags) == b'\x41\0\0\0'
  flags[:] = b'\x82\0\0\0'
  reason = 'NotImplementedError: Unknown pixel format flags 130'
  with pytest.raises(images_lib.ImageInputError, match=f'^is not an image that can be read '
                     f'\\({reason}\\)$'):
    images_lib.decode(dds.getvalue(), (4, 4, 3))
  (tmp_path / 'odd.dds').write_bytes(dds.getvalue())
  assert images_lib.header_problem(str(tmp_path / 'odd.dds')) == reason


def test_a_float_images_nan_is_black_and_its_infinities_black_or_white():
  # A float TIFF may hold them: cast as they were, numpy warned 'invalid value encountered in
  # cast' on the console, and the pixels came out as whatever the cast made of them.
  # A signalling NaN (a flipped bit makes one) warned already as the image became an array.
  pixels = np.array([[np.nan, np.inf, 0.0], [-np.inf, 0.5, 0.0]], np.float32)
  pixels.view(np.uint32)[0, 2] = 0x7FA00000  # A signalling NaN.
  tiff = io.BytesIO()
  Image.fromarray(pixels, 'F').save(tiff, 'TIFF')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    decoded = images_lib.decode(tiff.getvalue(), (2, 3, 1), resize=False)
  np.testing.assert_array_equal(decoded[..., 0], [[0, 255, 0], [0, 128, 0]])


def test_a_class_folder_without_a_readable_image_is_an_error(tmp_path):
  root = write_tree(str(tmp_path / 'plants'), per_class=1)
  os.remove(os.path.join(root, 'train', 'fern', '0.jpeg'))
  options = datasets.DataOptions('image_folder', local_data_dir=root, image_size=8, channels=3)
  with pytest.raises(image_tree.LocalDataError, match=r'^No readable image of class\(es\) fern '
                     r'in split train of .*plants: each was skipped \(above\)'):
    datasets.load_dataset(options)


def test_a_split_with_no_readable_image_or_no_class_is_named_as_a_split(tmp_path, caplog):
  # In Keras' layout the split is no folder: these said 'under train/' and 'Split train/'.
  tree = tmp_path / 'tree'
  for cls in ('cat', 'dog'):
    os.makedirs(tree / cls)
    (tree / cls / '0.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  root = str(tree)
  files = image_tree.split_files(image_tree.list_tree(root), root, 'train')
  with pytest.raises(image_tree.LocalDataError,
                     match=f'^No readable image in split train of {re.escape(root)}\\.$'):
    image_tree.read_split(files, root, 'train', ('cat', 'dog'), (8, 8, 3), True)
  Image.new('RGB', (8, 8)).save(tree / 'cat' / '0.png')
  cats = [f for f in files if f.cls == 'cat']
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    image_tree.read_split(cats, root, 'train', ('cat', 'dog'), (8, 8, 3), True)
  assert [r.getMessage().split(':')[0] for r in caplog.records] == [
      f'Split train of {root} has no images of class(es) dog']


def test_a_tree_of_one_class_is_an_error(tmp_path):
  for split in ('train', 'test'):
    os.makedirs(tmp_path / 'tree' / split / 'only')
    Image.new('RGB', (4, 4)).save(tmp_path / 'tree' / split / 'only' / '0.png')
  with pytest.raises(image_tree.LocalDataError, match=r'has one class folder \(only\); a '
                     'classifier needs two or more'):
    root = str(tmp_path / 'tree')
    image_tree.class_names(image_tree.list_tree(root), root)


def test_an_image_folder_is_listed_once_per_load(tmp_path, monkeypatch, caplog):
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  Image.new('RGB', (4, 4)).save(os.path.join(root, 'train', 'loose.png'))
  listings = []
  list_directory = image_tree._directory_files
  monkeypatch.setattr(image_tree, '_directory_files',
                      lambda path: listings.append(path) or list_directory(path))
  options = datasets.DataOptions('image_folder', local_data_dir=root, image_size=8, channels=3,
                                 train_split='train', val_split='', test_split='test')
  dataset = datasets.load_dataset(options, datasets.describe(options))
  assert listings == [root]
  assert (len(dataset.train), len(dataset.test)) == (6, 6)
  assert [r.getMessage().split(',')[0] for r in caplog.records
          if 'outside any class folder' in r.getMessage()] == [
              f'Left out 1 file(s) lying directly in train/ of {root}']


def test_images_lying_in_a_split_take_their_classes_from_its_label_file(tmp_path, caplog):
  """Kaggle's layout: train/1.png, ... with trainLabels.csv beside train/ (id,label, the ids
  without their extension), and a test/ of unlabelled images."""
  root = tmp_path / 'kaggle'
  (root / 'train').mkdir(parents=True)
  (root / 'test').mkdir()
  rng = np.random.default_rng(0)
  classes, rows, expected = ['frog', 'truck', 'bird'], [], {}
  for i in range(1, 13):
    pixels = rng.integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(root / 'train' / f'{i}.png')
    rows.append(f'{i},{classes[i % 3]}')
    expected[pixels.tobytes()] = classes[i % 3]
  Image.new('RGB', (8, 8)).save(root / 'train' / '13.png')  # Not listed: left out.
  Image.new('RGB', (8, 8)).save(root / 'test' / '1.png')
  rows.append('14,frog')  # Listed, but no such file: said.
  (root / 'trainLabels.csv').write_text('id,label\n' + '\n'.join(rows) + '\n')
  options = datasets.DataOptions('image_folder', local_data_dir=str(root), image_size=8,
                                 channels=3, train_split='train[:9]', val_split='',
                                 test_split='train[9:]')
  with caplog.at_level(logging.WARNING):
    dataset = datasets.load_dataset(options, datasets.describe(options))
  assert dataset.class_names == ('bird', 'frog', 'truck')
  for split in (dataset.train, dataset.test):
    assert [dataset.class_names[label] for label in split.labels] == [
        expected[image.tobytes()] for image in split.images]
  assert (len(dataset.train), len(dataset.test)) == (9, 3)
  warnings = [r.getMessage() for r in caplog.records]
  assert (f'Left out 1 file(s) of train/ in {root} that trainLabels.csv does not list with a '
          'class: 13.png.') in warnings
  assert f'trainLabels.csv lists 1 image(s) that train/ in {root} does not hold: 14.' in warnings
  assert any(w.endswith(f'Put each in test/<class>/ to use it, or list their classes in '
                        f'{root}/testLabels.csv.') for w in warnings)


@pytest.mark.parametrize('text, classes', [
    ('\ufeffImage,Class\na.jpg,cat\nb.jpg,dog\n', {'a.jpg': 'cat', 'b.jpg': 'dog'}),
    ('label,file\ncat,a.jpg\n\n', {'a.jpg': 'cat'}),  # The label column named, first.
    ('a.jpg,cat\nb.jpg,dog\n', {'a.jpg': 'cat', 'b.jpg': 'dog'}),  # No header row.
    ('file,label\ntrain/a.jpg,cat\nimages\\b.jpg,dog\n', {'a.jpg': 'cat', 'b.jpg': 'dog'}),
    # Excel where ',' is the decimal mark: semicolons; a duplicate row of the same class.
    ('id;label\r\na.jpg;cat\r\nb.jpg;dog\r\na.jpg;cat\r\n', {'a.jpg': 'cat', 'b.jpg': 'dog'}),
    ('id\tlabel\na.jpg\tcat\n', {'a.jpg': 'cat'}),
])
def test_label_files_as_they_come(text, classes, tmp_path):
  path = tmp_path / 'trainLabels.csv'
  path.write_text(text, encoding='utf-8')
  assert image_tree.read_label_file(str(path)) == classes


def test_a_label_file_of_one_column_is_named(tmp_path):
  path = tmp_path / 'train.csv'
  path.write_text('a.jpg\nb.jpg\n')
  with pytest.raises(image_tree.LocalDataError, match='train.csv is not a CSV file of image '
                     'names and classes: it needs two columns'):
    image_tree.read_label_file(str(path))


def test_an_image_listed_under_two_classes_is_named(tmp_path):
  """The last row won, without a word: a label file that contradicts itself trained on
  whichever class came last."""
  path = tmp_path / 'trainLabels.csv'
  path.write_text('id,label\n1,cat\n2,dog\n1,dog\n')
  with pytest.raises(image_tree.LocalDataError, match='trainLabels.csv lists 1 twice, as cat and '
                     'as dog: keep the row of its true class.'):
    image_tree.read_label_file(str(path))


def test_a_missing_image_folder_is_named(tmp_path):
  missing = str(tmp_path / 'no_such_tree')
  options = datasets.DataOptions('image_folder', local_data_dir=missing, image_size=8,
                                 channels=3)
  with pytest.raises(image_tree.LocalDataError, match=f'{missing!r} does not exist'):
    datasets.describe(options)


def test_image_folder_needs_a_size(tmp_path):
  root = write_tree(str(tmp_path / 'plants'), per_class=1)
  with pytest.raises(datasets.ConfigError, match='--config.image_size'):
    datasets.describe(datasets.DataOptions('image_folder', local_data_dir=root))


def test_a_tfds_dataset_of_varying_sizes_and_its_own_classes_trains(tmp_path, mock_tfds):
  # tf_flowers: 5 classes, images of varying size, one 'train' split.
  config = shrink(load_config('cnn_deep'), dataset='tf_flowers', image_size=16, channels=3,
                  train_split='train[:70%]', test_split='train[70%:]', num_train_steps=2)
  results = train_and_evaluate(config, tmp_path)
  assert results['steps'] == 2
  spec = json.loads((tmp_path / 'dataset.json').read_text())
  assert spec == {'image_shape': [16, 16, 3], 'class_names': [
      'dandelion', 'daisy', 'tulips', 'sunflowers', 'roses']}
  assert (tmp_path / 'confusion_matrix.csv').read_text().splitlines()[0].endswith('roses')


def test_a_tfds_dataset_streams_from_its_data_source(tmp_path, mock_tfds, capsys):
  # TFDS' mocks make up other examples for data_source than for load: no comparison here.
  config = shrink(load_config('cnn_simple'), dataset='tf_flowers', image_size=16, channels=1,
                  train_split='train[:70%]', test_split='train[70%:]', data_in_memory='false',
                  num_train_steps=2)
  results = train_and_evaluate(config, tmp_path)
  out = capsys.readouterr().out
  assert 'tf_flowers (5 classes, 16x16x1)' in out and 'streamed by' in out
  assert results['steps'] == 2
  test = datasets.load_split(datasets.DataOptions.from_config(config), config.test_split)
  assert test.streamed and len(test)  # (The mocked data_source ignores slices.)
  images, labels = test.read(np.arange(len(test)))
  assert images.shape == (len(test), 16, 16, 1) and set(labels) <= set(range(5))


def test_auto_streams_what_would_not_fit_in_memory(tmp_path, monkeypatch):
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  options = datasets.DataOptions('image_folder', local_data_dir=root, image_size=64,
                                 channels=3)
  decoded = 16 * 64 * 64 * 3  # 8 files per split (2 of them no images: counted, not read).
  monkeypatch.setattr(datasets, '_physical_memory', lambda: 2 * decoded)
  assert not datasets.load_dataset(options).streamed  # Half the memory: fits.
  monkeypatch.setattr(datasets, '_physical_memory', lambda: 2 * decoded - 1)
  assert datasets.load_dataset(options).streamed


@pytest.mark.parametrize('name', ['cifar1O', 'cifar-100'])  # 'cifar-100': TFDS cannot parse.
def test_an_unknown_dataset_name_is_one_clear_error(tmp_path, name):
  config = shrink(load_config('cnn_simple'), dataset=name)
  with pytest.raises(datasets.ConfigError, match=f"Unknown dataset '{name}'"):
    train_and_evaluate(config, tmp_path / 'run')
  assert not os.path.exists(tmp_path / 'run')


def test_streamed_and_in_memory_runs_are_bitwise_equal(tmp_path):
  root = write_tree(str(tmp_path / 'plants'))
  held, streamed = str(tmp_path / 'held'), str(tmp_path / 'streamed')
  train_and_evaluate(folder_config(root, data_in_memory='true'), held)
  results = train_and_evaluate(folder_config(root, data_in_memory='false', data_workers=3),
                               streamed)
  assert results['steps'] == 2 * (3 * 8 // 8)
  assert_same_run(held, streamed, folder_config(root))


def test_a_stopped_streamed_run_resumes_bitwise_equal(tmp_path):
  root = write_tree(str(tmp_path / 'plants'))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  config = lambda steps: folder_config(root, data_in_memory='false', num_train_steps=steps,
                                       num_epochs=100)
  train_and_evaluate(config(5), straight)
  train_and_evaluate(config(4), resumed)  # 3 steps per epoch: stopped mid-epoch 2.
  train_and_evaluate(config(5), resumed)
  assert_same_run(straight, resumed, config(5))


def cut_short(path: str) -> None:
  """A valid header, then nothing: found only when the image is decoded."""
  with open(path, 'rb') as f:
    head = f.read(200)
  with open(path, 'wb') as f:
    f.write(head)


def streaming_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith('While streaming')]


def test_a_file_that_fails_to_decode_while_streaming_is_stood_in_for(tmp_path, caplog):
  """A streamed run stopped on each image cut short after its header: a restart per broken
  file of a large scraped tree. The next readable example stands in for it, named once,
  and the test metrics leave it out; the stand-in depends on the index alone, so a run
  stopped mid-epoch resumes bitwise equal."""
  root = write_tree(str(tmp_path / 'plants'))
  cut_short(os.path.join(root, 'train', 'cactus', '0.png'))
  cut_short(os.path.join(root, 'test', 'fern', '1.png'))
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  config = lambda steps: folder_config(root, data_in_memory='false', num_train_steps=steps,
                                       num_epochs=100, data_workers=3)
  with caplog.at_level(logging.WARNING):
    results = train_and_evaluate(config(5), straight)  # Into epoch 2: 3 steps per epoch.
  assert [m.split(' in ')[0] for m in streaming_warnings(caplog)] == [
      'While streaming: train/cactus/0.png', 'While streaming: test/fern/1.png']
  report = json.loads((tmp_path / 'straight' / 'classification_report.json').read_text())
  assert report['macro avg']['support'] == 3 * 8 - 1
  assert round(results['test_accuracy'] * 23, 6) == int(round(results['test_accuracy'] * 23))
  train_and_evaluate(config(4), resumed)  # Stopped mid-epoch 2.
  train_and_evaluate(config(5), resumed)
  assert_same_run(straight, resumed, config(5))


@pytest.mark.parametrize('layout, broken', [
    ('split folders', 'train/cat/1.png'), ('spelled otherwise', 'Training/cat/1.png'),
    ('keras', 'cat/1.png'), ('keras', 'cat/2023/1.png'), ('label file', 'train/1.png'),
    ('archive', 'train/cat/1.png')])
def test_a_broken_image_is_named_where_it_lies(tmp_path, caplog, layout, broken):
  # Messages named a file by the split and class it was read as: a streamed run of
  # --config.train_split='train[:90%]' stopped on 'train[:90%]/cat/1.png', and in Keras'
  # layout (cat/1.png) or with a label file (train/1.png) both ways read 'train/cat/1.png'.
  tree = tmp_path / 'tree'
  for cls in ('cat', 'dog'):
    for i in range(3):
      name = broken if (cls, i) == ('cat', 1) else {
          'keras': f'{cls}/{i}.png', 'label file': f'train/{cls}{i}.png',
          'spelled otherwise': f'Training/{cls}/{i}.png'}.get(layout, f'train/{cls}/{i}.png')
      os.makedirs((tree / name).parent, exist_ok=True)
      Image.new('RGB', (64, 64), (i * 40, 0, 0)).save(tree / name, compress_level=0)
  if layout == 'label file':
    classes = {'cat0': 'cat', '1': 'cat', 'cat2': 'cat', 'dog0': 'dog', 'dog1': 'dog',
               'dog2': 'dog'}
    (tree / 'trainLabels.csv').write_text(
        'id,label\n' + ''.join(f'{stem},{cls}\n' for stem, cls in classes.items()))
  cut_short(str(tree / broken))
  root = str(tree)
  if layout == 'archive':
    root = str(tmp_path / 'tree.tar.gz')
    with tarfile.open(root, 'w:gz') as tar:
      tar.add(tree, arcname='tree')  # With the folder around the tree, as tar makes it.
  listing = image_tree.list_tree(root)
  files, classes = image_tree.split_files(listing, root, 'train'), ('cat', 'dog')
  assert image_tree.class_names(listing, root) == classes and len(files) == 6
  with caplog.at_level(logging.WARNING):
    _, _, kept = image_tree.read_split(files, root, 'train', classes, (8, 8, 3), True)
  assert len(kept) == 5
  # The split, which in Keras' layout or with a label file is no folder, is named as a split.
  assert [r.getMessage() for r in caplog.records if 'Skipped' in r.getMessage()] == [
      f'Skipped 1 file(s) of split train in {root} that are not readable images: {broken} '
      '(OSError: image file is truncated).']
  kept, _ = image_tree.stream_split(files, root, 'train', classes)
  decode = image_tree.decoder(kept, root, (8, 8, 3), True)
  with pytest.raises(examples.UnreadableExample,
                     match=f'^{re.escape(broken)} in {re.escape(root)} is not an image'):
    for i in range(len(kept)):
      decode(i)


def test_the_stand_in_is_the_next_readable_example_and_a_tree_gone_stops(monkeypatch, caplog):
  broken = {2, 3, 9}

  def read_example(i):
    if i in broken:
      raise examples.UnreadableExample(f'{i}.png in tree is not an image')
    return np.full((2, 2, 1), i, np.uint8), i % 3

  split = examples.StreamedSplit(read_example, 10, (2, 2, 1), 'x', 1)
  with caplog.at_level(logging.WARNING):
    for _ in range(2):  # Each file is named once, however often it is met.
      images, labels, own = split.read_flagged(np.array([9, 1, 2, 3, 4]))
  np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 1, 4, 4, 4])  # 9 wraps round to 0.
  np.testing.assert_array_equal(labels, [0, 1, 1, 1, 1])  # The stand-in's own labels.
  np.testing.assert_array_equal(own, [False, True, False, False, True])
  assert [m.split(' is ')[0] for m in streaming_warnings(caplog)] == [
      f'While streaming: {i}.png in tree' for i in (9, 2, 3)]
  monkeypatch.setattr(examples, 'STAND_INS_NAMED', 2)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    examples.StreamedSplit(read_example, 10, (2, 2, 1), 'x', 1).read_flagged(np.arange(10))
  assert [m.split(' is ')[0].split(';')[0] for m in streaming_warnings(caplog)] == [
      'While streaming: 2.png in tree', 'While streaming: 3.png in tree',
      'While streaming: more than 2 files of this split could not be decoded']
  monkeypatch.setattr(examples, 'STAND_IN_TRIES', 3)
  broken.update({5, 6, 7})
  with pytest.raises(examples.UnreadableSplitError,
                     match='^3 examples in a row could not be read while streaming, the '
                     'first: 5.png in tree is not an image. Are the files still where'):
    split.read_flagged(np.array([5]))


def test_a_broken_file_fixed_or_removed_between_runs_of_one_workdir(tmp_path, caplog):
  """What the stand-in's warning asks for works: a training image replaced by a whole one
  of another size is the same example (fingerprints had counted file sizes, and refused the
  resume as 'trained on other examples'); a test image may be removed."""
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  config = lambda steps: folder_config(root, data_in_memory='false', batch_size=2,
                                       num_train_steps=steps, num_epochs=100)
  workdir = tmp_path / 'run'
  train_image = os.path.join(root, 'train', 'cactus', '0.png')
  whole = open(train_image, 'rb').read()
  cut_short(train_image)
  with caplog.at_level(logging.WARNING):
    train_and_evaluate(config(2), workdir)  # Finished at step 2: a longer run resumes there.
  assert 'Replace it with a readable image of the same name' in streaming_warnings(caplog)[0]
  Image.open(io.BytesIO(whole)).save(train_image, 'PNG', compress_level=0)  # Another size.
  assert os.path.getsize(train_image) != len(whole)
  test_image = os.path.join(root, 'test', 'fern', '1.png')
  cut_short(test_image)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    train_and_evaluate(config(4), workdir)
  assert [m.split(' in ')[0] for m in streaming_warnings(caplog)] == [
      'While streaming: test/fern/1.png']
  assert read_jsonl(workdir / 'metrics.jsonl')[-1]['step'] == 4
  os.remove(test_image)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    results = train_and_evaluate(config(6), workdir)
  report = json.loads((workdir / 'classification_report.json').read_text())
  assert results['steps'] == 6 and report['macro avg']['support'] == 5  # 3 x 2, less one.
  assert any('The test split holds other examples than when the run' in record.getMessage()
             for record in caplog.records)
  os.remove(os.path.join(root, 'train', 'cactus', '1.jpeg'))  # Training examples: refused.
  (workdir / 'results.json').unlink()
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r'split\(s\) train differ: train holds 5 examples now, 6 when the '
                     r'run started\)'):
    train_and_evaluate(config(6), workdir)


def test_an_image_skipped_then_mended_is_named_as_one_more_example(tmp_path):
  """A run held in memory skips an unreadable image; mended, it is one more example, which
  resuming refuses. The refusal had said 'other files, or another source that orders them
  differently', which a user who only mended an image would not recognise."""
  root = write_tree(str(tmp_path / 'plants'), per_class=2)
  config = lambda steps: folder_config(root, batch_size=2, num_train_steps=steps, num_epochs=100)
  workdir = tmp_path / 'run'
  train_and_evaluate(config(2), workdir)
  Image.new('RGB', (16, 16)).save(os.path.join(root, 'train', CLASSES[1], 'broken.png'))
  (workdir / 'results.json').unlink()
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r'split\(s\) train differ: train holds 7 examples now, 6 when the '
                     'run started; an image skipped as unreadable then and readable now '
                     r'counts as one more\)\. Nothing was changed'):
    train_and_evaluate(config(4), workdir)


def test_example_counts_are_read_from_every_kind_of_fingerprint():
  assert [examples.example_count(f) for f in (
      '60000:0123456789abcdef', 'names:73:0123456789abcdef', 'resized:50000:0123456789abcdef',
      'resized:names:12:0123456789abcdef', 'tfds:cifar10/train[:80%]:40000',
      'files:0123456789abcdef', 'tfds:cifar10/train')] == [
          60000, 73, 50000, 12, 40000, None, None]


def test_each_of_two_processes_streams_only_its_rows_of_each_batch(monkeypatch):
  """2 processes with one of 2 devices each: disjoint reads that together are the batch."""
  read = {0: [], 1: []}

  def streamed_split(process):
    def read_example(i):
      read[process].append(i)
      return np.zeros((2, 2, 1), np.uint8), 0
    return examples.StreamedSplit(read_example, 40, (2, 2, 1), 'test', workers=2)

  class OneOfTwoDevices:
    def __init__(self, process):
      self.process = process

    def addressable_devices_indices_map(self, shape):
      half = shape[0] // 2
      return {'device': (slice(self.process * half, (self.process + 1) * half),)}

  for process in (0, 1):
    monkeypatch.setattr(sharding, 'batch_sharded', lambda mesh, p=process: OneOfTwoDevices(p))
    for images, _ in pipeline.train_batches(streamed_split(process), 8, 0, 0, None):
      assert images.shape == (4, 2, 2, 1)
  assert not set(read[0]) & set(read[1])
  order = pipeline.epoch_order(0, 0, 40)
  for step in range(5):
    batch = order[step * 8:(step + 1) * 8]
    assert read[0][step * 4:(step + 1) * 4] + read[1][step * 4:(step + 1) * 4] == list(batch)
