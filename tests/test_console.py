"""What a user sees and installs: a quiet console, and no TensorFlow unless TFDS needs it."""
import configparser
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnjax import cli
from cnnjax.runs import hooks
from experiments import benchmark
from tests.helpers import REPO_ROOT, run_tool

# absl's log line prefix: severity letter, month and day, time (I1124 05:08:03.759101 ...).
LIBRARY_LOG_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ')
OWN_LINE = re.compile(r'^(cnn_simple: model |Epoch \d+/\d+ - |Test loss |Most confused|  )')


def run_main(args, cwd, env_extra=None):
  return run_tool('cnnjax.main', args, cwd, env_extra)


def two_epoch_run(idx_dir, tmp_path, *extra):
  return run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py',
                   f'--config.local_data_dir={idx_dir}', '--config.batch_size=8',
                   '--config.num_epochs=2', '--config.checkpoint_every_steps=2',
                   f'--workdir={tmp_path}/run', *extra], tmp_path)


def test_default_console_prints_only_the_runs_own_lines_once(idx_dir, tmp_path):
  result = two_epoch_run(idx_dir, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
  assert not [line for line in lines if LIBRARY_LOG_LINE.match(line)]
  assert [line for line in lines if not OWN_LINE.match(line)] == []
  assert len(lines) == len(set(lines)), 'a line was printed twice'
  assert [line.split(' - ')[0] for line in lines if line.startswith('Epoch')] == [
      'Epoch 1/2', 'Epoch 2/2']
  assert lines[0].startswith('cnn_simple: model cnn_simple, 50,186 parameters')
  assert len(lines) <= 1 + 2 * 4 + 1 + 6  # Summary, <= 4 per epoch, results, confusions.


def test_own_warnings_read_like_the_errors_and_library_logs_keep_their_format(tmp_path):
  from PIL import Image
  for split, count in (('train', 8), ('test', 2)):
    for label in ('ash', 'oak'):
      os.makedirs(tmp_path / 'tree' / split / label)
      for i in range(count):
        image = Image.new('RGB', (12, 12), (40 * i, 0, 0))
        image.save(tmp_path / 'tree' / split / label / f'{i}.png')
  (tmp_path / 'tree' / 'train' / 'oak' / 'notes.txt').write_text('not a picture')
  result = run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py', '--config.dataset=image_folder',
                     f'--config.local_data_dir={tmp_path}/tree', '--config.image_size=12',
                     '--config.channels=3', '--config.batch_size=4', '--config.num_epochs=1',
                     f'--workdir={tmp_path}/run'], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  skipped = (f'Skipped 1 file(s) of split train in {tmp_path}/tree that are not readable '
             'images: '
             'train/oak/notes.txt (not in an image format Pillow reads).')
  assert [line for line in result.stderr.splitlines() if 'Skipped' in line] == [
      f'cnnjax: warning: {skipped}']
  result = run_tool('cnnjax.evaluate', [f'--workdir={tmp_path}/run', '--split=train'], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.splitlines() == [f'cnnjax.evaluate: warning: {skipped}']
  from cnnjax import cli
  library = logging.Formatter('library: %(message)s')
  plain = cli.OwnWarningsPlain('cnnjax', library)
  record = lambda path: logging.LogRecord('x', logging.WARNING, path, 1, 'full %s', ('disk',), None)
  assert plain.format(record(os.path.join(REPO_ROOT, 'cnnjax', 'runs', 'writers.py'))) == (
      'cnnjax: warning: full disk')
  assert plain.format(record(os.path.join(REPO_ROOT, 'elsewhere', 'orbax.py'))) == (
      'library: full disk')


def test_verbosity_brings_the_library_logs_back(idx_dir, tmp_path):
  result = two_epoch_run(idx_dir, tmp_path, '--verbosity=1')
  assert result.returncode == 0, result.stderr[-3000:]
  logged = [line for line in result.stderr.splitlines() if LIBRARY_LOG_LINE.match(line)]
  assert any('checkpoint' in line for line in logged)  # orbax's own INFO lines.


class _Running:
  def compute(self):
    return {'loss': 0.5, 'accuracy': 0.75}


class _Log:
  is_writer, num_epochs = True, 4

  def __init__(self):
    self.lines = []

  def progress_bar(self, description, total, unit):
    return None  # Not a terminal.

  def progress_line(self, description, done, total, unit, seconds, metrics=None):
    self.lines.append((description, done, total, unit, metrics['loss']))


def test_away_from_a_terminal_a_long_epoch_gets_three_progress_lines(monkeypatch):
  log, loop = _Log(), type('Loop', (), {'running': _Running(), 'call_steps': 1})()
  hook = hooks.ProgressHook(log)
  monkeypatch.setattr(hooks, 'PROGRESS_LINE_SECONDS', 0.0)  # Every epoch counts as long.
  hook.epoch_start(loop, 1, 8)
  for _ in range(8):
    hook.after_step(loop, None, None)
  assert log.lines == [('Epoch 2/4', done, 8, 'step', 0.5) for done in (2, 4, 6)]
  monkeypatch.setattr(hooks, 'PROGRESS_LINE_SECONDS', 3600.0)  # A short epoch says nothing.
  hook.epoch_start(loop, 2, 8)
  for _ in range(8):
    hook.after_step(loop, None, None)
  assert len(log.lines) == 3
  monkeypatch.setattr(hooks, 'PROGRESS_LINE_SECONDS', 0.0)  # Calls of 3 steps (and 2): a
  hook.epoch_start(loop, 3, 8)                               # line where a call passes a mark.
  for loop.call_steps in (3, 3, 2):
    hook.after_step(loop, None, None)
  assert log.lines[3:] == [('Epoch 4/4', 3, 8, 'step', 0.5), ('Epoch 4/4', 6, 8, 'step', 0.5)]


def test_tensorflow_is_not_an_install_requirement():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO_ROOT, 'setup.cfg'))
  required = [r.strip() for r in parser['options']['install_requires'].splitlines() if r.strip()]
  assert not [r for r in required if re.match(r'tensorflow(?!-datasets)', r)], required
  assert any(r.startswith('tensorflow-datasets') for r in required)
  extras = parser['options.extras_require']
  assert 'tensorflow' in extras['tfds'] and 'tensorflow' in extras['test']


# What an environment without TensorFlow looks like to Python: `import tensorflow`
# raises ModuleNotFoundError and importlib.util.find_spec('tensorflow') is None.
BLOCK_TENSORFLOW = "import sys\nsys.modules['tensorflow'] = None\n"


def test_local_files_run_without_tensorflow(tmp_path, idx_dir):
  (tmp_path / 'sitecustomize.py').write_text(BLOCK_TENSORFLOW)
  env = {'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO_ROOT}'}
  result = run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py',
                     f'--config.local_data_dir={idx_dir}', '--config.num_train_steps=2',
                     '--config.batch_size=8', f'--workdir={tmp_path}/run'], tmp_path, env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['steps'] == 2
  probe = subprocess.run([sys.executable, '-c', 'import tensorflow'], env={**os.environ, **env},
                         capture_output=True, text=True)
  assert 'ModuleNotFoundError' in probe.stderr  # The block really was in force.


def test_a_tilde_in_path_flags_is_the_home_directory(tmp_path, idx_dir, monkeypatch):
  """`--workdir=~/run`: the shell leaves '~' after '=' as it is (and in a quoted or
  programmatic argument anywhere); the tools expand it, in every path they take."""
  home = tmp_path / 'home'
  os.makedirs(home)
  os.symlink(idx_dir, home / 'data')
  shutil.copy(f'{REPO_ROOT}/configs/cnn_simple.py', home)
  Image.new('L', (28, 28)).save(home / 'shirt.png')
  result = run_main(['--config=~/cnn_simple.py',
                     '--config.local_data_dir=~/data', '--config.num_train_steps=2',
                     '--config.batch_size=8', '--workdir=~/run'], tmp_path, {'HOME': str(home)})
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((home / 'run' / 'config.json').read_text())
  assert saved['local_data_dir'] == f'{home}/data'
  evaluated = run_tool('cnnjax.evaluate', ['--workdir=~/run', '--local_data_dir=~/data'],
                       tmp_path, {'HOME': str(home)})
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert (home / 'run' / 'evaluation.json').exists()
  predicted = run_tool('cnnjax.predict', ['--workdir=~/run', '~/shirt.png'], tmp_path,
                       {'HOME': str(home)})
  assert predicted.returncode == 0 and predicted.stdout.startswith(f'{home}/shirt.png\n'), (
      predicted.stdout + predicted.stderr[-3000:])
  monkeypatch.setenv('HOME', str(home))
  assert benchmark.load_config('~/cnn_simple.py').local_data_dir == ''
  assert cli.config_file_first(['main', '--config.x=1', '--config', '~/c.py']) == [
      'main', f'--config={home}/c.py', '--config.x=1']


@pytest.mark.parametrize('tool, args', [
    ('cnnjax.main', ['--help']),
    ('cnnjax.main', [f'--config={REPO_ROOT}/configs/cnn_deep.py', '-h']),
    ('cnnjax.diagnose', ['--helpfull']), ('cnnjax.evaluate', ['-h']),
    ('cnnjax.predict', ['--help'])])
def test_help_is_printed_to_stdout_with_exit_status_0(tool, args, tmp_path):
  """absl's help exits 1, as if it had failed, and has no `-h`; argparse's tools have both."""
  result = run_tool(tool, args, tmp_path)
  assert (result.returncode, result.stderr) == (0, ''), result.stderr[-2000:]
  assert '--workdir' in result.stdout or '--config' in result.stdout, result.stdout


def test_a_config_file_that_exits_keeps_its_exit_status(tmp_path):
  """Only help's status 1 becomes 0: a config file's own sys.exit(1) is not help."""
  (tmp_path / 'stops.py').write_text('import sys\nsys.exit(1)\n')
  assert run_tool('cnnjax.main', [f'--config={tmp_path}/stops.py'], tmp_path).returncode == 1


def test_tfds_without_tensorflow_names_the_extra_in_one_line(tmp_path):
  (tmp_path / 'sitecustomize.py').write_text(BLOCK_TENSORFLOW)
  result = run_main([f'--config={REPO_ROOT}/configs/cnn_simple.py', f'--workdir={tmp_path}/run'],
                    tmp_path, {'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO_ROOT}'})
  assert result.returncode == 2
  assert result.stderr.count('cnnjax: error:') == 1 and 'Traceback' not in result.stderr
  assert 'pip install -e ".[tfds]"' in result.stderr and '--config.local_data_dir' in result.stderr


def tiny_tfds_info(builder):
  """The `DatasetInfo` of the tests' own TFDS datasets: 8x8 grey images of classes a and b."""
  import tensorflow_datasets as tfds
  return tfds.core.DatasetInfo(builder=builder, supervised_keys=('image', 'label'),
                               features=tfds.features.FeaturesDict({
                                   'image': tfds.features.Image(shape=(8, 8, 1)),
                                   'label': tfds.features.ClassLabel(names=['a', 'b'])}))


def test_a_tfds_dataset_is_prepared_and_loaded_for_real(tmp_path):
  """No mock: TFDS generates a dataset on first use as it does after a download (held in
  memory, and as ArrayRecord files to stream), which needs what its own requirements left out
  on Python 3.9+ (importlib_resources, for a builder that lives in a package, as every TFDS
  dataset does)."""
  import tensorflow_datasets as tfds
  from tests.helpers import load_dataset
  rng = np.random.default_rng(0)
  splits = {'train': rng.integers(0, 256, (12, 8, 8, 1), np.uint8),
            'test': rng.integers(0, 256, (4, 8, 8, 1), np.uint8)}

  class CnnjaxTinyImages(tfds.core.GeneratorBasedBuilder):  # Registered as cnnjax_tiny_images.
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tiny_tfds_info(self)

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download.
      return {name: self._generate_examples(images) for name, images in splits.items()}

    def _generate_examples(self, images):
      for i, image in enumerate(images):
        yield i, {'image': image, 'label': i % 2}

  data = load_dataset('cnnjax_tiny_images', 'train', '', 'test', tfds_data_dir=str(tmp_path))
  assert (tmp_path / 'cnnjax_tiny_images' / '1.0.0' / 'dataset_info.json').exists()
  order = np.argsort([image.tobytes() for image in data.train.images])  # TFDS shuffles.
  expected = np.argsort([image.tobytes() for image in splits['train']])
  np.testing.assert_array_equal(data.train.images[order], splits['train'][expected])
  np.testing.assert_array_equal(data.train.labels[order], expected % 2)
  assert data.class_names == ('a', 'b') and len(data.test.images) == 4
  streamed = load_dataset('cnnjax_tiny_images', 'train', '', 'test', data_in_memory='false',
                          tfds_data_dir=str(tmp_path / 'array_record')).train
  assert streamed.streamed and len(streamed) == 12
  images, labels = streamed.read(np.arange(12))
  order = np.argsort([image.tobytes() for image in images])
  np.testing.assert_array_equal(images[order], splits['train'][expected])
  np.testing.assert_array_equal(labels[order], expected % 2)


def test_tensorflows_native_start_up_lines_are_hidden_and_its_other_output_kept(capfd,
                                                                               monkeypatch):
  """TensorFlow's C++ code logs 'oneDNN custom operations are on' and 'Could not find cuda
  drivers' as it is imported, whatever TF_CPP_MIN_LOG_LEVEL says."""
  from absl import logging as absl_logging
  from cnnjax.data import tfds_source
  monkeypatch.setattr(absl_logging, 'get_verbosity', lambda: absl_logging.WARNING)
  native = ('WARNING: All log messages before absl::InitializeLog() is called are written to '
            'STDERR\nI0000 00:00:1796295320.158397    5757 port.cc:153] oneDNN custom '
            'operations are on.\nW1203 10:49:52.681487 139750725720960 cuda_dnn.cc:8579] no '
            'cuDNN\nA line of its own\n')
  with tfds_source._native_import_logs_hidden():
    os.write(2, native.encode())
  assert capfd.readouterr().err == 'A line of its own\n'
  monkeypatch.setattr(absl_logging, 'get_verbosity', lambda: absl_logging.INFO)  # --verbosity=0
  with tfds_source._native_import_logs_hidden():
    os.write(2, native.encode())
  assert capfd.readouterr().err == native
  # TF_CPP_MIN_LOG_LEVEL as JAX sets it when imported first (the benchmark's worker printed
  # TensorFlow's 'failed call to cuInit' after its import), and unset, as in a script that
  # imports TFDS first ('To enable the following instructions: AVX2 ...' continues a line).
  environment = {key: value for key, value in os.environ.items()
                 if key != 'TF_CPP_MIN_LOG_LEVEL'}
  for imported_first in ('import jax; ', ''):
    probe = subprocess.run([sys.executable, '-c', imported_first + 'from cnnjax.data import '
                            'tfds_source; tfds_source.import_tfds("mnist")'], cwd=REPO_ROOT,
                           env={**environment, 'PYTHONPATH': REPO_ROOT}, capture_output=True,
                           text=True)
    assert probe.returncode == 0 and probe.stderr == '', (imported_first, probe.stderr[-2000:])


def offline_tfds_builder(class_name: str, listed: bool):
  """A TFDS dataset (registered by the snake-case of `class_name`) whose one file is on a
  host that never resolves ('.invalid'); `listed`: as TFDS' checksums list it."""
  import tensorflow_datasets as tfds
  url = 'http://cnnjax-test.invalid/images.npz'

  def split_generators(self, dl_manager):
    del self
    dl_manager.download(url)
    return {}
  attributes = {'VERSION': tfds.core.Version('1.0.0'), '_info': tiny_tfds_info,
                '_split_generators': split_generators, '_generate_examples': lambda self: ()}
  if listed:
    attributes['url_infos'] = {url: None}
  return type(class_name, (tfds.core.GeneratorBasedBuilder,), attributes)


def test_an_offline_download_fails_at_once_with_the_way_to_local_files(tmp_path):
  """TFDS retries a download whose host does not resolve 10 times over 3.5 minutes, with a
  warning for each; the run ends at the first instead."""
  from cnnjax.data import tfds_source
  from tests.helpers import load_dataset
  offline_tfds_builder('CnnjaxOfflineImages', listed=False)
  with pytest.raises(tfds_source.DatasetUnavailableError) as error:
    load_dataset('cnnjax_offline_images', 'train', '', 'test', tfds_data_dir=str(tmp_path))
  assert ("a download host did not resolve, so this machine looks offline: HTTPConnection(host="
          "'cnnjax-test.invalid'") in str(error.value)
  assert '--config.local_data_dir=DIR' in str(error.value)


def test_an_offline_download_says_nothing_before_its_error_line(tmp_path, capfd):
  """TFDS announced the download and drew its progress bars (twenty lines of them in a log)
  before the host failed to resolve; where a host of the files TFDS lists does not, it
  prepares the dataset without them."""
  from cnnjax.data import tfds_source
  from tests.helpers import load_dataset
  offline_tfds_builder('CnnjaxListedOfflineImages', listed=True)
  for in_memory in ('true', 'false'):  # Loaded whole, or streamed from ArrayRecord files.
    capfd.readouterr()
    with pytest.raises(tfds_source.DatasetUnavailableError) as error:
      load_dataset('cnnjax_listed_offline_images', 'train', '', 'test',
                   tfds_data_dir=str(tmp_path), data_in_memory=in_memory)
    assert str(error.value).startswith(
        "Could not load split 'train' of TFDS dataset 'cnnjax_listed_offline_images': "
        'ConnectionError: a download host did not resolve, so this machine looks offline: '
        "HTTPConnection(host='cnnjax-test.invalid'")
    assert capfd.readouterr() == ('', '')


def test_tensorflow_is_kept_off_the_accelerators_when_tfds_loads(monkeypatch, mock_tfds):
  import tensorflow as tf
  from cnnjax.data import datasets
  hidden = []
  monkeypatch.setattr(tf.config, 'set_visible_devices',
                      lambda devices, kind: hidden.append((list(devices), kind)))
  datasets.load_split(datasets.DataOptions('fashion_mnist'), 'test')
  assert ([], 'GPU') in hidden and ([], 'TPU') in hidden


def test_no_source_file_warns_when_compiled():
  """An invalid escape such as '\\`' in a docstring is a SyntaxWarning on Python 3.12+ (Colab):
  noise on every user's console the first time the module is compiled."""
  import warnings
  for folder in ('cnnjax', 'configs', 'experiments'):
    for directory, _, names in os.walk(os.path.join(REPO_ROOT, folder)):
      for name in (n for n in names if n.endswith('.py')):
        path = os.path.join(directory, name)
        with open(path, encoding='utf-8') as f, warnings.catch_warnings():
          warnings.simplefilter('error')
          compile(f.read(), path, 'exec')


def test_a_reader_that_goes_away_does_not_end_the_run(idx_dir, tmp_path):
  # `python -m cnnjax.main ... | head -1`: the reader exits after the first line.
  command = [sys.executable, '-m', 'cnnjax.main', f'--config={REPO_ROOT}/configs/cnn_simple.py',
             f'--config.local_data_dir={idx_dir}', '--config.batch_size=8',
             '--config.num_epochs=3', f'--workdir={tmp_path}/run']
  process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, 'PYTHONPATH': REPO_ROOT},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert process.stdout.readline().startswith('cnn_simple: model')
  process.stdout.close()
  stderr = process.communicate(timeout=600)[1]
  assert process.returncode == 0, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Error' not in stderr
  results = json.load(open(tmp_path / 'run' / 'results.json'))
  assert results['epochs'] == 3


def test_a_stream_whose_reader_is_gone_falls_silent_and_other_errors_still_raise(tmp_path):
  from cnnjax import cli
  read_end, write_end = os.pipe()
  os.close(read_end)
  stream = cli.SilentWhenGone(os.fdopen(write_end, 'w'))
  print('lost', file=stream, flush=True)  # EPIPE: /dev/null takes the descriptor's place.
  print('and more', file=stream, flush=True)
  assert os.readlink(f'/proc/self/fd/{write_end}') == os.devnull
  stream.close()

  class FullDisk:
    def write(self, text):
      raise OSError(28, 'No space left on device')
  try:
    cli.SilentWhenGone(FullDisk()).write('x')
  except OSError as error:
    assert error.errno == 28
  else:
    raise AssertionError('a full disk is not a console gone away')


def test_class_names_any_language_on_an_ascii_console_and_locale(tmp_path):
  """Where the console and the locale's file encoding lack a class name's characters
  (Windows' cp1252 with output redirected; here a plain C locale, UTF-8 mode off), the
  console gets escapes, the report files UTF-8, and the run its end. The classes come from a
  zip, whose names are UTF-8 whatever the machine's file names are."""
  import io
  import zipfile
  from PIL import Image
  with zipfile.ZipFile(tmp_path / 'tree.zip', 'w') as archive:
    for split in ('train', 'test'):
      for c, cls in enumerate(('été', '猫')):
        for i in range(4):
          png = io.BytesIO()
          Image.new('L', (6, 6), 60 * c + i).save(png, 'PNG')
          archive.writestr(f'{split}/{cls}/{i}.png', png.getvalue())
  ascii_only = {'LC_ALL': 'C', 'LANG': 'C', 'PYTHONCOERCECLOCALE': '0', 'PYTHONUTF8': '0'}
  args = [f'--config={REPO_ROOT}/configs/image_folder.py', f'--workdir={tmp_path}/run',
          f'--config.local_data_dir={tmp_path}/tree.zip', '--config.image_size=12',
          '--config.channels=1', "--config.val_split=", '--config.train_split=train',
          '--config.batch_size=4', '--config.num_epochs=1']
  result = run_main(args, tmp_path, ascii_only)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  report = open(tmp_path / 'run' / 'classification_report.txt', encoding='utf-8').read()
  assert 'été' in report and '猫' in report
  assert json.load(open(tmp_path / 'run' / 'dataset.json'))['class_names'] == ['été', '猫']
  evaluated = run_tool('cnnjax.evaluate', [f'--workdir={tmp_path}/run', '--split=train'],
                       tmp_path, ascii_only)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'on train (8 examples)' in evaluated.stdout
  assert '猫' not in evaluated.stdout + result.stdout  # Never raw on an ASCII console.
